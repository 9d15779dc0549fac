"""Desired state and the pure planner that compares it with what runs.

No I/O: `plan()` takes the desired services and the observed containers and
says which replicas to start, which to replace in a rolling way and which to
remove. The async executor in `replicas.py` carries a plan out.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from meshlocal.manifest.model import ContainerHealthCheck, Service
from meshlocal.naming import NamingModel

# ECS dependency conditions for image.depends_on / sidecars.depends_on.
CONDITIONS = ("start", "healthy", "complete", "success")


@dataclass(frozen=True)
class SidecarTemplate:
    name: str
    image: str
    environment: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    healthcheck: ContainerHealthCheck | None = None
    essential: bool = True
    depends_on: Mapping[str, str] = field(default_factory=dict)  # container -> condition
    image_id: str | None = None


@dataclass(frozen=True)
class ReplicaTemplate:
    """How to run one replica of a service: its main container and sidecars."""

    service: str
    image: str  # a ref the engine can run (tag or id)
    environment: Mapping[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None
    entrypoint: tuple[str, ...] | None = None
    healthcheck: ContainerHealthCheck | None = None
    port: int | None = None  # the target port the registry announces
    sidecars: tuple[SidecarTemplate, ...] = ()
    depends_on: Mapping[str, str] = field(default_factory=dict)  # main container -> sidecars
    image_id: str | None = None  # content identity: a rebuilt image rolls the service
    # The service's own Service Connect configuration ("client", or the server's
    # endpoint and protocol): changing it redeploys the service's tasks on ECS,
    # so it rolls the replicas here too (and they see the endpoints of now).
    service_connect: str = ""

    def config_hash(self, *extra: str) -> str:
        """Changes whenever a replica would run differently: the rolling-update trigger."""
        data = _jsonable(self)
        data["extra"] = list(extra)
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DesiredService:
    template: ReplicaTemplate
    count: int


DesiredState = Mapping[str, DesiredService]


def template_for(
    naming: NamingModel,
    service: Service,
    image: str,
    *,
    image_id: str | None = None,
    env_file: Mapping[str, str] | None = None,
    sidecar_images: Mapping[str, str] | None = None,
    lb_dns: str | None = None,
    health_interval: float | None = None,
) -> ReplicaTemplate:
    """The replica template of a merged service manifest.

    `lb_dns`: where a person reaches the public endpoint (COPILOT_LB_DNS);
    `health_interval`: copilot/.meshlocal.yml's local probe period.
    """
    sidecars = tuple(
        SidecarTemplate(
            name=sc.name,
            image=(sidecar_images or {}).get(sc.name) or sc.image or "",
            environment=naming.sidecar_env_vars(service.name, sc, lb_dns),
            command=sc.command,
            entrypoint=sc.entrypoint,
            healthcheck=local_check(sc.healthcheck, health_interval),
            essential=sc.essential,
            depends_on=dict(sc.depends_on),
        )
        for sc in service.sidecars
    )
    return ReplicaTemplate(
        service=service.name,
        image=image,
        environment=naming.env_vars(service.name, dict(env_file or {}), lb_dns),
        command=service.command,
        entrypoint=service.entrypoint,
        healthcheck=local_check(service.container_healthcheck, health_interval),
        port=service.target_port,
        sidecars=sidecars,
        depends_on=dict(service.depends_on),
        image_id=image_id,
        service_connect=_connect_identity(naming, service),
    )


def local_check(
    check: ContainerHealthCheck | None, interval: float | None
) -> ContainerHealthCheck | None:
    """The manifest's check, probed every `interval` locally when one is set."""
    if check is None or interval is None:
        return check
    return replace(check, interval_s=interval)


def _connect_identity(naming: NamingModel, service: Service) -> str:
    if not naming.is_sc_client(service.name):
        return ""
    ep = naming.endpoint_of(service.name)
    return "client" if ep is None else f"server {ep.name}:{ep.port} {ep.protocol.value}"


# -- (de)serialisation: the CLI hands desired state to the agent as JSON ---------------


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, ReplicaTemplate | SidecarTemplate | ContainerHealthCheck | DesiredService):
        return {k: _jsonable(v) for k, v in asdict(obj).items()}
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return [_jsonable(v) for v in obj]
    return obj


def _tuple(value: Any) -> tuple[str, ...] | None:
    return None if value is None else tuple(str(v) for v in value)


def _check(raw: Any) -> ContainerHealthCheck | None:
    if raw is None:
        return None
    return ContainerHealthCheck(
        command=tuple(raw["command"]),
        interval_s=float(raw["interval_s"]),
        timeout_s=float(raw["timeout_s"]),
        retries=int(raw["retries"]),
        start_period_s=float(raw["start_period_s"]),
    )


def _template(raw: Mapping[str, Any]) -> ReplicaTemplate:
    return ReplicaTemplate(
        service=raw["service"],
        image=raw["image"],
        environment=dict(raw.get("environment") or {}),
        command=_tuple(raw.get("command")),
        entrypoint=_tuple(raw.get("entrypoint")),
        healthcheck=_check(raw.get("healthcheck")),
        port=raw.get("port"),
        sidecars=tuple(
            SidecarTemplate(
                name=s["name"],
                image=s["image"],
                environment=dict(s.get("environment") or {}),
                command=_tuple(s.get("command")),
                entrypoint=_tuple(s.get("entrypoint")),
                healthcheck=_check(s.get("healthcheck")),
                essential=bool(s.get("essential", True)),
                depends_on=dict(s.get("depends_on") or {}),
                image_id=s.get("image_id"),
            )
            for s in raw.get("sidecars") or ()
        ),
        depends_on=dict(raw.get("depends_on") or {}),
        image_id=raw.get("image_id"),
        service_connect=str(raw.get("service_connect") or ""),
    )


def desired_to_json(desired: DesiredState) -> str:
    return json.dumps({name: _jsonable(d) for name, d in desired.items()}, sort_keys=True)


def desired_from_json(text: str) -> dict[str, DesiredService]:
    raw = json.loads(text)
    return {
        name: DesiredService(_template(d["template"]), int(d["count"])) for name, d in raw.items()
    }


# -- the planner ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Observed:
    """A replica container as the engine lists it."""

    container_id: str
    service: str
    index: int
    config_hash: str | None
    alive: bool  # created, running or restarting: not exited/dead
    healthy: bool | None = None  # None: no health check


@dataclass(frozen=True)
class Plan:
    start: tuple[tuple[str, int], ...] = ()  # (service, index) to create
    roll: tuple[Observed, ...] = ()  # alive but stale: replace, new before old stops
    remove: tuple[Observed, ...] = ()  # scale-in, unknown services, dead and duplicates

    @property
    def empty(self) -> bool:
        return not (self.start or self.roll or self.remove)


def plan(
    desired: Mapping[str, tuple[int, str]],  # service -> (count, config hash)
    observed: Iterable[Observed],
    services: Iterable[str] | None = None,
    max_starts: int | None = None,
) -> Plan:
    """What to do so that `observed` becomes `desired`.

    `services` limits the plan to those services (None: all observed and
    desired). Per index 1..count the healthiest matching replica is kept;
    a stale one is rolled; indexes above count and anything dead go.
    `max_starts` caps the starts planned per service (the lowest missing
    indexes): the work for a huge count is planned a batch at a time, in
    time and memory that follow what runs, not the count.
    """
    scope = set(services) if services is not None else None
    by_service: dict[str, list[Observed]] = {}
    for o in observed:
        if scope is None or o.service in scope:
            by_service.setdefault(o.service, []).append(o)
    names = set(by_service) | {s for s in desired if scope is None or s in scope}
    start: list[tuple[str, int]] = []
    roll: list[Observed] = []
    remove: list[Observed] = []
    for svc in sorted(names):
        current = by_service.get(svc, [])
        remove.extend(o for o in current if not o.alive)
        alive = [o for o in current if o.alive]
        if svc not in desired:
            remove.extend(alive)
            continue
        count, want = desired[svc]
        by_index: dict[int, list[Observed]] = {}
        for o in alive:
            by_index.setdefault(o.index, []).append(o)
        for index in sorted(i for i in by_index if 1 <= i <= count):
            here = by_index[index]
            fresh = sorted(
                (o for o in here if o.config_hash == want),
                key=lambda o: (o.healthy is False, o.container_id),
            )
            stale = [o for o in here if o.config_hash != want]
            if fresh:
                remove.extend(fresh[1:])  # duplicates, e.g. after an interrupted roll
                remove.extend(stale)  # a roll that got as far as a healthy new replica
            else:
                roll.append(stale[0])
                remove.extend(stale[1:])
        missing = (i for i in range(1, count + 1) if i not in by_index)
        start.extend((svc, i) for i in itertools.islice(missing, max_starts))
        extra = sorted((o for o in alive if not 1 <= o.index <= count), key=lambda o: -o.index)
        remove.extend(extra)
    return Plan(tuple(start), tuple(roll), tuple(remove))


def start_order(template: ReplicaTemplate) -> list[str]:
    """The task's containers (main = the service name, then sidecars) in dependency order.

    A container starts after every container it depends on; otherwise the
    manifest order holds, main container first. Unknown names are ignored
    (validation reports them); a cycle falls back to the manifest order.
    """
    names = [template.service, *(sc.name for sc in template.sidecars)]
    deps: dict[str, set[str]] = {template.service: set(template.depends_on)}
    deps.update({sc.name: set(sc.depends_on) for sc in template.sidecars})
    known = set(names)
    order: list[str] = []
    pending = list(names)
    while pending:
        ready = next((n for n in pending if deps[n] & known <= set(order)), pending[0])
        order.append(ready)
        pending.remove(ready)
    return order
