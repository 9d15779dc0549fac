"""Finding a Copilot workspace on disk, the way git finds its repository.

Layout (Copilot's): `copilot/.workspace` holds `application: NAME`;
services live at `copilot/<svc>/manifest.yml`; environments at
`copilot/environments/<env>/manifest.yml`. meshlocal's own settings live in
`copilot/.meshlocal.yml`, so Copilot's manifests stay untouched:

    environments:
      legacy:                  # an environment created before Copilot v1.9
        legacy_namespace: true # registers {svc}.{app}.local
      test:
        faults:                # injected from `up` on (docs/faults.md)
          - {service: api, latency: 200ms, jitter: 50ms, percent: 30, from: front-end}
          - {id: api-down, service: api, abort: 503, percent: 10, seed: 7}
    services:
      api:
        app_protocol: http     # Service Connect mode without touching the manifest
    max_replicas: 50           # refuse a count or scale above this (per service)
    region: us-west-2          # AWS_REGION in every container, ARNs and URLs (us-east-1)
    health_check_interval: 1s  # run container health checks this often locally
                               # (ECS needs 5 s or more in the manifest)

An environment named there needs no manifest (legacy environments predate
environment manifests).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from meshlocal.errors import FaultError, Location, ManifestError, WorkspaceNotFound
from meshlocal.manifest.fields import parse_duration
from meshlocal.manifest.model import (
    DEFAULT_REGION,
    MAX_REPLICAS,
    DeclaredFault,
    Environment,
    Workspace,
)
from meshlocal.manifest.yaml12 import Map, Node, Scalar, Seq, load_file
from meshlocal.paths import COPILOT_DIR, WORKSPACE_FILE, locate_root

CONFIG_FILE = ".meshlocal.yml"
MANIFEST = "manifest.yml"
# Service Connect protocols .meshlocal.yml may set; "tcp" forces ECS's default.
LOCAL_PROTOCOLS = ("tcp", "http", "http2", "grpc")
# Directories under copilot/ that hold no service.
NOT_SERVICES = frozenset({"environments", "pipelines"})
_SETTINGS = ("environments", "services", "max_replicas", "region", "health_check_interval")
_ENV_SETTINGS = ("legacy_namespace", "faults")
# An AWS region code: us-east-1, ap-southeast-2, us-gov-west-1, eu-isoe-west-1.
_REGION = re.compile(r"[a-z]{2}(-[a-z]+)+-[0-9]+")


@dataclass(frozen=True)
class EnvConfig:
    legacy_namespace: bool = False
    location: Location | None = None
    faults: tuple[DeclaredFault, ...] = ()


@dataclass(frozen=True)
class Config:
    """copilot/.meshlocal.yml"""

    path: Path | None = None
    environments: dict[str, EnvConfig] = field(default_factory=dict)
    app_protocols: dict[str, str] = field(default_factory=dict)
    max_replicas: int = MAX_REPLICAS
    max_replicas_location: Location | None = None
    region: str = DEFAULT_REGION
    health_check_interval: float | None = None


def find_root(start: Path) -> Path:
    found = locate_root(start)
    if found is not None:
        return found
    raise WorkspaceNotFound(
        f"no Copilot workspace (copilot/.workspace) in {start.resolve()} or any parent directory",
        hint="run meshlocal inside a Copilot workspace, or pass -C DIR",
    )


def read_app_name(path: Path) -> str:
    root = load_file(path)
    app = root.get("application") if isinstance(root, Map) else None
    if not isinstance(app, Scalar) or app.kind == "null" or not app.text.strip():
        raise ManifestError(
            "the workspace file names no application",
            location=app.loc if app is not None else Location(path, 1),
            hint="write `application: NAME` in copilot/.workspace",
        )
    return app.text.strip()


def _bool(node: object) -> bool | None:
    if isinstance(node, Scalar) and node.kind == "bool":
        return bool(node.value)
    return None


def read_config(path: Path) -> Config:
    if not path.is_file():
        return Config()
    root = load_file(path)
    if root is None:
        return Config(path)
    if not isinstance(root, Map):
        raise ManifestError(
            "expected a mapping", location=root.loc, hint="see docs/secrets.md for the format"
        )
    envs: dict[str, EnvConfig] = {}
    for key in root:
        if key not in _SETTINGS:
            raise ManifestError(
                f'unknown setting "{key}"',
                location=root.keys[key],
                hint="known: " + ", ".join(_SETTINGS),
            )
    protocols = _read_services(root.get("services"))
    limit = _read_max_replicas(root.get("max_replicas"))
    limit_at = root.keys["max_replicas"] if "max_replicas" in root else None
    region = _read_region(root.get("region"))
    interval = _read_interval(root.get("health_check_interval"))
    node = root.get("environments")
    if node is None or (isinstance(node, Scalar) and node.kind == "null"):
        return Config(path, {}, protocols, limit, limit_at, region, interval)
    if not isinstance(node, Map):
        raise ManifestError(
            "environments must be a mapping of names",
            location=node.loc,
            hint="write environments: {NAME: {legacy_namespace: true}}",
        )
    for name, value in node.items.items():
        legacy = False
        faults: tuple[DeclaredFault, ...] = ()
        if isinstance(value, Map):
            for key, sub in value.items.items():
                if key not in _ENV_SETTINGS:
                    raise ManifestError(
                        f'unknown environment setting "{key}"',
                        location=value.keys[key],
                        hint="known: " + ", ".join(_ENV_SETTINGS),
                    )
                if key == "faults":
                    faults = _read_faults(sub)
                    continue
                flag = _bool(sub)
                if flag is None:
                    raise ManifestError(
                        "legacy_namespace must be true or false",
                        location=sub.loc,
                        hint="write legacy_namespace: true",
                    )
                legacy = flag
        elif not (isinstance(value, Scalar) and value.kind == "null"):
            raise ManifestError(
                f'environment "{name}" settings must be a mapping',
                location=value.loc,
                hint="write NAME: {legacy_namespace: true}",
            )
        envs[name] = EnvConfig(legacy, node.keys[name], faults)
    return Config(path, envs, protocols, limit, limit_at, region, interval)


def _read_faults(node: Node) -> tuple[DeclaredFault, ...]:
    """`faults: [{service: api, latency: 200ms, ...}]`: parsed, not yet checked against
    the services (validate does, with each entry's line)."""
    from meshlocal.faultparse import parse_fault  # only a workspace that declares faults

    if isinstance(node, Scalar) and node.kind == "null":
        return ()
    hint = "write faults: [{service: api, latency: 200ms}] (docs/faults.md)"
    if not isinstance(node, Seq):
        raise ManifestError("faults must be a list of faults", location=node.loc, hint=hint)
    out: list[DeclaredFault] = []
    counts: dict[tuple[str, str], int] = {}
    seen: set[str] = set()
    for entry in node.items:
        if not isinstance(entry, Map):
            raise ManifestError(
                "a fault must be a mapping of fields", location=entry.loc, hint=hint
            )
        raw: dict[str, object] = {}
        for key, sub in entry.items.items():
            if not isinstance(sub, Scalar):
                raise ManifestError(
                    f"fault field {key} must be a single value", location=sub.loc, hint=hint
                )
            raw[key] = None if sub.kind == "null" else sub.value
        try:
            fault = parse_fault(raw, where=entry.loc)
        except FaultError as exc:
            raise ManifestError(exc.message, location=exc.location, hint=exc.hint) from None
        if not fault.id:
            n = counts[(fault.service, fault.kind.value)] = (
                counts.get((fault.service, fault.kind.value), 0) + 1
            )
            fault = replace(fault, id=f"{fault.service}-{fault.kind.value}-{n}")
        if fault.id in seen:
            raise ManifestError(
                f'two faults have the id "{fault.id}"',
                location=entry.loc,
                hint="give each fault its own id",
            )
        seen.add(fault.id)
        out.append(DeclaredFault(replace(fault, declared=True), entry.loc))
    return tuple(out)


def _read_interval(node: Node | None) -> float | None:
    if node is None or (isinstance(node, Scalar) and node.kind == "null"):
        return None
    seconds = parse_duration(node.text) if isinstance(node, Scalar) else None
    if seconds is not None and seconds >= 0.1:
        return seconds
    shown = node.text if isinstance(node, Scalar) else "a mapping or list"
    raise ManifestError(
        f'health_check_interval must be a duration of at least 100ms, not "{shown}"',
        location=node.loc,
        hint="write health_check_interval: 1s",
    )


def _read_region(node: Node | None) -> str:
    if node is None or (isinstance(node, Scalar) and node.kind == "null"):
        return DEFAULT_REGION
    if isinstance(node, Scalar) and node.kind == "str" and _REGION.fullmatch(node.text):
        return node.text
    shown = node.text if isinstance(node, Scalar) else "a mapping or list"
    raise ManifestError(
        f'region must be an AWS region code, not "{shown}"',
        location=node.loc,
        hint=f"write region: {DEFAULT_REGION} (the default), or the region you deploy to",
    )


def _read_max_replicas(node: Node | None) -> int:
    if node is None or (isinstance(node, Scalar) and node.kind == "null"):
        return MAX_REPLICAS
    value = node.value if isinstance(node, Scalar) and node.kind == "int" else None
    if isinstance(value, int) and value >= 1:
        return value
    shown = node.text if isinstance(node, Scalar) else "a mapping or list"
    raise ManifestError(
        f"max_replicas must be a whole number of at least 1, not {shown}",
        location=node.loc,
        hint=f"write max_replicas: {MAX_REPLICAS} (the default)",
    )


def _read_services(node: Node | None) -> dict[str, str]:
    """`services: {NAME: {app_protocol: tcp|http|http2|grpc}}`."""
    if node is None or (isinstance(node, Scalar) and node.kind == "null"):
        return {}
    hint = "write services: {NAME: {app_protocol: http}}"
    if not isinstance(node, Map):
        raise ManifestError("services must be a mapping of names", location=node.loc, hint=hint)
    out: dict[str, str] = {}
    for name, value in node.items.items():
        if not isinstance(value, Map):
            raise ManifestError(
                f'service "{name}" settings must be a mapping', location=value.loc, hint=hint
            )
        for key, sub in value.items.items():
            if key != "app_protocol":
                raise ManifestError(
                    f'unknown service setting "{key}"',
                    location=value.keys[key],
                    hint="known: app_protocol",
                )
            if not isinstance(sub, Scalar) or sub.text not in LOCAL_PROTOCOLS:
                shown = sub.text if isinstance(sub, Scalar) else "a mapping or list"
                raise ManifestError(
                    f'unknown app_protocol "{shown}" for service {name}',
                    location=sub.loc,
                    hint=f"use one of {', '.join(LOCAL_PROTOCOLS)} (tcp: as with no AppProtocol)",
                )
            out[name] = sub.text
    return out


def find_workspace(start: Path, *, lenient: bool = False) -> Workspace:
    """The workspace that holds `start`, with its environments and service manifests.

    `lenient`: a broken copilot/.meshlocal.yml counts as absent, for the
    commands that only find and inspect a running mesh (`down` must always
    clean up, whatever the settings file says meanwhile).
    """
    root = find_root(start)
    copilot = root / COPILOT_DIR
    app = read_app_name(copilot / WORKSPACE_FILE)
    try:
        config = read_config(copilot / CONFIG_FILE)
    except ManifestError:
        if not lenient:
            raise
        config = Config()

    environments: dict[str, Environment] = {}
    env_dir = copilot / "environments"
    if env_dir.is_dir():
        for sub in sorted(env_dir.iterdir()):
            manifest = sub / MANIFEST
            if sub.is_dir() and manifest.is_file():
                own = config.environments.get(sub.name, EnvConfig())
                environments[sub.name] = Environment(
                    sub.name, manifest, own.legacy_namespace, own.faults
                )
    for name, env_config in config.environments.items():
        if name not in environments:
            environments[name] = Environment(
                name, None, env_config.legacy_namespace, env_config.faults
            )

    services: dict[str, Path] = {}
    for sub in sorted(copilot.iterdir()):
        if sub.name.startswith(".") or sub.name in NOT_SERVICES or not sub.is_dir():
            continue
        if (sub / MANIFEST).is_file():
            services[sub.name] = sub / MANIFEST
    return Workspace(
        root,
        app,
        dict(sorted(environments.items())),
        services,
        dict(config.app_protocols),
        config.max_replicas,
        config.max_replicas_location,
        config.region,
        config.health_check_interval,
    )
