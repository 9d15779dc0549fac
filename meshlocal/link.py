"""The controller <-> data plane link: what crosses the trust boundary, and how.

The controller (Docker socket, no listener) connects out to the data plane
(replica traffic, no Docker socket) over a stream replicas can't reach: a
unix socket on a volume only the two containers mount (container mode), or
a socketpair with its child process (host mode). One JSON object per line.

controller -> data plane:
  {"t": "config", "id": n, "config": {...}}   answered by {"t": "ack", "id": n, ...}
  {"t": "replicas", "replicas": [...]}        the whole set, on every change
  {"t": "clients", "clients": [...]}          client-only members (`meshlocal run`), on change
  {"t": "status", "status": {...}}            the reconciler's part of `ps`
  {"t": "tasks", "tasks": [...]}              every task's containers (metadata.py), on change
  {"t": "faults", "faults": [...], "suppressed": [...]}  the data plane's last report, sent
                                              back before the config when it (re)connects
data plane -> controller:
  {"t": "ack", "id": n, "error": str | null, "admin_port": int, "public_port": int | null,
   "notes": [str]}                            notes: faults a new configuration dropped
  {"t": "served", "replicas": [{"id", "health", "draining"}]}  what DNS and proxy use
  {"t": "faults", "faults": [...], "suppressed": [...]}  its fault set, after every change

The data plane trusts the controller. The controller trusts nothing the data
plane says beyond health: `served` only decides readiness and rolls, never
what starts or which image runs. Pure: no I/O here but line framing.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from meshlocal.faults import Fault
from meshlocal.manifest.codec import from_jsonable, to_jsonable
from meshlocal.manifest.model import EnvironmentSpec, Service
from meshlocal.proxy.settings import ProxySettings
from meshlocal.registry import Health, Replica, ReplicaRegistry

if TYPE_CHECKING:
    import asyncio

LINE_LIMIT = 64 * 1024 * 1024  # one snapshot of a large environment fits
LINK_DIR = "/run/meshlocal/link"  # the volume both containers mount
LINK_SOCKET = f"{LINK_DIR}/dataplane.sock"


class LinkClosed(Exception):
    """The other side went away."""


@dataclass(frozen=True)
class ServingConfig:
    """What the data plane serves: everything it needs and nothing it could abuse."""

    project: str
    spec: EnvironmentSpec
    address: str  # its own address on the network: replicas' DNS server
    gateway: str | None = None  # the host, as the admin API sees it
    subnet: str | None = None  # the network's, for the task metadata documents
    vips: Mapping[str, str] = field(default_factory=dict)
    proxy: ProxySettings = field(default_factory=ProxySettings)

    def to_jsonable(self) -> dict[str, Any]:
        return {
            "project": self.project,
            "spec": to_jsonable(self.spec),
            "address": self.address,
            "gateway": self.gateway,
            "subnet": self.subnet,
            "vips": dict(self.vips),
            "proxy": to_jsonable(self.proxy),
        }

    @classmethod
    def from_jsonable(cls, raw: Mapping[str, Any]) -> ServingConfig:
        proxy = from_jsonable(ProxySettings, raw["proxy"])
        proxy = ProxySettings(
            **{**proxy.__dict__, "port_map": {int(k): v for k, v in proxy.port_map.items()}}
        )
        return cls(
            project=str(raw["project"]),
            spec=from_jsonable(EnvironmentSpec, raw["spec"]),
            address=str(raw["address"]),
            gateway=None if raw.get("gateway") is None else str(raw["gateway"]),
            subnet=None if raw.get("subnet") is None else str(raw["subnet"]),
            vips={str(k): str(v) for k, v in dict(raw.get("vips") or {}).items()},
            proxy=proxy,
        )


def serving_spec(spec: EnvironmentSpec) -> EnvironmentSpec:
    """The spec without what the data plane has no use for: variables, secrets, builds.

    Names, ports, health checks and Service Connect settings are all it serves from.
    """

    def strip(svc: Service) -> Service:
        sidecars = tuple(
            replace(sc, variables={}, secrets={}, build=None, command=None, entrypoint=None)
            for sc in svc.sidecars
        )
        return replace(
            svc,
            variables={},
            secrets={},
            env_file=None,
            build=None,
            command=None,
            entrypoint=None,
            sidecars=sidecars,
        )

    return replace(spec, services=tuple(strip(s) for s in spec.services))


def replica_to_json(r: Replica) -> dict[str, Any]:
    return {
        "service": r.service,
        "index": r.index,
        "id": r.container_id,
        "address": r.address,
        "port": r.port,
        "health": r.health.value,
        "draining": r.draining,
        "sc_view": None if r.sc_view is None else sorted(r.sc_view),
    }


def replica_from_json(raw: Mapping[str, Any]) -> Replica:
    view = raw.get("sc_view")
    port = raw.get("port")
    return Replica(
        service=str(raw["service"]),
        index=int(raw["index"]),
        container_id=str(raw["id"]),
        address=str(raw["address"]),
        port=None if port is None else int(port),
        health=Health(str(raw["health"])),
        draining=bool(raw.get("draining")),
        sc_view=None if view is None else frozenset(str(v) for v in view),
    )


def served_to_json(replicas: Iterable[Replica]) -> list[dict[str, Any]]:
    return [
        {"id": r.container_id, "health": r.health.value, "draining": r.draining} for r in replicas
    ]


class Mirror:
    """The data plane's registry, fed by the controller's snapshots.

    Membership and every field but health come from the controller. Health
    has two writers, as in a single process: Docker's health check (the
    controller's) and the data plane's own probes. The last writer wins: a
    snapshot's health is taken only when it changed since the last snapshot,
    so a probe's verdict stands until Docker reports something new.
    """

    def __init__(self, registry: ReplicaRegistry) -> None:
        self.registry = registry
        self._sent: dict[str, Health] = {}  # the controller's last word on each replica

    def apply(self, replicas: Iterable[Replica]) -> None:
        incoming = {r.container_id: r for r in replicas}
        for gone in self.registry.all():
            if gone.container_id not in incoming:
                self.registry.remove(gone.container_id)
                self._sent.pop(gone.container_id, None)
        for cid, replica in incoming.items():
            current = self.registry.get(cid)
            last = self._sent.get(cid)
            self._sent[cid] = replica.health
            if current is None:
                self.registry.upsert(replica)
            elif last is not None and last == replica.health:
                self.registry.upsert(replace(replica, health=current.health))
            else:
                self.registry.upsert(replica)


def serving_view(
    controller: ReplicaRegistry, served: Mapping[str, tuple[Health, bool]], view: ReplicaRegistry
) -> None:
    """`view` := the controller's replicas as the data plane serves them.

    A replica the data plane has not reported yet is absent: not serving.
    """
    wanted: dict[str, Replica] = {}
    for r in controller.all():
        seen = served.get(r.container_id)
        if seen is not None:
            wanted[r.container_id] = replace(r, health=seen[0], draining=seen[1] or r.draining)
    for r in view.all():
        if r.container_id not in wanted:
            view.remove(r.container_id)
    for r in wanted.values():
        view.upsert(r)


def parse_served(items: Iterable[Any]) -> dict[str, tuple[Health, bool]]:
    out: dict[str, tuple[Health, bool]] = {}
    for item in items:
        if not isinstance(item, Mapping):
            continue
        try:
            out[str(item["id"])] = (Health(str(item["health"])), bool(item.get("draining")))
        except (KeyError, ValueError, TypeError):
            continue  # a data plane's word is checked, never trusted blindly
    return out


@dataclass(frozen=True)
class FaultReport:
    """A data plane's faults (faultstore.py): the whole set, and the declared ids
    removed through its API until the next `up`."""

    faults: tuple[Fault, ...] = ()
    suppressed: tuple[str, ...] = ()

    def to_message(self) -> dict[str, Any]:
        return {
            "t": "faults",
            "faults": [f.to_json() for f in self.faults],
            "suppressed": list(self.suppressed),
        }

    @classmethod
    def from_message(cls, message: Mapping[str, Any]) -> FaultReport | None:
        """None when malformed: the other side's word is checked, never trusted blindly."""
        items, hidden = message.get("faults"), message.get("suppressed") or []
        if not isinstance(items, list) or not isinstance(hidden, list):
            return None
        try:
            faults = tuple(Fault.from_json(item) for item in items)
        except (KeyError, ValueError, TypeError, AttributeError):
            return None
        if not all(isinstance(f.id, str) and f.id for f in faults):
            return None
        return cls(faults, tuple(str(h) for h in hidden))


# -- framing -----------------------------------------------------------------------


SEND_TIMEOUT_S = 30.0
MAX_BACKLOG = 16 * 1024 * 1024  # unsent bytes a peer may leave: more, and the link is dropped


async def send(
    writer: asyncio.StreamWriter, message: Mapping[str, Any], timeout: float = SEND_TIMEOUT_S
) -> None:
    """One message; a peer that stops reading fails it (LinkClosed), never hangs it."""
    import asyncio  # here, not at the top: the CLI reads this module's constants only

    writer.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
    try:
        await asyncio.wait_for(writer.drain(), timeout)
    except TimeoutError:
        writer.close()
        raise LinkClosed("the peer stopped reading") from None


async def receive(reader: asyncio.StreamReader) -> dict[str, Any]:
    import asyncio

    try:
        line = await reader.readline()
    except (ValueError, asyncio.LimitOverrunError, ConnectionError) as exc:
        raise LinkClosed(str(exc)) from exc
    if not line:
        raise LinkClosed("end of stream")
    try:
        message = json.loads(line)
    except (ValueError, RecursionError) as exc:  # the peer may be hostile: never more
        raise LinkClosed(f"not JSON: {exc!r}") from exc
    if not isinstance(message, dict):
        raise LinkClosed("not a JSON object")
    return message
