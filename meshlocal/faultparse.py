"""Reading a fault as a user wrote it (CLI flags, admin JSON, copilot/.meshlocal.yml)
and checking it against the running workspace (pure).

Durations are Go's (`200ms`, `1.5s`) or milliseconds; rates Toxiproxy's KB/s
or `64KB/s`, `1MB/s`. Every refusal says which field is wrong and how to write it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from typing import Any

from meshlocal.errors import FaultError, Location
from meshlocal.faults import DnsAnswer, Fault, Kind, dns_names, show_ms, show_num
from meshlocal.link import FaultReport
from meshlocal.manifest.fields import parse_duration
from meshlocal.naming import AppProtocol, NamingModel, normalize

_ID = re.compile(r"[a-z0-9][a-z0-9_.-]{0,39}")
_RATE = re.compile(
    r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(?:([kKmMgG]i?)?([bB])(?:/s|ps)?|([kKmMgG]i?)(?:/s|ps)?)?\s*$"
)
_BARE = re.compile(r"^\s*-?[0-9]+(?:\.[0-9]+)?\s*$")  # a number written as text: no unit
_RATE_UNITS = {
    "": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
}
_NO_BODY = (204, 304)  # (1xx are below 200): statuses an answer can't carry a body with
MAX_DELAY_MS = 600_000.0  # ten minutes: a longer delay is a partition
MIN_RATE = 1  # bytes per second

# -- reading what a user wrote (CLI, admin API, copilot/.meshlocal.yml) -------------

# The fields that say what to inject (one per fault), then the rest.
KIND_FIELDS = (
    "latency",
    "bandwidth",
    "refuse",
    "reset",
    "reset_after",
    "partition",
    "abort",
    "grpc_status",
    "dns",
)
FIELDS: tuple[str, ...] = (
    "id",
    "service",
    *KIND_FIELDS[:1],
    "jitter",
    *KIND_FIELDS[1:],
    "dns_name",
    "percent",
    "from",
    "replica",
    "seed",
)


def _fail(message: str, where: Location | None, hint: str | None = None) -> FaultError:
    return FaultError(message, location=where, hint=hint)


def parse_ms(value: Any, name: str, where: Location | None = None) -> float:
    """`200ms`, `1.5s`, `1m` (Go durations) or a number of milliseconds."""
    if isinstance(value, bool):
        raise _fail(f"{name} must be a duration, not {value!r}", where, f"write {name}: 200ms")
    if isinstance(value, int | float):
        ms = _float(value)
    elif isinstance(value, str) and _BARE.match(value):
        ms = float(value)  # a CLI's `--latency 200`: milliseconds, as the number 200
    else:
        text = str(value).strip()
        seconds = parse_duration(text.lstrip("-")) if text else None
        if seconds is None:
            raise _fail(
                f'{name} must be a duration such as 200ms or 1.5s, not "{text}"',
                where,
                f"write {name}: 200ms",
            )
        ms = seconds * 1000 * (-1 if text.startswith("-") else 1)
    if math.isnan(ms):
        raise _fail(f"{name} must be a duration, not {value!r}", where, f"write {name}: 200ms")
    if ms < 0:
        raise _fail(f"{name} can't be negative ({show_num(ms)}ms)", where, f"write {name}: 200ms")
    if ms > MAX_DELAY_MS:
        raise _fail(
            f"{name} of {show_ms(ms)} is longer than 10 minutes",
            where,
            "a call that never answers is a partition: use partition",
        )
    return ms


def parse_rate(value: Any, where: Location | None = None) -> int:
    """`64KB/s`, `1MB/s`, `500B/s`, `2MiB/s`, or a number of KB/s (Toxiproxy's unit)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        rate = _float(value) * 1000
    else:
        match = _RATE.match(str(value))
        if match is None:
            raise _fail(
                f'bandwidth must be a rate such as 64KB/s or 1MB/s, not "{value}"',
                where,
                "write bandwidth: 64KB/s (KB = 1000 bytes, KiB = 1024)",
            )
        unit = match.group(2) or match.group(4)
        if unit is None and match.group(3) is None:
            unit = "k"  # no unit: KB/s, as a number (`--bandwidth 64`)
        rate = float(match.group(1)) * _RATE_UNITS[(unit or "").lower()]
    if not math.isfinite(rate) or rate < MIN_RATE:
        raise _fail(f"bandwidth must be at least 1B/s, not {value!r}", where)
    return int(rate)


def _float(value: float) -> float:
    """A JSON or YAML number as a float; one too big for a float is infinite."""
    try:
        return float(value)
    except OverflowError:
        return math.inf if value > 0 else -math.inf


def _int(value: Any, name: str, low: int, high: int, where: Location | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _fail(f"{name} must be a whole number, not {value!r}", where)
    try:
        number = int(value)
    except ValueError:
        raise _fail(f"{name} must be a whole number, not {value!r}", where) from None
    if not low <= number <= high:
        raise _fail(f"{name} must be between {low} and {high}, not {number}", where)
    return number


def parse_percent(value: Any, where: Location | None = None) -> float:
    text = str(value).strip().removesuffix("%") if not isinstance(value, bool) else ""
    try:
        percent = float(text)
    except ValueError:
        raise _fail(f"percent must be a number from 0 to 100, not {value!r}", where) from None
    if not math.isfinite(percent) or not 0 <= percent <= 100:
        raise _fail(
            f"percent must be between 0 and 100, not {show_num(percent)}",
            where,
            "write percent: 30",
        )
    return percent


def parse_fault(raw: Mapping[str, Any], where: Location | None = None) -> Fault:
    """One fault from loose fields (strings from the CLI, JSON, YAML); not yet checked
    against the workspace (`check`)."""
    unknown = sorted(set(raw) - set(FIELDS), key=str)
    if unknown:
        raise _fail(f"unknown fault field {unknown[0]!r}", where, "known: " + ", ".join(FIELDS))
    given = {k: v for k, v in raw.items() if v is not None and v is not False}
    service = str(given.get("service") or "").strip()
    if not service:
        raise _fail("a fault needs the service it applies to", where, "write service: api")
    kinds = [k for k in KIND_FIELDS if k in given]
    if "reset" in kinds and "reset_after" in kinds:
        kinds.remove("reset")
    if "dns" in kinds and "latency" in kinds:
        kinds.remove("latency")  # `dns: delay` takes its length from latency
    if not kinds:
        raise _fail(
            f"the fault on {service} says nothing to inject",
            where,
            "give one of latency, bandwidth, refuse, reset, reset_after, partition, abort, "
            "grpc_status, dns",
        )
    if len(kinds) > 1:
        raise _fail(
            f"one fault injects one thing, not {' and '.join(kinds)}",
            where,
            "add one fault per kind (they combine)",
        )
    values: dict[str, Any] = {"service": service}
    word = kinds[0]
    if word == "latency":
        values["kind"] = Kind.LATENCY
        values["latency_ms"] = parse_ms(given["latency"], "latency", where)
    elif word == "bandwidth":
        values["kind"] = Kind.BANDWIDTH
        values["rate"] = parse_rate(given["bandwidth"], where)
    elif word in ("reset", "reset_after"):
        values["kind"] = Kind.RESET
        if word == "reset_after":
            values["after_bytes"] = _int(given["reset_after"], "reset_after", 0, 2**40, where)
    elif word == "abort":
        values["kind"] = Kind.ABORT
        values["http_status"] = _int(given["abort"], "abort", 200, 599, where)
        if values["http_status"] in _NO_BODY:
            raise _fail(
                f"abort {values['http_status']}: that answer has no body (HTTP forbids one), "
                "so it can't be the fault's answer",
                where,
                "abort with a status that has a body: 200-599 except 204 and 304, e.g. 503",
            )
    elif word == "grpc_status":
        values["kind"] = Kind.ABORT
        values["grpc_status"] = _int(given["grpc_status"], "grpc_status", 1, 16, where)
    elif word == "dns":
        values["kind"] = Kind.DNS
        try:
            values["dns"] = DnsAnswer(str(given["dns"]).lower())
        except ValueError:
            raise _fail(
                f"dns must be nxdomain, servfail or delay, not {given['dns']!r}", where
            ) from None
        if "latency" in given:  # the delay of `dns: delay`
            values["latency_ms"] = parse_ms(given["latency"], "latency", where)
    else:
        values["kind"] = Kind(word)
    if "jitter" in given:
        jitter = parse_ms(given["jitter"], "jitter", where)
        values["jitter_ms"] = jitter
    if "dns_name" in given:
        values["dns_name"] = normalize(str(given["dns_name"]))
    if "percent" in given:
        values["percent"] = parse_percent(given["percent"], where)
    if "from" in given:
        values["source"] = str(given["from"]).strip()
    if "replica" in given:
        values["replica"] = _int(given["replica"], "replica", 1, 10_000, where)
    if "seed" in given:
        values["seed"] = _int(given["seed"], "seed", 0, 2**63 - 1, where)
    if "id" in given:
        ident = str(given["id"]).strip().lower()
        if not _ID.fullmatch(ident):
            raise _fail(
                f"fault id {given['id']!r} must be lower-case letters, digits, - _ . (≤ 40)", where
            )
        values["id"] = ident
    return Fault(**values)


def check(fault: Fault, naming: NamingModel, where: Location | None = None) -> Fault:
    """The fault against the running workspace: the service exists, the endpoint has
    the mode the fault needs. Returns it with names normalised."""
    services = naming.services
    known = ", ".join(sorted(services)) or "none"
    if fault.service not in services:
        raise _fail(
            f"no service {fault.service!r} in this environment", where, f"services: {known}"
        )
    if fault.source and fault.source not in services:
        raise _fail(
            f"no client service {fault.source!r} in this environment", where, f"services: {known}"
        )
    if fault.jitter_ms and fault.kind not in (Kind.LATENCY, Kind.DNS):
        raise _fail("jitter goes with latency or a dns delay", where)
    if fault.kind is Kind.DNS:
        return _check_dns(fault, naming, where)
    if fault.dns_name:
        raise _fail("dns_name goes with a dns fault", where)
    ep = naming.endpoint_of(fault.service)
    if ep is None:
        raise _fail(
            f"service {fault.service} has no Service Connect endpoint: nothing to inject into",
            where,
            "Service Connect faults need a server (network.connect and a port); "
            "for its Service Discovery name use a dns fault",
        )
    if fault.source and not naming.is_sc_client(fault.source):
        raise _fail(
            f"{fault.source} is no Service Connect client: its calls to {fault.service} don't "
            "pass the proxy",
            where,
            f"enable network.connect on {fault.source}, or use a dns fault",
        )
    if fault.kind is Kind.PARTITION and not fault.source:
        raise _fail(
            "a partition is between two services: name the client",
            where,
            "add from: CLIENT (--from CLIENT); to cut every client off, use refuse",
        )
    if fault.kind is Kind.ABORT:
        if ep.protocol is AppProtocol.TCP:
            raise _fail(
                f"{fault.service}'s Service Connect endpoint proxies TCP (no AppProtocol): "
                "there is no request to abort",
                where,
                "use reset or refuse, or set AppProtocol http, http2 or grpc "
                f"(copilot/.meshlocal.yml services.{fault.service}.app_protocol)",
            )
        if fault.grpc_status and ep.protocol is not AppProtocol.GRPC:
            raise _fail(
                f"{fault.service}'s endpoint is {ep.protocol.value}, not grpc: abort with an "
                "HTTP status",
                where,
            )
        if fault.http_status and ep.protocol is AppProtocol.GRPC:
            raise _fail(
                f"{fault.service}'s endpoint is grpc: abort with a gRPC status (grpc_status 14)",
                where,
            )
    return fault


def _check_dns(fault: Fault, naming: NamingModel, where: Location | None) -> Fault:
    if fault.replica:
        raise _fail("a dns fault is on a name, not a replica", where, "drop replica")
    if fault.dns is not DnsAnswer.DELAY and (fault.latency_ms or fault.jitter_ms):
        raise _fail("latency goes with dns: delay", where)
    if fault.dns is DnsAnswer.DELAY and not fault.latency_ms:
        raise _fail("a dns delay needs its length", where, "add latency: 500ms")
    names = dns_names(fault.service, naming)
    if not names:
        raise _fail(
            f"service {fault.service} has no Service Discovery name (workers and services "
            "without a port don't register)",
            where,
        )
    if fault.dns_name and fault.dns_name not in names:
        raise _fail(
            f"{fault.dns_name} is not a name of {fault.service}",
            where,
            "its names: " + ", ".join(sorted(names)),
        )
    return fault


# -- a fault another process wrote (the state file, the link, POST /v1/faults/restore) --


def rebuild(raw: Any) -> Fault:
    """`Fault.to_json()` read back and checked as a user's fault would be: a field of the
    wrong type or out of range is a FaultError here, never a TypeError in a proxy task."""
    if not isinstance(raw, Mapping):
        raise _fail(f"a fault must be a JSON object, not {raw!r}", None)
    try:
        fault = Fault.from_json(raw)
    except (KeyError, ValueError, TypeError, AttributeError) as exc:
        raise _fail(f"malformed fault {raw!r}: {exc!r}", None) from None
    for spec in fields(Fault):
        value = getattr(fault, spec.name)
        if not _typed(value, str(spec.type)):
            raise _fail(f"fault field {spec.name} can't be {value!r}", None)
    if not fault.id:
        raise _fail("a fault from another process needs its id", None)
    again = replace(parse_fault(_loose(fault)), id=fault.id, declared=fault.declared)
    if again != fault:
        raise _fail(f"fault {fault.id} does not read back as it was written: {raw!r}", None)
    return fault


def _typed(value: Any, annotation: str) -> bool:
    if value is None:
        return annotation.endswith("| None")
    if isinstance(value, bool):
        return annotation == "bool"
    if isinstance(value, int):
        return annotation.startswith(("int", "float"))
    if isinstance(value, float):
        return annotation == "float"
    return isinstance(value, str | Kind | DnsAnswer) and annotation.split(" ")[0] in (
        "str",
        "Kind",
        "DnsAnswer",
    )


def _loose(fault: Fault) -> dict[str, Any]:
    """The fields `parse_fault` would have been given for `fault`."""
    raw: dict[str, Any] = {
        "service": fault.service,
        "id": fault.id,
        "percent": fault.percent,
        "from": fault.source or None,
        "replica": fault.replica or None,
        "seed": fault.seed,
        "jitter": fault.jitter_ms or None,
        "dns_name": fault.dns_name or None,
    }
    k = fault.kind
    if k is Kind.LATENCY:
        raw["latency"] = fault.latency_ms
    elif k is Kind.BANDWIDTH:
        raw["bandwidth"] = f"{fault.rate}B/s"
    elif k is Kind.RESET:
        raw["reset_after" if fault.after_bytes else "reset"] = fault.after_bytes or True
    elif k is Kind.ABORT:
        raw["grpc_status" if fault.grpc_status else "abort"] = (
            fault.grpc_status or fault.http_status
        )
    elif k is Kind.DNS:
        raw["dns"] = fault.dns.value if fault.dns else None
        raw["latency"] = fault.latency_ms or None
    else:
        raw[k.value] = True  # refuse, partition
    return raw


def rebuild_all(items: Any, log: Callable[[str], None]) -> list[Fault]:
    """The sound faults of a list another process wrote; each unsound one logged, skipped."""
    kept: list[Fault] = []
    for item in items if isinstance(items, list) else []:
        try:
            kept.append(rebuild(item))
        except FaultError as exc:
            log(f"fault skipped: {exc.message}")
    return kept


def read_report(message: Any, log: Callable[[str], None]) -> FaultReport | None:
    """A report another process wrote (the link, the state file), every fault checked
    as a user's would be: a malformed one is logged and skipped, never injected."""
    if not isinstance(message, Mapping):
        return None
    items, hidden = message.get("faults"), message.get("suppressed") or []
    if not isinstance(items, list) or not isinstance(hidden, list):
        return None
    faults = rebuild_all(items, log)
    return FaultReport(tuple(faults), tuple(str(h) for h in hidden))
