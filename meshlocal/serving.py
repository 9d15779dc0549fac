"""The data plane: everything that faces replica traffic, and nothing that holds the engine.

DNS, the Service Connect and public-endpoint proxies, health probes and the
admin/state API. It has no Docker socket and runs unprivileged (see
docs/concepts.md, "Trust boundary"). What it serves comes from the
controller over the link (link.py): the configuration, the replica set and
the reconciler's status. It answers with what it serves, so the controller
knows when a replica is really in rotation.

A data plane restarted alone starts empty and serves again as soon as the
controller reconnects and sends the set (well under a second); one whose
controller is away keeps serving the last set it had. Its injected faults
come back the same way (faultstore.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from meshlocal.adminguard import admin_guard
from meshlocal.dashboard.server import Dashboard
from meshlocal.dns.resolver import MeshResolver
from meshlocal.dns.server import DnsServer
from meshlocal.errors import MeshlocalError
from meshlocal.faultparse import read_report
from meshlocal.faultstore import FaultStore, add_routes
from meshlocal.link import (
    LINE_LIMIT,
    LINK_SOCKET,
    LinkClosed,
    Mirror,
    ServingConfig,
    receive,
    replica_from_json,
    send,
    served_to_json,
)
from meshlocal.manifest.model import LOCAL_ACCOUNT_ID
from meshlocal.metadata import METADATA_PORT, Context, parse_records
from meshlocal.metadata_endpoint import MetadataEndpoint
from meshlocal.naming import NamingModel
from meshlocal.ports import ADMIN_PORT, PUBLIC_PORT, Mode
from meshlocal.privileges import peer_uid
from meshlocal.process import stop_on_signals
from meshlocal.proxy.app import Engine as ProxyCore
from meshlocal.proxy.app import PublicEndpoint, ServiceConnectProxy, admin_app
from meshlocal.proxy.healthcheck import HttpHealthChecker
from meshlocal.proxy.promexport import CounterCollector
from meshlocal.registry import ReplicaRegistry

log = logging.getLogger("meshlocal.dataplane")

API_VERSION = "v1"
LOGS_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Listen:
    """Where the data plane listens: fixed when it starts, unlike what it serves."""

    mode: Mode = "container"
    bind: str = "0.0.0.0"  # DNS and Service Connect; 0.0.0.0: its own address only
    public_host: str = "0.0.0.0"
    public_port: int = PUBLIC_PORT
    admin_host: str = "0.0.0.0"
    admin_port: int = ADMIN_PORT
    dns_port: int = 53
    metadata_port: int = METADATA_PORT  # the task metadata endpoint, beside DNS


class DataPlane:
    def __init__(self, listen: Listen) -> None:
        self.listen = listen
        self.registry = ReplicaRegistry()
        self.mirror = Mirror(self.registry)
        self.config: ServingConfig | None = None
        self.naming: NamingModel | None = None
        self.status: dict[str, Any] = {}
        self.admin_port = listen.admin_port
        self.public_port = listen.public_port
        self.dns: DnsServer | None = None
        self.proxy: ServiceConnectProxy | None = None
        self.public: PublicEndpoint | None = None
        self.health: HttpHealthChecker | None = None
        self.resolver: MeshResolver | None = None
        self.core: ProxyCore | None = None
        self.metadata = MetadataEndpoint(self._metadata_context)
        # One table for the proxy and DNS, kept across configurations and restarts.
        self.faults = FaultStore(self._faults_changed)
        self.config_notes: list[str] = []  # what the last configuration dropped
        self._faults_dirty = False
        self.serving = asyncio.Event()  # first configuration applied, listeners up
        self._stack = contextlib.AsyncExitStack()
        self._writer: asyncio.StreamWriter | None = None
        self._served_dirty = False
        self._started_health = False
        self._configuring = asyncio.Lock()
        self._asks: dict[int, asyncio.Future[dict[str, Any]]] = {}  # logs asked of the controller
        self._first_set = True  # the controller's first replica set is yet to come
        self._next_ask = 0
        # The mesh page (dashboard/): what it shows is observed here.
        self.dashboard = Dashboard(
            state=self.state,
            naming=lambda: self.naming,
            edges=lambda: self.core.metrics.edges if self.core else {},
            faults=self.faults.table.snapshot,
            ask_logs=self.ask_logs,
        )
        self.registry.subscribe(self.dashboard.replica_changed)
        self.registry.subscribe_clients(self._clients_changed)

    # -- what the controller sends ------------------------------------------------------

    async def configure(self, config: ServingConfig) -> None:
        """The first configuration starts every listener; later ones update them.

        The steps that can fail (listeners) come first, so a failure leaves
        the running configuration in charge.
        """
        async with self._configuring:  # one at a time, whichever link sent it
            await self._configure(config)
            if not self._started_health and self.health is not None:
                # The controller sent the replica set before this first
                # configuration: replicas that already ran are adopted as they
                # are (not probed out of rotation); new ones are probed.
                self._started_health = True
                await self.health.start()
                self._stack.push_async_callback(self.health.stop)

    async def _configure(self, config: ServingConfig) -> None:
        naming = NamingModel(config.spec, config.vips)
        if self.proxy is None:
            await self._start(config, naming)
        else:
            assert self.resolver is not None and self.public is not None
            assert self.health is not None
            await self.proxy.update(naming)
            self.resolver.naming = naming
            self.public.update(naming)
            self.health.update(naming)
        self.config, self.naming = config, naming
        declared = (d.fault for d in config.spec.environment.faults)
        self.config_notes = self.faults.configure(naming, declared)

    async def _start(self, config: ServingConfig, naming: NamingModel) -> None:
        """Every listener, or none: a failure stops what started, for a clean retry."""
        lst = self.listen
        core = ProxyCore(self.registry, config.proxy, faults=self.faults.table)
        host = self._host(lst.bind, config.address)
        proxy = ServiceConnectProxy(naming, self.registry, host, engine=core)
        public = PublicEndpoint(
            naming,
            self.registry,
            self._host(lst.public_host, config.address),
            lst.public_port,
            engine=core,
        )
        resolver = MeshResolver(naming, self.registry, config.address, faults=self.faults.table)
        dns = DnsServer(resolver, host, lst.dns_port)
        async with contextlib.AsyncExitStack() as started:
            for part in (dns, proxy, public):
                await part.start()
                started.push_async_callback(part.stop)
            admin = await self._start_admin(core, config.address)
            started.push_async_callback(admin.cleanup)
            await self.dashboard.start()  # stopped first: its streams end, then the server
            started.push_async_callback(self.dashboard.stop)
            core.balancer.on_eject = self.dashboard.ejected
            metadata = await self._start_metadata(host)
            started.push_async_callback(metadata.cleanup)
            self._stack.push_async_exit(started.pop_all())
        self.core, self.proxy, self.public, self.resolver, self.dns = (
            core,
            proxy,
            public,
            resolver,
            dns,
        )
        self.health = HttpHealthChecker(naming, self.registry)
        self.config, self.naming = config, naming
        if public.rules:
            self.public_port = public.bound
        log.info(
            "serving %s/%s: DNS %s:%d, Service Connect endpoints %s, admin port %d",
            config.project,
            config.spec.env,
            config.address,
            self.dns.port,
            ", ".join(f"{e.address}={e.vip} ({e.protocol})" for e in naming.sc_endpoints) or "none",
            self.admin_port,
        )
        self.serving.set()

    @staticmethod
    def _host(configured: str, address: str) -> str:
        """Its own address for a wildcard: the VIPs then answer nothing else.

        Bound to 0.0.0.0, DNS, admin and public ports would also answer on
        every endpoint address; ECS refuses a connection to an endpoint on any
        port but its own.
        """
        return address if configured == "0.0.0.0" and address else configured

    async def stop(self) -> None:
        await self._stack.aclose()

    # -- the link -----------------------------------------------------------------------

    async def handle_link(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One controller connection; a newer one replaces it (a restarted controller)."""
        if self._writer is not None:
            self._writer.close()
        self._writer = writer
        unsubscribe = self.registry.subscribe(lambda _b, _a: self._served_changed())
        log.info("controller connected")
        self.dashboard.changes.controller(True)
        try:
            await self._send_served()
            while True:
                message = await receive(reader)
                try:
                    await self._on_message(message, writer)
                except (KeyError, ValueError, TypeError) as exc:  # a malformed message: skip it
                    log.warning("ignoring a malformed %r message: %r", message.get("t"), exc)
        except (LinkClosed, ConnectionError) as exc:
            log.info("controller link closed (%s): serving the last replica set", exc)
        finally:
            unsubscribe()
            if self._writer is writer:
                self._writer = None
                self.dashboard.changes.controller(False)
                for fut in self._asks.values():
                    if not fut.done():
                        fut.set_result({"lines": [], "error": "the controller went away"})
                self._asks.clear()
            writer.close()

    async def _on_message(self, message: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        kind = message.get("t")
        if kind == "config":
            error: str | None = None
            try:
                await self.configure(ServingConfig.from_jsonable(message["config"]))
            except MeshlocalError as exc:
                error = exc.render()
            except (KeyError, ValueError, TypeError) as exc:
                error = f"bad configuration: {exc!r}"
            except OSError as exc:  # a listener that cannot bind
                error = f"the data plane cannot listen: {exc}"
            await send(
                writer,
                {
                    "t": "ack",
                    "id": message.get("id"),
                    "error": error,
                    "admin_port": self.admin_port,
                    "public_port": self.public_port if self.public and self.public.rules else None,
                    "notes": self.config_notes if error is None else [],
                },
            )
        elif kind == "faults":
            report = read_report(message, lambda note: log.warning("fault report: %s", note))
            if report is not None and not self.faults.restore(report):
                self._faults_changed()  # ours win: the (new) controller learns them
        elif kind == "replicas":
            replicas = [replica_from_json(r) for r in message.get("replicas") or []]
            # The first set this data plane gets (it is new): one event, not one per replica.
            changes = self.dashboard.changes
            first, self._first_set = self._first_set and not self.registry.all(), False
            changes.muted = first and len(replicas) > 1
            try:
                self.mirror.apply(replicas)
            finally:
                changes.muted = False
            if first and len(replicas) > 1:
                changes.taken_over(replicas)
        elif kind == "logs":
            ident = message.get("id")
            fut = self._asks.pop(ident, None) if isinstance(ident, int) else None
            if fut is not None and not fut.done():
                fut.set_result(message)
        elif kind == "clients":
            self.registry.set_clients(replica_from_json(r) for r in message.get("clients") or [])
        elif kind == "tasks":
            self.metadata.update(parse_records(message.get("tasks") or []))
        elif kind == "status":
            status = message.get("status")
            if isinstance(status, dict):
                self.status = status
                self.dashboard.status_changed(status)
            if message.get("id") is not None:  # the controller waits: a command's barrier
                await send(writer, {"t": "ack", "id": message.get("id"), "error": None})

    def _served_changed(self) -> None:
        if not self._served_dirty:
            self._served_dirty = True
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._send_served()))

    def _faults_changed(self) -> None:
        self.dashboard.faults_changed()
        if not self._faults_dirty:
            self._faults_dirty = True
            with contextlib.suppress(RuntimeError):  # no loop: a test's store
                asyncio.get_running_loop().call_soon(
                    lambda: asyncio.ensure_future(self._send_faults())
                )

    async def _send_faults(self) -> None:
        self._faults_dirty = False
        writer = self._writer
        if writer is None or not self.faults.loaded:
            return
        with contextlib.suppress(ConnectionError, RuntimeError, LinkClosed):
            await send(writer, self.faults.report().to_message())

    async def _send_served(self) -> None:
        self._served_dirty = False
        writer = self._writer
        if writer is None:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await send(writer, {"t": "served", "replicas": served_to_json(self.registry.all())})

    def _clients_changed(self) -> None:
        for client in self.registry.clients():
            self.dashboard.directory.remember(client)
        self.dashboard.changed()

    async def ask_logs(self, container_id: str, tail: int) -> dict[str, Any]:
        """A replica's last log lines, from the controller (it has the engine)."""
        writer = self._writer
        if writer is None:
            return {"lines": [], "error": "the controller is away: no logs until it is back"}
        self._next_ask += 1
        ident = self._next_ask
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._asks[ident] = fut
        try:
            await send(
                writer, {"t": "logs", "id": ident, "container_id": container_id, "tail": tail}
            )
            async with asyncio.timeout(LOGS_TIMEOUT_S):
                return await fut
        except (ConnectionError, RuntimeError, LinkClosed) as exc:
            return {"lines": [], "error": f"the controller did not answer: {exc}"}
        except TimeoutError:
            return {"lines": [], "error": f"no answer from the controller in {LOGS_TIMEOUT_S:g} s"}
        finally:
            self._asks.pop(ident, None)

    # -- task metadata endpoint ---------------------------------------------------------

    async def _start_metadata(self, host: str) -> web.AppRunner:
        runner = web.AppRunner(self.metadata.app(), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, self.listen.metadata_port).start()
        except BaseException:
            await runner.cleanup()
            raise
        return runner

    def _metadata_context(self) -> Context | None:
        config = self.config
        if config is None:
            return None
        spec = config.spec
        ports: dict[tuple[str, str], int] = {}
        for svc in spec.services:
            if svc.port is not None:
                ports[(svc.name, svc.name)] = svc.port
            for sc in svc.sidecars:
                if sc.port is not None:
                    ports[(svc.name, sc.name)] = sc.port
        return Context(
            app=spec.app,
            env=spec.env,
            region=spec.workspace.region,
            account=LOCAL_ACCOUNT_ID,
            subnet=config.subnet,
            gateway=config.gateway,
            dns=config.address,
            ports=ports,
            sizes={svc.name: (svc.cpu, svc.memory) for svc in spec.services},
        )

    # -- admin API ----------------------------------------------------------------------

    async def _start_admin(self, core: ProxyCore, address: str) -> web.AppRunner:
        dropped = CounterCollector(
            "meshlocal_dns_delayed_dropped",
            "Late answers of dns delay faults dropped: too many were waiting (the client retries).",
            lambda: self._fault_stats()["dns_delayed_dropped"],
        )
        app = admin_app(core.metrics, core.faults, collectors=(dropped,))
        app.middlewares.append(admin_guard(lambda: self.config.gateway if self.config else None))
        app.router.add_get(f"/{API_VERSION}/state", self._state)
        add_routes(app, self.faults, f"/{API_VERSION}")
        self.dashboard.add_routes(app, f"/{API_VERSION}")
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host(self.listen.admin_host, address), self.admin_port)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        server: Any = site._server
        self.admin_port = server.sockets[0].getsockname()[1]
        return runner

    def _fault_stats(self) -> dict[str, int]:
        """Late DNS answers dropped (dns delay faults): `/metrics` and `GET /v1/state`."""
        return {"dns_delayed_dropped": self.dns.dropped_delayed if self.dns else 0}

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True, "controller": self._writer is not None})

    def state(self) -> dict[str, Any]:
        """The controller's status, with what only the data plane knows filled in."""
        doc = dict(self.status)
        doc["dns_port"] = self.dns.port if self.dns else None
        doc.update(self._fault_stats())
        public = self.public
        doc["public_port"] = self.public_port if public and public.rules else None
        doc["public_rules"] = [[p, s] for p, s in public.rules] if public else []
        doc["controller_connected"] = self._writer is not None
        doc["faults"] = self.faults.table.snapshot()
        doc["faults_suppressed"] = sorted(self.faults.suppressed)  # back with the next `up`
        if self._writer is None:
            # Without its controller nothing converges, and this status may be old.
            doc["ready"] = False
        balancer = self.proxy.balancer if self.proxy else None
        services = {}
        for name, svc in (doc.get("services") or {}).items():
            svc = dict(svc)
            rows = []
            for row in svc.get("replicas") or []:
                row = dict(row)
                live = self.registry.get(str(row.get("container_id")))
                if live is not None:
                    row["health"] = live.health.value
                    row["draining"] = live.draining
                    row["in_rotation"] = live.in_rotation
                    row["ejected_by"] = balancer.ejected_for(live) if balancer else []
                else:
                    row["in_rotation"] = False
                    row["ejected_by"] = []
                rows.append(row)
            svc["replicas"] = rows
            if self._writer is None:
                svc["ready"] = False
            services[name] = svc
        doc["services"] = services
        return doc

    async def _state(self, _: web.Request) -> web.Response:
        return web.json_response(self.state())


# -- running it -----------------------------------------------------------------------


async def serve(
    listen: Listen,
    *,
    socket_path: str | None = None,
    link_fd: int | None = None,
) -> None:
    """The data plane's main: until SIGTERM, or (host mode) until its controller is gone."""
    plane = DataPlane(listen)
    stop = stop_on_signals()
    server: asyncio.AbstractServer | None = None
    try:
        if socket_path is not None:

            async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                sock = writer.get_extra_info("socket")
                # Only the controller (root) mounts the volume; anyone else is refused.
                if sock is None or peer_uid(sock) != 0:
                    writer.close()
                    return
                await plane.handle_link(reader, writer)

            with contextlib.suppress(FileNotFoundError):
                os.unlink(socket_path)  # left by the previous run of this container
            server = await asyncio.start_unix_server(accept, path=socket_path, limit=LINE_LIMIT)
            log.info("waiting for the controller on %s", socket_path)
        if link_fd is not None:
            sock = socket.socket(fileno=link_fd)
            reader, writer = await asyncio.open_connection(sock=sock, limit=LINE_LIMIT)

            async def single() -> None:
                await plane.handle_link(reader, writer)
                stop.set()  # host mode: its controller is its parent; without it, nothing

            link_task = asyncio.create_task(single())
            plane._stack.callback(link_task.cancel)
        await stop.wait()
    finally:
        if server is not None:
            server.close()
        await plane.stop()


def main(argv: list[str] | None = None) -> None:
    """`python -m meshlocal.serving`: the data plane's process.

    Not a CLI command: it imports neither the Docker SDK nor the CLI, so the
    process replicas talk to has no engine client even in memory (and half
    the footprint).
    """
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m meshlocal.serving")
    parser.add_argument("--listen", default="{}", help="where to listen, as JSON")
    parser.add_argument("--socket", default=None, help="container mode: the link socket")
    parser.add_argument("--link-fd", type=int, default=None, help="host mode: the link")
    parser.add_argument("--drop-privileges", action="store_true", help="become nobody first")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
    )
    listen = Listen(**json.loads(args.listen))
    runner: Callable[[Coroutine[Any, Any, None]], None] = asyncio.run
    with contextlib.suppress(ImportError):
        import uvloop

        runner = uvloop.run
    if args.drop_privileges:
        # Everything it runs is imported by now: nothing it reads later needs root.
        import encodings.idna  # noqa: F401  (imported lazily by name handling)

        from meshlocal.privileges import drop_to_nobody

        drop_to_nobody()
    socket_path = args.socket
    if socket_path is None and args.link_fd is None:
        socket_path = LINK_SOCKET
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(listen, socket_path=socket_path, link_fd=args.link_fd))


if __name__ == "__main__":
    main()
