"""The Service Connect port mapping's AppProtocol, read from `taskdef_overrides`.

Copilot never sets AppProtocol, so ECS proxies TCP. A user sets it with a
task-definition override on the port mapping Copilot names `target`. This
module finds that mapping's index the way Copilot renders the task
definition, and reads the rules that set its AppProtocol (aws/copilot-cli
at 4c858e7):

- rules: `{path, value}` applied in order to the TaskDefinition's Properties
  (stack/transformers.go); a path is `.`-separated segments of the form
  `key`, `key[N]` or `key[-]` (template/override/rule.go); `Family` and
  `ContainerDefinitions[N].Name` can't be overridden (manifest/validate.go).
- `ContainerDefinitions[0]` is the main container, then the FireLens log
  router when `logging` is set, the X-Ray collector when
  `observability.tracing` is `awsxray`, then sidecars sorted by name
  (partials/cf/sidecars.yml, stack/transformers.go).
- a container's `PortMappings` are its exposed ports in ascending order
  (manifest/svc.go).
- ECS accepts `http`, `http2` and `grpc` (PortMapping.appProtocol); anything
  else fails the deployment, so it is an error here too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from meshlocal.errors import Location
from meshlocal.manifest.diagnostics import Diagnostics
from meshlocal.manifest.yaml12 import Map, Node, Scalar, Seq

PROTOCOLS = ("http", "http2", "grpc")
_SEGMENT = re.compile(r"^([a-zA-Z0-9_-]+)(\[(\d+|-)\])?$")
# Copilot's own patterns, unescaped dot and all (manifest/validate.go).
_FORBIDDEN = (re.compile(r"^Family$"), re.compile(r"^ContainerDefinitions\[\d+\].Name$"))
_RULE_HINT = "write - {path: ContainerDefinitions[0].PortMappings[0].AppProtocol, value: http}"
_MAPPING = re.compile(r"^ContainerDefinitions\[(\d+)\]\.PortMappings\[(\d+)\](\.AppProtocol)?$")


@dataclass(frozen=True)
class Target:
    """Where the Service Connect port mapping sits in the rendered task definition."""

    container: int
    mapping: int
    port: int


def target_index(
    *,
    main: str,
    target_container: str | None,
    target_port: int,
    main_ports: set[int],
    sidecar_ports: dict[str, set[int]],
    logging: bool,
    xray: bool,
) -> Target:
    """The `ContainerDefinitions[i].PortMappings[j]` Copilot names `target`."""
    if target_container in (None, main) or target_container not in sidecar_ports:
        ports = sorted(main_ports | {target_port})
        return Target(0, ports.index(target_port), target_port)
    rank = sorted(sidecar_ports).index(target_container)
    container = 1 + int(logging) + int(xray) + rank
    ports = sorted(sidecar_ports[target_container] | {target_port})
    return Target(container, ports.index(target_port), target_port)


def read_overrides(
    node: Node | None, field: str, target: Target | None, diag: Diagnostics
) -> tuple[str, Location] | None:
    """Validate the rules as Copilot does; the AppProtocol they set on `target`, if any."""
    if node is None or (isinstance(node, Scalar) and node.kind == "null"):
        return None
    if not isinstance(node, Seq):
        diag.error(f"{field}: expected a list of {{path, value}} rules", node.loc, _RULE_HINT)
        return None
    found: tuple[str, Location] | None = None
    for i, rule in enumerate(node.items):
        where = f"{field}[{i}]"
        if not isinstance(rule, Map):
            diag.error(f"{where}: expected a map with path and value", rule.loc, _RULE_HINT)
            continue
        path_node = rule.get("path")
        if not isinstance(path_node, Scalar) or path_node.kind == "null":
            diag.error(
                f"{where}.path: required", rule.loc, "write path: ContainerDefinitions[0]..."
            )
            continue
        path = path_node.text
        bad = next((s for s in path.split(".") if not _SEGMENT.match(s)), None)
        if bad is not None:
            diag.error(
                f'{where}.path: invalid override path segment "{bad}": segments must be of '
                'the form "array[0]", "array[-]" or "key"',
                path_node.loc,
                "separate keys with dots, e.g. ContainerDefinitions[0].PortMappings[0].AppProtocol",
            )
            continue
        if any(p.match(path) for p in _FORBIDDEN):
            diag.error(
                f'{where}.path: "{path}" cannot be overridden with a custom value',
                path_node.loc,
                "Copilot sets it; remove this rule",
            )
            continue
        value = _protocol_value(path, rule.get("value"), where, diag)
        if value is None:
            continue
        protocol, loc = value
        m = _MAPPING.match(path)
        assert m is not None
        at = (int(m.group(1)), int(m.group(2)))
        if target is None:
            diag.note(
                "warning",
                f"{where}: AppProtocol only matters on a Service Connect port mapping, and "
                "this service has none; ignored",
                loc,
            )
        elif at != (target.container, target.mapping):
            diag.note(
                "warning",
                f"{where}: AppProtocol is set on ContainerDefinitions[{at[0]}].PortMappings"
                f"[{at[1]}], but Copilot renders the Service Connect port ({target.port}) as "
                f"ContainerDefinitions[{target.container}].PortMappings[{target.mapping}]; "
                "ignored for Service Connect",
                loc,
            )
        else:
            found = (protocol, loc)
    return found


def only_app_protocol(node: Seq) -> bool:
    """True when every rule sets an AppProtocol (the one override meshlocal acts on)."""
    for rule in node.items:
        path = rule.get("path") if isinstance(rule, Map) else None
        if not isinstance(path, Scalar) or not path.text.endswith(".AppProtocol"):
            return False
    return True


def _protocol_value(
    path: str, node: Node | None, where: str, diag: Diagnostics
) -> tuple[str, Location] | None:
    """The AppProtocol a rule writes, if it writes one; errors for values ECS rejects."""
    m = _MAPPING.match(path)
    if m is None or node is None:
        return None
    value: Node
    if m.group(3):  # ...PortMappings[j].AppProtocol: value
        value = node
    elif isinstance(node, Map):  # ...PortMappings[j]: {ContainerPort..., AppProtocol: ...}
        inner = node.get("AppProtocol")
        if inner is None:
            return None
        value = inner
    else:
        return None
    if not isinstance(value, Scalar) or value.text not in PROTOCOLS:
        shown = value.text if isinstance(value, Scalar) else "a " + type(value).__name__.lower()
        diag.error(
            f'{where}.value: unknown AppProtocol "{shown}"',
            value.loc,
            f"ECS accepts {', '.join(PROTOCOLS)}; leave it unset for TCP",
        )
        return None
    return value.text, value.loc
