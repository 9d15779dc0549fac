"""One running mesh's controller: the part that holds the Docker engine.

The controller owns one environment. Its reconciler keeps `count` replicas
alive from Docker's event stream; it puts the Service Connect addresses in
place, and it tells the data plane (serving.py) what to serve over the link
(link.py). It listens on no network: the CLI reaches it through `docker
exec` (container mode) or a root-only unix socket (host mode), control.py.

Container mode: the controller container has the Docker socket and no
network (`network_mode: none`); the data plane is another, unprivileged
container. Host mode (Linux, root): the controller is a root process on the
host and runs the data plane as its child, which drops root before it
listens (privileges.py). The code is the same; only the transport differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from meshlocal import control, faultkeep, logserve
from meshlocal.agentconfig import (
    AgentConfig,
)
from meshlocal.control import CONTAINER_SOCKET as CONTROL_SOCKET
from meshlocal.errors import DataPlaneError, MeshlocalError, RuntimeFailure
from meshlocal.faultparse import read_report
from meshlocal.hostchild import DataPlaneChild
from meshlocal.link import (
    LINE_LIMIT,
    LINK_SOCKET,
    MAX_BACKLOG,
    LinkClosed,
    ServingConfig,
    parse_served,
    receive,
    replica_to_json,
    send,
    serving_spec,
    serving_view,
)
from meshlocal.meshvips import VipPlacement
from meshlocal.metadata import METADATA_PORT, record_to_json
from meshlocal.naming import NamingModel
from meshlocal.ports import ADMIN_PORT, PUBLIC_PORT
from meshlocal.privileges import peer_uid
from meshlocal.process import stop_on_signals
from meshlocal.registry import Health, ReplicaRegistry
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import ContainerEvent, Engine, NetworkInfo
from meshlocal.runtime.reconcile import DesiredService
from meshlocal.runtime.replicas import Reconciler
from meshlocal.runtime.swarmreplicas import SwarmReplicas
from meshlocal.runtime.taskbook import TaskBook
from meshlocal.status import status_document
from meshlocal.vips import allocate, vip_block

if TYPE_CHECKING:
    from meshlocal.serving import Listen

log = logging.getLogger("meshlocal.controller")

__all__ = [
    "ADMIN_PORT",
    "PUBLIC_PORT",
    "AgentConfig",
    "Controller",
]

DATAPLANE_UID = 65534  # runtime/dataplane.py runs it so
LINK_WAIT_S = 30.0  # the data plane's first connection, before replicas start
ACK_TIMEOUT_S = 30.0
STATUS_EVERY_S = 0.5


class Controller(VipPlacement):
    """The controller of one environment: engine, replicas, addresses; no listener."""

    def __init__(self, config: AgentConfig, engine: Engine, *, first_start: bool = False) -> None:
        self.config = config
        self.engine = engine
        # The CLI started the first replicas beside a new data plane (firststart.py):
        # they are new to it, so the first link sends them after the configuration.
        self.first_start = first_start
        self.naming = NamingModel(config.spec)
        self.registry = ReplicaRegistry()  # membership and Docker's health
        self.view = ReplicaRegistry()  # the same replicas as the data plane serves them
        self.served: dict[str, tuple[Health, bool]] = {}
        self.address = ""
        self.network: NetworkInfo | None = None
        self.reconciler: Reconciler | SwarmReplicas | None = None
        self.taskbook: TaskBook | None = None
        self.applied = asyncio.Event()
        self.apply_error: MeshlocalError | None = None
        self.linked = asyncio.Event()  # the data plane took a configuration once
        self.link_error: str | None = None  # its refusal of the first one, if any
        self.admin_port: int | None = None
        self.public_port: int | None = None
        self._stack = contextlib.AsyncExitStack()
        self._apply_task: asyncio.Task[None] | None = None
        self._vip_block: list[str] = []
        self._writer: asyncio.StreamWriter | None = None
        self._acks: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._next_id = 0
        self._push_pending = False
        self._sent: dict[str, bytes] = {}  # the last line of each kind sent on this link
        self._vips_in: str | None = None  # data-plane container start the VIPs were put in
        self._vips_lock = asyncio.Lock()
        self._helpers: set[asyncio.Task[None]] = set()
        # The data plane's last word on its faults: handed back to it when it
        # restarts (faultstore.py), kept beside the state file for a restart of
        # both. Counters are not kept.
        self.fault_report = faultkeep.load(faultkeep.path_for(config))
        self.config_notes: list[str] = []  # faults the last configuration dropped

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self.network = await asyncio.to_thread(self.engine.ensure_network, cfg.project, cfg.env)
        self.address = cfg.advertise or await self._own_address(self.network)
        self._vip_block = vip_block(
            self.network.subnet or "", self.network.ip_range, self.network.gateway
        )
        early: asyncio.Task[None] | None = None
        if cfg.mode == "container" and cfg.helper_image is not None:
            # The helper that puts the addresses in runs while the rest starts.
            names = NamingModel(cfg.spec).endpoint_names
            vips = allocate(names, self._vip_block, cfg.vips)
            cfg = self.config = dataclasses.replace(cfg, vips=vips)
            early = asyncio.create_task(self._follow_dataplane())
            self._stack.push_async_callback(_cancelled, early)
        else:
            cfg = self.config = await self._with_vips(cfg, cfg.vips)
        # Host mode puts them on the host's bridge: they must not outlive the controller.
        self._stack.push_async_callback(self._release_vips)
        self.naming = NamingModel(cfg.spec, cfg.vips)
        kind = SwarmReplicas if cfg.orchestrator == "swarm" else Reconciler
        self.reconciler = kind(
            self.engine,
            self.registry,
            project=cfg.project,
            env=cfg.env,
            network=self.network,
            dns=[self.address],
            on_change=lambda msg: log.info("%s", msg),
            max_replicas=cfg.spec.workspace.max_replicas,
            view=self.view,
            pause_image=cfg.pause_image,
        )
        self.reconciler.sc_view = self.naming.endpoint_names
        self.reconciler.on_other_event = self._on_own_event
        # Every task container, from its start: the task metadata endpoint's records.
        self.taskbook = TaskBook(
            self.engine, cfg.project, cfg.env, self.network.name, self._schedule_push
        )
        self.reconciler.on_task_event = self.taskbook.on_event
        self.reconciler.metadata = f"http://{self.address}:{METADATA_PORT}"
        self.taskbook.start()
        self._stack.push_async_callback(self.taskbook.close)
        self._stack.callback(lambda: [t.cancel() for t in self._helpers])
        # Adopt what already runs first (a restarted controller): the data plane
        # gets the whole set in its first snapshot.
        await self.reconciler.start()
        self._stack.push_async_callback(self.reconciler.close)
        self._stack.callback(self.registry.subscribe(lambda _b, _a: self._changed()))
        self._stack.callback(self.registry.subscribe_clients(self._schedule_push))
        self._persist(cfg)
        for job in (self._link_forever(), self._tick()):
            task = asyncio.create_task(job)
            self._stack.push_async_callback(_cancelled, task)
        # Replicas started from here on ask the data plane for names: it serves first.
        # A swarm task takes longer to be scheduled, pulled and started than the
        # data plane takes to link (its DNS port is bound before its imports).
        with contextlib.suppress(TimeoutError):
            if cfg.orchestrator != "swarm":
                await asyncio.wait_for(self.linked.wait(), LINK_WAIT_S)
        if not self.linked.is_set() and cfg.orchestrator != "swarm":
            log.warning("the data plane has not connected yet: starting replicas anyway")
        # The helper (`early`) may still be at work: a client that dials an
        # endpoint address before it is in place sees its first SYN unanswered
        # and resent (ARP resolves once the address is there), never a refusal,
        # and a replica takes longer than the helper to start anyway.
        self._stack.callback(self._cancel_apply)
        self._schedule_apply(cfg.desired)

    async def stop(self) -> None:
        await self._stack.aclose()

    def _cancel_apply(self) -> None:
        if self._apply_task is not None:
            self._apply_task.cancel()

    def _schedule_apply(self, desired: Mapping[str, DesiredService]) -> None:
        self.applied.clear()
        self.apply_error = None
        previous = self._apply_task
        if self.reconciler is not None:
            self.reconciler.supersede()  # the previous apply stops queuing, not waited out
        self._apply_task = asyncio.create_task(
            self._apply(desired, previous), name="meshlocal-apply"
        )

    async def reconfigure(self, config: AgentConfig) -> None:
        """A re-run of `up`: new names route at once, then services converge (rolling).

        The data plane keeps running, so its address, and with it every
        unchanged replica, stays as it is.
        """
        # The steps that can fail first (addresses, the data plane's listeners),
        # so a failure leaves the running configuration in charge.
        config = await self._with_vips(config, self.config.vips)
        self.config_notes = []
        if self._writer is not None:
            self.config_notes = await self._send_config(config)
        self.config = config
        self.naming = NamingModel(config.spec, config.vips)
        if self.reconciler is not None:
            # Replicas started from now on see the new endpoints; older ones keep theirs.
            self.reconciler.sc_view = self.naming.endpoint_names
            self.reconciler.max_replicas = config.spec.workspace.max_replicas
        self._persist(config)
        self._schedule_apply(config.desired)
        self._changed()

    def _on_own_event(self, event: ContainerEvent) -> None:
        # A data plane (re)started: its new namespace gets the addresses now,
        # while its process is still starting, not once it has connected.
        if event.role == L.Role.DATAPLANE.value and event.action == "start":
            self._spawn(self._follow_dataplane())

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """A helper task, cancelled when the controller stops."""
        task = asyncio.create_task(work)
        self._helpers.add(task)
        task.add_done_callback(self._helpers.discard)

    def _persist(self, config: AgentConfig) -> None:
        if config.state_file:
            path = Path(config.state_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(config.to_json())
            tmp.replace(path)  # atomic: a crash never leaves half a config

    async def _apply(
        self, desired: Mapping[str, DesiredService], previous: asyncio.Task[None] | None
    ) -> None:
        assert self.reconciler is not None
        if previous is not None and not previous.done():
            # One apply at a time: the reconciler's per-service locks don't
            # order whole applies.
            with contextlib.suppress(asyncio.CancelledError):
                await previous
        current = asyncio.current_task()
        try:
            await self.reconciler.apply(desired)
        except MeshlocalError as exc:
            log.error("%s", exc.render())
            if current is self._apply_task:  # a superseded apply's error is not the new one's
                self.apply_error = exc
        finally:
            if current is self._apply_task:
                self.applied.set()
                self._changed()

    async def _own_address(self, network: NetworkInfo) -> str:
        name = self.config.self_container
        if name is None:
            raise RuntimeFailure("the controller needs `advertise` or `self_container`")
        for _ in range(50):  # the data plane may be starting with us
            info = await asyncio.to_thread(self.engine.inspect, name)
            address = info.address_on(network.name) if info else None
            if address:
                return address
            await asyncio.sleep(0.2)
        raise RuntimeFailure(f"the data-plane container {name} has no address on {network.name}")

    # -- the link to the data plane ----------------------------------------------------

    async def _link_forever(self) -> None:
        lost_at = time.monotonic()
        while True:
            started = time.monotonic()
            try:
                if self.config.mode == "host":
                    await self._run_child()
                else:
                    reader, writer = await asyncio.open_unix_connection(
                        LINK_SOCKET, limit=LINE_LIMIT
                    )
                    if not _is_dataplane(writer):
                        writer.close()
                        raise DataPlaneError(f"{LINK_SOCKET} is not the data plane's socket")
                    await self._run_link(reader, writer)
            except OSError:
                pass  # not there yet, or restarting
            except DataPlaneError as exc:
                log.error("%s", exc.render())
            except Exception:  # whatever the data plane did, keep reconnecting
                log.exception("data plane link failed")
            if time.monotonic() - started > 10:
                lost_at = time.monotonic()
            # A restarting data plane is back within a second or two: look often
            # (a refused unix connect costs nothing), then calm down.
            # (Host mode starts a process each time: never faster than 2 a second.)
            fast = self.config.mode == "container" and time.monotonic() - lost_at < 60
            await asyncio.sleep(0.05 if fast else 0.5)

    async def _run_child(self) -> None:
        """Host mode: the data plane is this process's child, unprivileged."""
        child = DataPlaneChild(self._listen())
        started = False
        try:
            reader, writer = await child.start()
            started = True
            await self._run_link(reader, writer)
        finally:
            code = await child.stop()
            if started and not self.linked.is_set():
                self.link_error = self.link_error or f"the data plane exited ({code})"
                self.linked.set()  # `serve` fails instead of waiting

    def _listen(self) -> Listen:
        from meshlocal.serving import Listen  # host mode only: the data plane's own module

        cfg = self.config
        # A child started again keeps the ports the first one got: the admin
        # file and a browser tab still point there.
        return Listen(
            mode=cfg.mode,
            bind=cfg.bind,
            public_host=cfg.public_host,
            public_port=self.public_port or cfg.public_port,
            admin_host=cfg.admin_host,
            admin_port=self.admin_port or cfg.admin_port,
            dns_port=cfg.dns_port,
        )

    async def _run_link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reading = asyncio.create_task(self._read_link(reader))
        self._writer = writer
        self._sent.clear()  # a new data plane knows nothing yet
        try:
            # The replica set first: a restarted data plane has it before it listens,
            # so its first requests find replicas (a 503 otherwise), and takes them
            # as serving. A new mesh's first replicas are new to it: sent after the
            # configuration, they are probed before they serve, as any new replica.
            fresh, self.first_start = self.first_start, False
            if not fresh:
                self._push_now()
            if self.fault_report is not None:  # a restarted data plane takes its faults back
                await send(writer, self.fault_report.to_message())
            try:
                await self._send_config(self.config)
            except DataPlaneError as exc:
                if not self.linked.is_set():
                    self.link_error = exc.render()
                    self.linked.set()
                raise
            if fresh:
                self._push_now()
            self.linked.set()
            await self._follow_dataplane()
            log.info("data plane linked (admin port %s)", self.admin_port)
            await reading
        except (LinkClosed, ConnectionError) as exc:
            log.warning("data plane link lost (%s)", exc)
        finally:
            self._writer = None
            reading.cancel()
            with contextlib.suppress(asyncio.CancelledError, LinkClosed, ConnectionError):
                await reading
            writer.close()
            for fut in self._acks.values():
                if not fut.done():
                    fut.set_exception(LinkClosed("the data plane went away"))
            self._acks.clear()
            self.served = {}  # nothing is served until it says so again
            serving_view(self.registry, self.served, self.view)

    async def _read_link(self, reader: asyncio.StreamReader) -> None:
        while True:
            message = await receive(reader)
            kind = message.get("t")
            if kind == "ack":
                ident = message.get("id")
                fut = self._acks.pop(ident, None) if isinstance(ident, int) else None
                if fut is not None and not fut.done():
                    fut.set_result(message)
            elif kind == "served":
                items = message.get("replicas")
                self.served = parse_served(items if isinstance(items, list) else [])
                serving_view(self.registry, self.served, self.view)
                self._schedule_push()
            elif kind == "faults":
                report = read_report(message, lambda note: log.warning("fault report: %s", note))
                if report is not None:
                    self.fault_report = report
                    faultkeep.save(faultkeep.path_for(self.config), report)
            elif kind == "logs" and self._writer is not None:  # the mesh page asks
                self._spawn(logserve.answer(message, self._writer, self))

    async def _send_config(self, config: AgentConfig) -> list[str]:
        """The data plane takes `config`; returns its notes (faults it dropped)."""
        writer = self._writer
        if writer is None:
            raise LinkClosed("no data plane")
        assert self.network is not None
        self._next_id += 1
        ident = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[ident] = fut
        serving = ServingConfig(
            project=config.project,
            spec=serving_spec(config.spec),
            address=self.address,
            gateway=self.network.gateway,
            subnet=self.network.subnet,
            vips=config.vips,
            proxy=config.proxy,
        )
        await send(writer, {"t": "config", "id": ident, "config": serving.to_jsonable()})
        try:
            ack = await asyncio.wait_for(fut, ACK_TIMEOUT_S)
        except LinkClosed:
            raise DataPlaneError(
                "the data plane went away while applying the configuration"
            ) from None
        except TimeoutError:
            raise DataPlaneError("the data plane did not take the configuration in time") from None
        if ack.get("error"):
            raise DataPlaneError(str(ack["error"]).removeprefix("error: "))
        self.admin_port = ack.get("admin_port")
        self.public_port = ack.get("public_port")
        notes = ack.get("notes")
        return [str(n) for n in notes] if isinstance(notes, list) else []

    def _changed(self) -> None:
        serving_view(self.registry, self.served, self.view)
        self._schedule_push()

    def _schedule_push(self) -> None:
        if not self._push_pending:
            self._push_pending = True
            asyncio.get_running_loop().call_soon(self._push_now)

    def _push_now(self) -> None:
        self._push_pending = False
        writer = self._writer
        if writer is None or writer.is_closing():
            return
        if writer.transport.get_write_buffer_size() > MAX_BACKLOG:
            log.warning("the data plane stopped reading: dropping the link")
            writer.close()
            return
        replicas = [replica_to_json(r) for r in self.registry.all()]
        clients = [replica_to_json(r) for r in self.registry.clients()]
        tasks = [record_to_json(r) for r in self.taskbook.records()] if self.taskbook else []
        # Clients before status: a one-off the status lists is known to the data plane.
        for message in (
            {"t": "tasks", "tasks": tasks},
            {"t": "replicas", "replicas": replicas},
            {"t": "clients", "clients": clients},
            {"t": "status", "status": self.state()},
        ):
            line = json.dumps(message, separators=(",", ":")).encode() + b"\n"
            if self._sent.get(str(message["t"])) != line:
                self._sent[str(message["t"])] = line
                writer.write(line)

    async def _tick(self) -> None:
        # Back-off countdowns and queued starts change with time, not events;
        # what did not change since the last push is not sent again.
        ticks = 0
        while True:
            await asyncio.sleep(STATUS_EVERY_S)
            self._schedule_push()
            ticks += 1
            if ticks % 20 == 0 and self._writer is not None:
                await self._follow_dataplane()  # a helper that failed is tried again

    # -- commands (control.py) ---------------------------------------------------------

    async def command(self, op: str, body: Any) -> Any:
        result = await self._command(op, body)
        # The CLI reads state from the data plane next: it must see this command's effect.
        await self._sync_status()
        return result

    async def _sync_status(self) -> None:
        writer = self._writer
        if writer is None:
            return
        self._next_id += 1
        ident = self._next_id
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._acks[ident] = fut
        self._sent.pop("status", None)  # sent below, outside the de-duplication
        with contextlib.suppress(LinkClosed, ConnectionError, TimeoutError):
            await send(writer, {"t": "status", "id": ident, "status": self.state()})
            await asyncio.wait_for(fut, ACK_TIMEOUT_S)

    async def _command(self, op: str, body: Any) -> Any:
        assert self.reconciler is not None
        if op == "state":
            return self.state()
        if op == "apply":
            try:
                config = AgentConfig.from_json(json.dumps(body))
            except (ValueError, KeyError, TypeError) as exc:
                raise RuntimeFailure(f"bad configuration: {exc}") from None
            await self.reconfigure(config)
            return {**self.state(), "notes": self.config_notes}
        if op == "scale":
            try:
                service, count = str(body["service"]), int(body["count"])
            except (ValueError, KeyError, TypeError):
                raise RuntimeFailure("expected {service, count}") from None
            # Returns at once: the caller waits for readiness with its own timeout.
            self.reconciler.request_scale(service, count)
            return self.state()
        if op == "replace":
            try:
                service = str(body["service"])
            except (KeyError, TypeError):
                raise RuntimeFailure("expected {service}") from None
            await self.applied.wait()
            await self.reconciler.replace(service)
            return self.state()
        raise RuntimeFailure(f"unknown command {op!r}")

    # -- status -----------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What `ps`, `up -d` and the pytest plugin read (through the data plane)."""
        return status_document(self)


def _is_dataplane(writer: asyncio.StreamWriter) -> bool:
    """The link socket's listener runs as the data plane's user (a volume it owns)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return False
    return peer_uid(sock) == DATAPLANE_UID


async def _cancelled(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def serve(
    config: AgentConfig,
    engine: Engine | None = None,
    *,
    control_path: str = CONTROL_SOCKET,
    on_started: Callable[[Controller], None] | None = None,
    first_start: bool = False,
) -> None:
    """Run a controller until SIGTERM/SIGINT: the controller container's main."""
    owned = engine is None
    if engine is None:
        engine = await asyncio.to_thread(Engine.from_env)
    controller = Controller(config, engine, first_start=first_start)
    stop = stop_on_signals()
    server: asyncio.AbstractServer | None = None
    try:
        await controller.start()
        if controller.link_error and controller.admin_port is None:
            # The data plane refused its very first configuration (a port taken):
            # nothing serves, so fail and let `up` show why.
            raise DataPlaneError(controller.link_error)
        server = await control.serve(control_path, controller.command)
        if on_started is not None:
            on_started(controller)
        await stop.wait()
    finally:
        if server is not None:
            server.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(control_path)
        await controller.stop()
        if owned:
            engine.close()
