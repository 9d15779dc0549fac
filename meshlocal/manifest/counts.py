"""`count`: a number, `spot`, or a range with autoscaling, checked as Copilot's AdvancedCount."""

from __future__ import annotations

import re

from meshlocal.manifest.fields import Fields
from meshlocal.manifest.merge import is_null
from meshlocal.manifest.model import ServiceType
from meshlocal.manifest.yaml12 import Map, Node, Scalar

AUTOSCALING_METRICS = (
    "cpu_percentage",
    "memory_percentage",
    "requests",
    "response_time",
    "queue_delay",
    "cooldown",
)
_RANGE = re.compile(r"(\d+)-(\d+)")
# AdvancedCount.validScalingFields / getInvalidFieldsSet (internal/pkg/manifest/svc.go).
_SCALING_FIELDS: dict[ServiceType, tuple[str, ...]] = {
    ServiceType.LOAD_BALANCED_WEB_SERVICE: (
        "cpu_percentage",
        "memory_percentage",
        "requests",
        "response_time",
    ),
    ServiceType.BACKEND_SERVICE: (
        "cpu_percentage",
        "memory_percentage",
        "requests",
        "response_time",
    ),
    ServiceType.WORKER_SERVICE: ("cpu_percentage", "memory_percentage", "queue_delay"),
}
_INVALID_SCALING: dict[ServiceType, tuple[str, ...]] = {
    ServiceType.LOAD_BALANCED_WEB_SERVICE: ("queue_delay",),
    ServiceType.BACKEND_SERVICE: ("queue_delay",),
    ServiceType.WORKER_SERVICE: ("requests", "response_time"),
}


def _series(words: list[str], conjunction: str) -> str:
    """go-humanize's english.WordSeries: "a", "a and b", "a, b and c"."""
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {conjunction} {words[-1]}"


def count(f: Fields, node: Node | None, svc_type: ServiceType, not_emulated: list[str]) -> int:
    if node is None or is_null(node):
        return 1
    if svc_type is ServiceType.REQUEST_DRIVEN_WEB_SERVICE:
        # RDWS `count` names an App Runner auto scaling configuration.
        not_emulated.append("count")
        return 1
    if isinstance(node, Scalar):
        value = f.integer(node, "count")
        return 1 if value is None else value
    if not isinstance(node, Map):
        f.fail(node, "count", "an integer or a mapping")
        return 1
    m = node
    known = frozenset({"spot", "range", *AUTOSCALING_METRICS})
    f.unknown(m, known, "count")
    not_emulated += [f"count.{k}" for k in AUTOSCALING_METRICS if k in m]
    reported = len(f.diag.errors)
    low = _range(f, m.get("range"))
    spot = f.integer(m.get("spot"), "count.spot")
    if len(f.diag.errors) == reported:  # Copilot reports one count error
        _check_autoscaling(f, m, svc_type)
    if "range" in m:
        not_emulated.append("count.range")
    if spot is not None:
        return spot
    return 1 if low is None else low


def _range(f: Fields, rng: Node | None) -> int | None:
    """count.range's minimum, the count meshlocal runs; None when unset or broken."""
    if rng is None or is_null(rng):
        return None
    if isinstance(rng, Scalar):
        # IntRangeBand.validate: `^(\d+)-(\d+)$`, nothing else.
        match = _RANGE.fullmatch(rng.text) if rng.kind == "str" else None
        if match is None:
            f.diag.error(
                f"count.range: invalid range value {rng.text}: valid format is ${{min}}-${{max}}",
                rng.loc,
                'write the range as "min-max", e.g. "1-10"',
            )
            return None
        low, high = int(match.group(1)), int(match.group(2))
        if low > high:
            f.diag.error(
                f"count.range: min value {low} cannot be greater than max value {high}",
                rng.loc,
                'write the range as "min-max"',
            )
        return low
    rm = f.mapping(rng, "count.range")
    if rm is None:
        return None
    f.unknown(rm, frozenset({"min", "max", "spot_from"}), "count.range")
    low_v = f.integer(rm.get("min"), "count.range.min", -(2**63))
    high_v = f.integer(rm.get("max"), "count.range.max", -(2**63))
    spot_from = f.integer(rm.get("spot_from"), "count.range.spot_from", -(2**63))
    if "min" not in rm or "max" not in rm or is_null(rm.get("min")) or is_null(rm.get("max")):
        f.diag.error('count.range: "min/max" must be specified', rm.loc, "set both min and max")
        return None
    if low_v is None or high_v is None:
        return None  # not integers: reported
    if low_v < 0 or high_v < 0 or (spot_from or 0) < 0:
        f.diag.error(
            f"count.range: min value {low_v}, max value {high_v}, and spot_from value "
            f"{spot_from or 0} must all be positive",
            rm.loc,
            "use numbers of 0 and more",
        )
        return None
    if low_v > high_v:
        f.diag.error(
            f"count.range: min value {low_v} cannot be greater than max value {high_v}",
            rm.loc,
            "swap min and max",
        )
    return low_v


def _check_autoscaling(f: Fields, m: Map, svc_type: ServiceType) -> None:
    """AdvancedCount.validate (internal/pkg/manifest/validate.go), in its order.

    Copilot stops at the first broken rule; so does this.
    """
    valid = _SCALING_FIELDS.get(svc_type, ())
    metrics = [k for k in valid if not is_null(m.get(k)) and k in m]
    invalid = [k for k in _INVALID_SCALING.get(svc_type, ()) if k in m]
    first = next(iter(m.keys.values()), m.loc)
    if invalid:
        fields = _series([f'"{k}"' for k in invalid], "and")
        noun, verb = ("field", "is") if len(invalid) == 1 else ("fields", "are")
        f.diag.error(
            f"count: autoscaling {noun} {fields} {verb} invalid with workload type "
            f"{svc_type.value}",
            m.keys[invalid[0]],
            f"a {svc_type.value} scales on " + _series([f'"{k}"' for k in valid], "or"),
        )
        return
    has_range = "range" in m and not is_null(m.get("range"))
    if "spot" in m and (has_range or metrics):
        f.diag.error(
            f'count: must specify one, not both, of "spot" and "range/{"/".join(valid)}"',
            m.keys["spot"],
            "use `spot: N` alone, or `range: {min, max, spot_from}` with a scaling metric",
        )
        return
    quoted = _series([f'"{k}"' for k in valid], "or")
    if not has_range and metrics:
        verb = "is" if len(valid) == 1 else "are"
        f.diag.error(
            f'count: "range" must be specified if {quoted} {verb} specified',
            m.keys[metrics[0]],
            'add range: "1-10" (meshlocal runs the minimum)',
        )
        return
    for field in ("range", "cooldown"):
        if field in m and not is_null(m.get(field)) and not metrics:
            f.diag.error(
                f'count: must specify at least one of {quoted} if "{field}" is specified',
                m.keys.get(field, first),
                f"add a scaling metric, e.g. cpu_percentage: 70, next to {field}",
            )
            return
    for field in ("cpu_percentage", "memory_percentage"):
        value = m.get(field)
        if isinstance(value, Scalar) and value.kind == "int":
            assert isinstance(value.value, int)
            if not 0 <= value.value <= 100:
                f.diag.error(
                    f"count.{field}: percentage value {value.value} must be an integer "
                    "from 0 to 100",
                    value.loc,
                    "use a percentage from 0 to 100",
                )
