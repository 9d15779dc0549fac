"""The Service Connect proxy, the public endpoint and the admin app.

`ServiceConnectProxy` listens on every Service Connect endpoint's own
address and port and sends what arrives to a replica of that endpoint's
service, per connection (TCP), per request (HTTP/1) or per stream (HTTP/2,
gRPC). `PublicEndpoint` plays the ALB for Load Balanced Web Services: one
listener, rules by `http.path`. They share one `Engine`: balancer, pools
and metrics.

Only replicas in the registry are ever dialled: the destination is fixed by
the listener, and an absolute-form target gets 400, so the proxy can't be
turned into an open proxy or an SSRF hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.registry import Collector

from meshlocal.errors import DataPlaneError, PortInUse
from meshlocal.faults import FaultTable
from meshlocal.naming import AppProtocol, NamingModel, ServiceConnectEndpoint, public_rules
from meshlocal.proxy.balancer import Balancer
from meshlocal.proxy.forward import Forwarder, Route, Router
from meshlocal.proxy.http1 import HttpError, RequestHead
from meshlocal.proxy.http2 import H2Proxy
from meshlocal.proxy.metrics import Metrics
from meshlocal.proxy.promexport import exposition, new_registry
from meshlocal.proxy.settings import ProxySettings
from meshlocal.proxy.tcp import TcpProxy
from meshlocal.proxy.upstream import UpstreamPool
from meshlocal.registry import Replica, ReplicaRegistry

SC_ROUTE = b"service-connect"
PUBLIC_ROUTE = b"public-endpoint"


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop when the `speed` extra is installed, else the default loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    return loop


class Engine:
    """What the listeners share: metrics, balancer, upstream pool, forwarder."""

    def __init__(
        self,
        registry: ReplicaRegistry,
        settings: ProxySettings,
        clock: Callable[[], float] = time.monotonic,
        faults: FaultTable | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = Metrics()
        # Shared with the DNS server; the data paths test `faults.sc` for truth only.
        self.faults = faults if faults is not None else FaultTable()
        self.balancer = Balancer(
            registry,
            consecutive_errors=settings.consecutive_errors,
            base_ejection_s=settings.base_ejection_s,
            clock=clock,
        )
        self.pool = UpstreamPool(settings, self.metrics)
        self.forwarder = Forwarder(self.balancer, self.pool, self.metrics, settings, self.faults)
        self.tcp = TcpProxy(self.balancer, self.metrics, settings, self.faults)
        self.h2 = H2Proxy(self.balancer, self.metrics, settings, self.faults)
        # The connection-holding data paths beside the HTTP/1 forwarder.
        self.relays: tuple[TcpProxy | H2Proxy, ...] = (self.tcp, self.h2)
        self._users = 0
        self._unsubscribe: Callable[[], None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    def acquire(self) -> None:
        self._users += 1
        if self._users == 1:
            self._unsubscribe = self.registry.subscribe(self._on_change)
            self._sweeper = asyncio.ensure_future(self._sweep())

    async def release(self) -> None:
        self._users -= 1
        if self._users > 0:
            return
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        self.pool.close()
        for relay in self.relays:
            relay.close_all()
        self.balancer.close()

    def _on_change(self, before: Replica | None, after: Replica | None) -> None:
        # Draining or gone: idle keep-alive connections would keep it busy.
        if before is not None and (after is None or after.draining):
            self.pool.drop_replica(before.container_id)
        if before is not None and after is None:
            # Gone: connections pinned to it can't be served any more.
            for relay in self.relays:
                relay.close_replica(before.container_id)

    async def _sweep(self) -> None:
        # Request timeouts are enforced here: precise to a tenth of their value (max 1 s).
        s = self.settings
        period = max(0.02, min(1.0, s.request_timeout_s / 10, s.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            self.pool.sweep()
            self.forwarder.sweep(now)
            for relay in self.relays:
                relay.sweep(now)

    async def wait_drained(self, container_id: str, timeout_s: float = 30.0) -> bool:
        """After `registry.set_draining`: wait for the replica's in-flight requests to end."""
        deadline = time.monotonic() + timeout_s
        while self.balancer.in_flight(container_id) > 0:
            if time.monotonic() >= deadline:
                # Long-lived TCP and HTTP/2 connections end with the drain window.
                for relay in self.relays:
                    relay.close_replica(container_id)
                return False
            await asyncio.sleep(0.02)
        self.pool.drop_replica(container_id)
        return True


class _Listeners:
    """Start/stop a set of asyncio servers feeding one engine.

    The Service Connect proxy and the public endpoint share the engine (pool,
    balancer, metrics); they differ only in what they listen on and route by.
    """

    def __init__(
        self,
        naming: NamingModel,
        registry: ReplicaRegistry,
        host: str,
        settings: ProxySettings | None,
        engine: Engine | None,
        clock: Callable[[], float],
        route_label: bytes,
    ) -> None:
        self.settings = settings or (engine.settings if engine else ProxySettings())
        self.engine = engine or Engine(registry, self.settings, clock)
        self.naming = naming
        self.registry = registry
        self.host = host
        self.route_label = route_label
        self.servers: dict[int | str, asyncio.Server] = {}  # endpoint name (or port) -> server
        self._started = False

    async def _bind(self) -> None:
        raise NotImplementedError

    async def start(self) -> None:
        if self._started:
            return
        self.engine.acquire()
        self._started = True
        try:
            await self._bind()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        await self._close()
        await self.engine.release()

    async def _listen(self, host: str, endpoint_port: int, port: int, router: Router) -> None:
        factory = self.engine.forwarder.factory(router, endpoint_port, self.route_label)
        self.servers[endpoint_port] = await self._serve(host, port, factory)

    async def _serve(
        self, host: str, port: int, factory: Callable[[], asyncio.Protocol]
    ) -> asyncio.Server:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(factory, host, port, reuse_address=True, backlog=1024)
        except PermissionError as exc:
            raise DataPlaneError(
                f"cannot listen on {host}:{port}: {exc.strerror}",
                hint="ports below 1024 need root or CAP_NET_BIND_SERVICE; map the port "
                "(ProxySettings.port_map) or run with the capability",
            ) from exc
        except OSError as exc:
            raise PortInUse(
                f"cannot listen on {host}:{port}: {exc.strerror}",
                hint="stop whatever holds that port, or choose another one",
            ) from exc
        return server

    def bound_port(self, endpoint_port: int) -> int:
        """The port actually bound for an endpoint port (resolves port 0)."""
        sock = self.servers[endpoint_port].sockets[0]
        port: int = sock.getsockname()[1]
        return port

    async def _close(self) -> None:
        for server in self.servers.values():
            server.close()
        for conn in list(self.engine.forwarder.connections):
            if conn.label == self.route_label:
                conn.abort()
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self.servers.clear()


class ServiceConnectProxy(_Listeners):
    """One listener per Service Connect endpoint, on the endpoint's own address.

    ECS gives every endpoint its own address in the client task, so the
    proxy knows the target from the address and port dialled, never from a
    Host header: any protocol works, and a client that sends another Host
    still reaches the service it dialled. The endpoint's protocol picks the
    data path: TCP (per connection), HTTP/1 (per request), HTTP/2 or gRPC
    (per stream). Without a VIP (tests) an endpoint listens on `host`.
    """

    def __init__(
        self,
        naming: NamingModel,
        registry: ReplicaRegistry,
        host: str = "127.0.0.1",
        settings: ProxySettings | None = None,
        *,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(naming, registry, host, settings, engine, clock, SC_ROUTE)
        self.endpoints: dict[str, ServiceConnectEndpoint] = {}  # name -> what is bound
        self._routers: dict[str, Router] = {}  # HTTP endpoints: name -> its fixed router

    @property
    def metrics(self) -> Metrics:
        return self.engine.metrics

    @property
    def balancer(self) -> Balancer:
        return self.engine.balancer

    def _factory(self, ep: ServiceConnectEndpoint) -> Callable[[], asyncio.Protocol]:
        core = self.engine
        if ep.protocol is AppProtocol.TCP:
            return core.tcp.factory(ep.service, ep.name)
        if ep.protocol is AppProtocol.HTTP:
            route = Route(ep.service, SC_ROUTE)

            def router(req: RequestHead, _port: int) -> Route:
                return route

            self._routers[ep.name] = router
            return core.forwarder.factory(router, ep.port, SC_ROUTE)
        return core.h2.factory(ep.service, grpc=ep.protocol is AppProtocol.GRPC, endpoint=ep.name)

    async def _open(self, ep: ServiceConnectEndpoint) -> None:
        host = ep.vip or self.host
        server = await self._serve(host, self.settings.listen_port(ep.port), self._factory(ep))
        self.servers[ep.name] = server
        self.endpoints[ep.name] = ep

    def _shut(self, name: str) -> None:
        server = self.servers.pop(name, None)
        ep = self.endpoints.pop(name, None)
        if server is not None:
            server.close()
        router = self._routers.pop(name, None)
        # Clients of a removed (or changed) endpoint must not go on reaching its
        # old service over a kept-alive or long-lived connection.
        if ep is not None and router is not None:
            for conn in list(self.engine.forwarder.connections):
                if conn.router is router:
                    conn.abort()
        for relay in self.engine.relays:
            relay.close_endpoint(name)

    async def _bind(self) -> None:
        for ep in self.naming.sc_endpoints:
            await self._open(ep)

    def bound(self, name: str) -> tuple[str, int]:
        """(address, port) an endpoint listens on (resolves port 0)."""
        sock = self.servers[name].sockets[0]
        host, port = sock.getsockname()[:2]
        return str(host), int(port)

    def bound_port(self, endpoint_port: int) -> int:
        """The port of the first endpoint on `endpoint_port` (tests with one endpoint)."""
        for ep in self.endpoints.values():
            if ep.port == endpoint_port:
                return self.bound(ep.name)[1]
        raise KeyError(endpoint_port)

    async def update(self, naming: NamingModel) -> None:
        """Hot reconfiguration: listeners follow the endpoints (address, port, protocol)."""
        self.naming = naming
        if not self._started:
            return
        wanted = {ep.name: ep for ep in naming.sc_endpoints}
        for name, ep in list(self.endpoints.items()):
            if wanted.get(name) != ep:
                self._shut(name)
        for name, ep in wanted.items():
            if name not in self.servers:
                await self._open(ep)

    async def _close(self) -> None:
        for name in list(self.endpoints):
            self._shut(name)
        await super()._close()

    async def drain(self, container_id: str, timeout_s: float = 30.0) -> bool:
        """Scale-in: mark draining, wait for in-flight requests; True when they all ended."""
        self.registry.set_draining(container_id, True)
        return await self.engine.wait_drained(container_id, timeout_s)


class PublicEndpoint(_Listeners):
    """The ALB of Load Balanced Web Services: longest `http.path` prefix wins."""

    def __init__(
        self,
        naming: NamingModel,
        registry: ReplicaRegistry,
        host: str = "127.0.0.1",
        port: int = 8080,
        settings: ProxySettings | None = None,
        *,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(naming, registry, host, settings, engine, clock, PUBLIC_ROUTE)
        self.port = port
        self.rules = public_rules(naming)

    def update(self, naming: NamingModel) -> None:
        """Hot reconfiguration: the listener rules of a changed workspace."""
        self.naming = naming
        self.rules = public_rules(naming)

    def route(self, req: RequestHead, endpoint_port: int) -> Route:
        path = req.target.split(b"?", 1)[0].decode("latin-1")
        for prefix, service in self.rules:
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return Route(service, PUBLIC_ROUTE)
        listing = "\n".join(f"  {p} -> service {s}" for p, s in self.rules) or "  (none)"
        raise HttpError(404, f"no listener rule matches path {path}.\nRules:\n{listing}")

    @property
    def bound(self) -> int:
        return self.bound_port(self.port)

    async def _bind(self) -> None:
        await self._listen(self.host, self.port, self.port, self.route)


# -- admin ---------------------------------------------------------------

# The registry `/metrics` reads (tests look at it).
METRICS_REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)


def admin_app(
    metrics: Metrics,
    faults: FaultTable | None = None,
    collectors: Iterable[Collector] = (),
) -> web.Application:
    """`/metrics` (Prometheus text or OpenMetrics, promexport.py) and `/stats` (JSON snapshot).

    `/metrics` reads a registry of the app's own: the process's metrics, the
    services' (`metrics`), the faults' counters and any `collectors` given.
    """
    registry = new_registry(metrics, faults, collectors)

    async def prometheus(request: web.Request) -> web.Response:
        body, content_type = exposition(registry, request.headers.get("Accept"))
        return web.Response(
            body=body,
            headers={"Content-Type": content_type, "X-Content-Type-Options": "nosniff"},
        )

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(metrics.snapshot())

    app = web.Application()
    app[METRICS_REGISTRY] = registry
    app.router.add_get("/metrics", prometheus)
    app.router.add_get("/stats", stats)
    return app


class AdminServer:
    """Serves `admin_app`, on loopback unless told otherwise."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._runner = web.AppRunner(admin_app(metrics), access_log=None)
        self._site: web.TCPSite | None = None

    async def start(self) -> None:
        await self._runner.setup()
        self._site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await self._site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise PortInUse(f"admin endpoint cannot listen on {self.host}:{self.port}") from exc
        server: Any = self._site._server
        self.port = server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def stop(self) -> None:
        await self._runner.cleanup()
