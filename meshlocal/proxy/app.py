"""The Service Connect proxy, the public endpoint and the admin app.

`ServiceConnectProxy` listens on every client alias port of the naming
model and routes each request by its Host header to one replica of the
service whose endpoint matches. `PublicEndpoint` plays the ALB for Load
Balanced Web Services: one listener, rules by `http.path`. Both feed the
same `Forwarder`, so they share the data path, the pool and the metrics.

Only replicas in the registry are ever dialled: a Host outside the mesh
table gets 404 and an absolute-form target gets 400, so the proxy can't be
turned into an open proxy or an SSRF hop.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from meshlocal.errors import DataPlaneError, PortInUse
from meshlocal.manifest.model import ServiceType
from meshlocal.naming import NamingModel, normalize
from meshlocal.proxy.balancer import Balancer
from meshlocal.proxy.forward import Forwarder, Route, Router
from meshlocal.proxy.http1 import HttpError, RequestHead
from meshlocal.proxy.metrics import Metrics
from meshlocal.proxy.settings import ProxySettings
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


def split_host(host: bytes) -> tuple[str, int | None]:
    """`api:8080` -> ("api", 8080); `api` -> ("api", None)."""
    text = host.decode("latin-1").strip()
    name, sep, port = text.rpartition(":")
    if sep and name and ":" not in name and port.isdigit() and len(port) <= 5:
        return name, int(port)
    return text, None


class Engine:
    """What the listeners share: metrics, balancer, upstream pool, forwarder."""

    def __init__(
        self,
        registry: ReplicaRegistry,
        settings: ProxySettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.registry = registry
        self.settings = settings
        self.metrics = Metrics()
        self.balancer = Balancer(
            registry,
            consecutive_errors=settings.consecutive_errors,
            base_ejection_s=settings.base_ejection_s,
            clock=clock,
        )
        self.pool = UpstreamPool(settings, self.metrics)
        self.forwarder = Forwarder(self.balancer, self.pool, self.metrics, settings)
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
        self.balancer.close()

    def _on_change(self, before: Replica | None, after: Replica | None) -> None:
        # Draining or gone: idle keep-alive connections would keep it busy.
        if before is not None and (after is None or after.draining):
            self.pool.drop_replica(before.container_id)

    async def _sweep(self) -> None:
        # Request timeouts are enforced here: precise to a tenth of their value (max 1 s).
        s = self.settings
        period = max(0.02, min(1.0, s.request_timeout_s / 10, s.idle_timeout_s / 4))
        while True:
            await asyncio.sleep(period)
            self.pool.sweep()
            self.forwarder.sweep(time.monotonic())

    async def wait_drained(self, container_id: str, timeout_s: float = 30.0) -> bool:
        """After `registry.set_draining`: wait for the replica's in-flight requests to end."""
        deadline = time.monotonic() + timeout_s
        while self.balancer.in_flight(container_id) > 0:
            if time.monotonic() >= deadline:
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
        self.servers: dict[int, asyncio.Server] = {}  # endpoint port -> server
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
        loop = asyncio.get_running_loop()
        factory = self.engine.forwarder.factory(router, endpoint_port, self.route_label)
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
        self.servers[endpoint_port] = server

    def bound_port(self, endpoint_port: int) -> int:
        """The port actually bound for an endpoint port (resolves port 0)."""
        sock = self.servers[endpoint_port].sockets[0]
        port: int = sock.getsockname()[1]
        return port

    async def _close(self) -> None:
        for server in self.servers.values():
            server.close()
        for conn in list(self.engine.forwarder.connections):
            if conn.endpoint_port in self.servers and conn.label == self.route_label:
                conn.abort()
        for server in self.servers.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2.0)
        self.servers.clear()


class ServiceConnectProxy(_Listeners):
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
        self._routes: dict[tuple[bytes, int], Route] = {}  # (Host, port) -> route; static

    @property
    def metrics(self) -> Metrics:
        return self.engine.metrics

    @property
    def balancer(self) -> Balancer:
        return self.engine.balancer

    def route(self, req: RequestHead, endpoint_port: int) -> Route:
        host = req.host
        if host is None:
            raise HttpError(400, "missing Host header")
        key = (host, endpoint_port)
        hit = self._routes.get(key)
        if hit is not None:
            return hit
        route = self._route(host, endpoint_port)
        if len(self._routes) >= 4096:  # hosts come from clients: keep the cache bounded
            self._routes.clear()
        self._routes[key] = route
        return route

    def _route(self, host: bytes, endpoint_port: int) -> Route:
        name, port = split_host(host)
        ep = self.naming.endpoint_for(name, endpoint_port)
        if ep is None or (
            port is not None
            and port not in (endpoint_port, self.settings.listen_port(endpoint_port))
        ):
            raise HttpError(404, self._not_found(name, port or endpoint_port))
        return Route(ep.service, SC_ROUTE)

    def _not_found(self, name: str, port: int) -> str:
        lines = [f"no Service Connect endpoint {normalize(name)}:{port} in this mesh."]
        lines.append("Endpoints that exist:")
        for ep in sorted(self.naming.sc_endpoints, key=lambda e: (e.name, e.port)):
            lines.append(f"  {ep.url}  -> service {ep.service}")
        if not self.naming.sc_endpoints:
            lines.append("  (none: no service enables network.connect with a port)")
        return "\n".join(lines)

    async def _bind(self) -> None:
        for endpoint_port in sorted(self.naming.sc_ports):
            await self._listen(
                self.host, endpoint_port, self.settings.listen_port(endpoint_port), self.route
            )

    async def update(self, naming: NamingModel) -> None:
        """Hot reconfiguration: routes change at once, listeners follow the endpoint ports."""
        self.naming = naming
        self._routes.clear()  # cached (Host, port) -> route answers came from the old model
        if not self._started:
            return
        wanted = set(naming.sc_ports)
        for port in sorted(set(self.servers) - wanted):
            self.servers.pop(port).close()
        for port in sorted(wanted - set(self.servers)):
            await self._listen(self.host, port, self.settings.listen_port(port), self.route)

    async def drain(self, container_id: str, timeout_s: float = 30.0) -> bool:
        """Scale-in: mark draining, wait for in-flight requests; True when they all ended."""
        self.registry.set_draining(container_id, True)
        return await self.engine.wait_drained(container_id, timeout_s)


def public_rules(naming: NamingModel) -> list[tuple[str, str]]:
    """(path prefix, service) of every Load Balanced Web Service, longest prefix first."""
    rules: list[tuple[str, str]] = []
    for svc in naming.services.values():
        if svc.type is ServiceType.LOAD_BALANCED_WEB_SERVICE and svc.http_path is not None:
            if svc.target_port is None:
                continue
            rules.append(("/" + svc.http_path.strip("/"), svc.name))
    # Longest prefix first; "/" is the catch-all.
    return sorted(rules, key=lambda r: len(r[0]), reverse=True)


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


def admin_app(metrics: Metrics) -> web.Application:
    """`/metrics` (Prometheus text) and `/stats` (JSON snapshot)."""

    async def prometheus(_: web.Request) -> web.Response:
        return web.Response(
            text=metrics.prometheus(),
            content_type="text/plain",
            charset="utf-8",
            headers={"X-Content-Type-Options": "nosniff"},
        )

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(metrics.snapshot())

    app = web.Application()
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
