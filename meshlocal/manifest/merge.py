"""Copilot's `environments.<env>` override merge, on manifest trees.

Rules (Copilot's transformers over mergo): maps merge key by key, lists and
scalars replace, a null override keeps the base, and a value of another
shape (bool vs map for `network.connect`, int vs map for `count`, string
vs map for `image.build`) replaces the base. Some sibling keys exclude each
other: setting one in an override drops the others from the base, so a
staging `image.location` replaces the base's `image.build`.
"""

from __future__ import annotations

from meshlocal.manifest.yaml12 import Map, Node, Scalar

_AUTOSCALING = frozenset(
    {
        "range",
        "cpu_percentage",
        "memory_percentage",
        "requests",
        "response_time",
        "queue_delay",
        "cooldown",
    }
)

# Path pattern (tuple of keys, "*" for any key) -> groups of mutually exclusive keys.
EXCLUSIVE: dict[tuple[str, ...], tuple[frozenset[str], ...]] = {
    ("image",): (frozenset({"build"}), frozenset({"location"})),
    ("sidecars", "*", "image"): (frozenset({"build"}), frozenset({"location"})),
    ("count",): (frozenset({"spot"}), _AUTOSCALING),
}


# Entries of a Go map of structs (`map[string]Secret`, `map[string]Variable`):
# mergo with WithOverride sets the override's entry whole, so `secretsmanager`,
# an SSM name and `from_cfn` replace each other (the effect Copilot's
# secretTransformer in internal/pkg/manifest/transform.go also asks for).
# Sidecars are `map[string]*SidecarConfig`, pointers, and merge field by field.
REPLACED: tuple[tuple[str, ...], ...] = (
    ("secrets", "*"),
    ("variables", "*"),
    ("sidecars", "*", "secrets", "*"),
    ("sidecars", "*", "variables", "*"),
    ("logging", "secrets", "*"),
    ("logging", "variables", "*"),
)


def _matches(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    return len(pattern) == len(path) and all(
        p in ("*", k) for p, k in zip(pattern, path, strict=True)
    )


def _exclusive_groups(path: tuple[str, ...]) -> tuple[frozenset[str], ...]:
    for pattern, groups in EXCLUSIVE.items():
        if _matches(pattern, path):
            return groups
    return ()


def is_null(node: Node | None) -> bool:
    return node is None or (isinstance(node, Scalar) and node.kind == "null")


def merge(base: Node | None, override: Node | None, path: tuple[str, ...] = ()) -> Node | None:
    """`base` with `override` applied; neither input is modified."""
    if is_null(override):
        return base
    if not isinstance(base, Map) or not isinstance(override, Map):
        return override
    if any(_matches(pattern, path) for pattern in REPLACED):
        return override
    out = Map(base.loc)
    drop: set[str] = set()
    for group in _exclusive_groups(path):
        if any(key in override.items for key in group):
            drop |= {k for k in base.items if k not in group and _in_other_group(k, group, path)}
    for key, value in base.items.items():
        if key in drop:
            continue
        out.items[key] = value
        out.keys[key] = base.keys[key]
    for key, value in override.items.items():
        merged = merge(out.items.get(key), value, (*path, key))
        if merged is None:
            continue
        out.items[key] = merged
        out.keys[key] = override.keys[key]
    return out


def _in_other_group(key: str, group: frozenset[str], path: tuple[str, ...]) -> bool:
    return any(key in other for other in _exclusive_groups(path) if other is not group)
