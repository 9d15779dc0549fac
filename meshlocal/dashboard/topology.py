"""The mesh page's document and its timeline's events, from what the data plane knows.

Pure: the data plane hands in its state document (`serving.DataPlane.state`),
the naming model, the edge figures and the fault table's snapshot. Nothing
here can carry a secret: the data plane never receives one (link.py strips
variables and secrets from the spec it is sent).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

from meshlocal.dashboard.edges import Edge
from meshlocal.dashboard.timeline import Timeline
from meshlocal.naming import NamingModel
from meshlocal.proxy.forward import PUBLIC_CLIENT
from meshlocal.registry import Replica

PUBLIC_NODE = "@public"
OUTSIDE_NODE = "@outside"
PSEUDO_NODES = {PUBLIC_NODE: "public endpoint", OUTSIDE_NODE: "outside the mesh"}

SD_NOTE = (
    "Service Discovery calls ({names}) go straight from a client to a replica: "
    "the proxy never sees them, so they are not drawn."
)
TCP_NOTE = (
    "TCP endpoints (Copilot's default: no AppProtocol) are counted in connections; "
    "their latency is the time to the replica's first byte."
)


class Directory:
    """Which service and replica an address belongs to, remembered after the
    replica leaves: its connections stay in the window for a minute."""

    def __init__(self, keep: int = 4096) -> None:
        self.keep = keep
        self._known: OrderedDict[str, tuple[str, str]] = OrderedDict()

    def remember(self, replica: Replica) -> None:
        self._known[replica.address] = (replica.service, replica.name)
        self._known.move_to_end(replica.address)
        while len(self._known) > self.keep:
            self._known.popitem(last=False)

    def node(self, address: str) -> str:
        """The graph node a client address calls from."""
        if address == PUBLIC_CLIENT:
            return PUBLIC_NODE
        known = self._known.get(address)
        return known[0] if known else OUTSIDE_NODE

    def name(self, address: str) -> str:
        """A replica's name for an address (ejections are per client task)."""
        if address == PUBLIC_CLIENT:
            return PSEUDO_NODES[PUBLIC_NODE]
        known = self._known.get(address)
        return known[1] if known else address


class Changes:
    """Turns what the data plane observes into timeline events."""

    def __init__(
        self,
        timeline: Timeline,
        directory: Directory,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeline = timeline
        self.directory = directory
        self.clock = clock
        self.muted = False  # a whole set arriving at once (a restart): one event instead
        self._left: dict[tuple[str, int], float] = {}  # slot -> when its replica left
        self._crashes: dict[tuple[str, int], int] | None = None  # slot -> deaths seen
        self._faults: dict[str, str] | None = None  # id -> description
        self._connected: bool | None = None

    def replica(self, before: Replica | None, after: Replica | None) -> None:
        if after is not None:
            self.directory.remember(after)
        if self.muted:
            return
        add = self.timeline.add
        if before is None and after is not None:
            slot = (after.service, after.index)
            left = self._left.pop(slot, None)
            if left is not None and self.clock() - left < 120:
                add(
                    "replaced",
                    f"{after.name} replaced: container {after.container_id[:12]} "
                    f"at {after.address}",
                    service=after.service,
                    replica=after.name,
                )
            else:
                add(
                    "added",
                    f"{after.name} started at {after.address}",
                    service=after.service,
                    replica=after.name,
                )
        elif before is not None and after is None:
            self._left[(before.service, before.index)] = self.clock()
            if len(self._left) > 1024:
                self._left.clear()
            add(
                "removed",
                f"{before.name} left (container {before.container_id[:12]})",
                service=before.service,
                replica=before.name,
            )
        elif before is not None and after is not None:
            if before.health is not after.health:
                rotation = "in rotation" if after.in_rotation else "out of rotation"
                add(
                    "health",
                    f"{after.name} is {after.health.value} ({rotation})",
                    service=after.service,
                    replica=after.name,
                )
            if after.draining and not before.draining:
                add(
                    "draining",
                    f"{after.name} is draining: out of rotation, its requests finish",
                    service=after.service,
                    replica=after.name,
                )

    def taken_over(self, replicas: list[Replica]) -> None:
        """A new data plane's first set: one event, not one per replica."""
        services = sorted({r.service for r in replicas})
        self.timeline.add(
            "added",
            f"{len(replicas)} replicas of {_plural(len(services), 'service')} served: "
            f"{', '.join(services)}",
        )

    def ejected(self, replica: Replica, client: str, seconds: float) -> None:
        self.timeline.add(
            "ejected",
            f"{replica.name} ejected by {self.directory.name(client)}'s proxy for {seconds:g} s "
            "(outlier detection: consecutive errors)",
            service=replica.service,
            replica=replica.name,
        )

    def status(self, doc: dict[str, Any]) -> None:
        """Deaths the controller reports: a replica waiting to restart, or crash-looping,
        whose death count grew. The first document is what was already so."""
        rows = [
            dict(c, service=name)
            for name, svc in (doc.get("services") or {}).items()
            for c in svc.get("restarting") or []
        ]
        rows += list(doc.get("crashes") or [])
        counts: dict[tuple[str, int], tuple[int, Any]] = {}
        for crash in rows:
            try:
                slot = (str(crash["service"]), int(crash["index"]))
                count = int(crash.get("count") or 0)
            except (KeyError, TypeError, ValueError):
                continue
            if count >= counts.get(slot, (0, None))[0]:
                counts[slot] = (count, crash.get("exit_code"))
        before, self._crashes = self._crashes, {slot: c for slot, (c, _) in counts.items()}
        if before is None:
            return
        for slot, (count, code) in sorted(counts.items()):
            if count > before.get(slot, 0):
                why = f"exit code {code}" if code is not None else "failed its health check"
                self.timeline.add(
                    "died",
                    f"{slot[0]}-{slot[1]} died ({why}; {_plural(count, 'time')} in a row)",
                    service=slot[0],
                    replica=f"{slot[0]}-{slot[1]}",
                )

    def faults(self, rows: Iterable[dict[str, Any]]) -> None:
        now = {str(r.get("id")): _fault_text(r) for r in rows}
        before, self._faults = self._faults, now
        if before is None:
            return  # the first set: what was already there
        for ident in sorted(now.keys() - before.keys()):
            self.timeline.add("fault", f"fault {ident} added: {now[ident]}")
        for ident in sorted(before.keys() - now.keys()):
            self.timeline.add("fault", f"fault {ident} removed")

    def controller(self, connected: bool) -> None:
        if connected != self._connected:
            self._connected = connected
            self.timeline.add(
                "controller",
                "controller connected"
                if connected
                else "controller away: the data plane serves the last replica set it had",
            )


def document(
    state: dict[str, Any],
    *,
    naming: NamingModel | None,
    edges: list[Edge],
    directory: Directory,
    faults: list[dict[str, Any]],
    epoch: str,
    window_s: float,
    now: float | None = None,
) -> dict[str, Any]:
    """The page's snapshot (see static/app.js for how it is drawn)."""
    services: list[dict[str, Any]] = []
    protocols: dict[str, str] = {}
    sd_names: list[str] = []
    per_service_faults: dict[str, int] = {}
    for f in faults:
        svc = str(f.get("service") or "")
        per_service_faults[svc] = per_service_faults.get(svc, 0) + 1
    for name, svc in sorted((state.get("services") or {}).items()):
        running = {r.get("index") for r in svc.get("replicas") or []}
        connect = _endpoint(naming, name) if naming is not None else svc.get("connect")
        if connect:
            protocols[name] = str(connect.get("protocol") or "tcp")
        if svc.get("discovery_name"):
            port = svc.get("port")
            sd_names.append(f"{svc['discovery_name']}:{port}" if port else svc["discovery_name"])
        services.append(
            {
                "name": name,
                "type": svc.get("type"),
                "desired": svc.get("desired", 0),
                "ready": bool(svc.get("ready")),
                "port": svc.get("port"),
                "discovery_name": svc.get("discovery_name"),
                "connect": _connect(connect),
                "connect_client": bool(naming and naming.is_sc_client(name)),
                "replicas": [_replica(r, directory) for r in svc.get("replicas") or []],
                "restarting": [
                    {
                        "index": c.get("index"),
                        "status": c.get("status"),
                        "exit_code": c.get("exit_code"),
                    }
                    for c in svc.get("restarting") or []
                    # A slot whose replica is back keeps its crash record a while
                    # (the back-off's memory): as in `ps`, its row is the replica's.
                    if c.get("index") not in running
                ],
                "not_started": svc.get("not_started", 0),
                "faults": per_service_faults.get(name, 0),
            }
        )
    known = {s["name"] for s in services}
    drawn: list[dict[str, Any]] = []
    for e in edges:
        if e.target not in known:
            continue  # a service no longer in the configuration
        protocol = "http" if e.source == PUBLIC_NODE else protocols.get(e.target, "tcp")
        row = e.to_json()
        row["protocol"] = protocol
        row["unit"] = "connections" if protocol == "tcp" else "requests"
        row["latency"] = "first byte" if protocol == "tcp" else "response"
        drawn.append(row)
    nodes = [{"id": s["name"], "kind": "service", "label": s["name"]} for s in services]
    for pseudo, label in PSEUDO_NODES.items():
        if any(e["from"] == pseudo for e in drawn):
            nodes.append({"id": pseudo, "kind": pseudo[1:], "label": label})
    notes = []
    if sd_names:
        shown = ", ".join(sd_names[:3]) + (", ..." if len(sd_names) > 3 else "")
        notes.append(SD_NOTE.format(names=shown))
    if any(p == "tcp" for p in protocols.values()):
        notes.append(TCP_NOTE)
    public_port = state.get("public_port")
    if public_port and state.get("mode") == "container":
        public_port = state.get("public_host_port")  # its own port is inside the container
    return {
        "project": state.get("project"),
        "app": state.get("app"),
        "env": state.get("env"),
        "mode": state.get("mode"),
        "generated": round(time.time() if now is None else now, 3),
        "epoch": epoch,
        "controller_connected": bool(state.get("controller_connected")),
        "ready": bool(state.get("ready")),
        "error": state.get("error"),
        "window_s": window_s,
        "dns": {"address": state.get("address"), "port": state.get("dns_port")},
        "public_endpoint": f"http://127.0.0.1:{public_port}" if public_port else None,
        "notes": notes,
        "nodes": nodes,
        "services": services,
        "edges": drawn,
        "faults": [_fault(f) for f in faults],
    }


def _fault_text(row: dict[str, Any]) -> str:
    """`front-end -> api, abort 503 (50%)`: whom it hits, and what it does."""
    what = str(row.get("description") or row.get("kind") or row.get("id"))
    return f"{row['scope']}, {what}" if row.get("scope") else what


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _endpoint(naming: NamingModel, service: str) -> dict[str, Any] | None:
    """What the data plane itself serves for `service` (the status may lag)."""
    ep = naming.endpoint_of(service)
    return None if ep is None else ep.to_json()


def _connect(connect: dict[str, Any] | None) -> dict[str, Any] | None:
    if not connect:
        return None
    return {k: connect.get(k) for k in ("name", "url", "vip", "port", "protocol")}


def _replica(row: dict[str, Any], directory: Directory) -> dict[str, Any]:
    return {
        "name": row.get("name"),
        "index": row.get("index"),
        "container_id": row.get("container_id"),
        "address": row.get("address"),
        "port": row.get("port"),
        "health": row.get("health"),
        "in_rotation": bool(row.get("in_rotation")),
        "draining": bool(row.get("draining")),
        "ejected_by": [directory.name(c) for c in row.get("ejected_by") or []],
    }


def _fault(row: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": row.get("id"),
        "service": row.get("service"),
        "kind": row.get("kind"),
        "scope": row.get("scope"),
        "description": row.get("description"),
        "summary": _fault_text(row),
        "hits": row.get("hits"),
        "seen": row.get("seen"),
        "declared": bool(row.get("declared")),
    }
