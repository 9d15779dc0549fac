"""Helpers: real backends on 127.0.0.x, a real proxy, raw-socket clients."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from meshlocal.manifest.model import (
    Connect,
    Environment,
    EnvironmentSpec,
    Service,
    ServiceType,
    Workspace,
)
from meshlocal.naming import NamingModel
from meshlocal.proxy.app import ServiceConnectProxy
from meshlocal.proxy.settings import ProxySettings
from meshlocal.registry import Replica, ReplicaRegistry

GZIPPED = gzip.compress(b"compressed payload " * 100, mtime=0)


def service(
    name: str,
    port: int = 8080,
    *,
    alias: str | None = None,
    type: ServiceType = ServiceType.BACKEND_SERVICE,
    http_path: str | None = None,
    app_protocol: str | None = "http",
) -> Service:
    """A Service Connect server; HTTP mode unless told otherwise (these are HTTP tests)."""
    return Service(
        name=name,
        type=type,
        manifest_path=Path(f"/ws/copilot/{name}/manifest.yml"),
        port=port,
        target_port=port,
        http_path=http_path,
        connect=Connect(enabled=True, alias=alias),
        app_protocol=app_protocol,
    )


def naming(*services: Service, vips: dict[str, str] | None = None) -> NamingModel:
    ws = Workspace(Path("/ws"), "shop", {}, {s.name: s.manifest_path for s in services})
    return NamingModel(EnvironmentSpec(ws, Environment("test", None), tuple(services)), vips)


@dataclass
class Backend:
    """An aiohttp server standing in for one replica."""

    name: str
    host: str
    runner: web.AppRunner | None = None
    port: int = 0
    status: int = 200
    delay: float = 0.0
    hits: int = 0
    seen_headers: list[dict[str, str]] = field(default_factory=list)
    raw_headers: list[list[tuple[str, str]]] = field(default_factory=list)

    async def start(self, port: int = 0) -> Backend:
        app = web.Application(client_max_size=1 << 40)
        app.router.add_route("*", "/ws", self._ws)
        app.router.add_get("/big", self._big)
        app.router.add_get("/gzip", self._gzip)
        app.router.add_post("/upload", self._upload)
        app.router.add_post("/echo", self._echo)
        app.router.add_route("*", "/{tail:.*}", self._any)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, port)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def _record(self, request: web.Request) -> None:
        self.hits += 1
        self.seen_headers.append({k.lower(): v for k, v in request.headers.items()})
        self.raw_headers.append([(k.decode(), v.decode()) for k, v in request.raw_headers])

    async def _any(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        if self.delay:
            await asyncio.sleep(float(request.query.get("delay", self.delay)))
        elif "delay" in request.query:
            await asyncio.sleep(float(request.query["delay"]))
        return web.Response(
            status=self.status,
            text=self.name,
            headers={"X-Backend": self.name},
        )

    async def _big(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        size = int(request.query["n"])
        resp = web.StreamResponse()
        resp.content_length = size
        await resp.prepare(request)
        block = b"x" * 65536
        sent = 0
        while sent < size:
            part = block[: min(65536, size - sent)]
            await resp.write(part)
            sent += len(part)
        await resp.write_eof()
        return resp

    async def _gzip(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        return web.Response(
            body=GZIPPED, headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"}
        )

    async def _upload(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
        return web.json_response({"received": total, "backend": self.name})

    async def _echo(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        body = await request.read()
        return web.Response(body=body, headers={"X-Backend": self.name})

    async def _ws(self, request: web.Request) -> web.StreamResponse:
        self._record(request)
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(f"{self.name}:{msg.data}")
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        return ws


class Mesh:
    """A proxy for service `api` (and friends) over real backends."""

    def __init__(self, model: NamingModel, settings: ProxySettings, clock: Callable[[], float]):
        self.naming = model
        self.registry = ReplicaRegistry()
        self.settings = settings
        self.proxy = ServiceConnectProxy(model, self.registry, "127.0.0.2", settings, clock=clock)
        self.backends: dict[str, Backend] = {}
        self._next_ip = 11

    async def add(self, service_name: str = "api", index: int | None = None) -> Backend:
        existing = [r for r in self.registry.for_service(service_name)]
        index = index or len(existing) + 1
        name = f"{service_name}-{index}"
        backend = await Backend(name, f"127.0.0.{self._next_ip}").start()
        self._next_ip += 1
        self.backends[name] = backend
        self.registry.upsert(
            Replica(service_name, index, f"cid-{name}", backend.host, backend.port)
        )
        return backend

    def add_dead(self, service_name: str, index: int, port: int) -> None:
        """A replica whose address refuses connections."""
        self.registry.upsert(
            Replica(service_name, index, f"cid-{service_name}-{index}", "127.0.0.9", port)
        )

    def url(self, path: str = "/", endpoint_port: int = 8080) -> str:
        return f"http://127.0.0.2:{self.proxy.bound_port(endpoint_port)}{path}"

    async def close(self) -> None:
        await self.proxy.stop()
        for b in self.backends.values():
            await b.stop()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


MeshFactory = Callable[..., Awaitable[Mesh]]


async def raw_exchange(
    host: str, port: int, data: bytes, timeout: float = 5.0, *, half_close: bool = False
) -> bytes:
    """Send raw bytes (then EOF when `half_close`), read until the server closes."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        out = b""
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                out += chunk
        return out
    finally:
        writer.close()


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def body_json(response: bytes) -> object:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])


class RawBackend:
    """A byte-exact replica: answers each request with a canned response.

    It reads until `until` appears (the end of the request it expects) and
    records every byte it received, so tests can check what reached it.
    """

    def __init__(self, host: str, response: bytes, until: bytes = b"\r\n\r\n") -> None:
        self.host = host
        self.response = response
        self.until = until
        self.received = b""
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> RawBackend:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        pending = b""
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    return
                self.received += chunk
                pending += chunk
                while self.until in pending:
                    pending = pending.split(self.until, 1)[1]
                    writer.write(self.response)
                    await writer.drain()
        except ConnectionError:
            return
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


def register(mesh: Mesh, backend: RawBackend, index: int = 1, service_name: str = "api") -> None:
    mesh.registry.upsert(
        Replica(service_name, index, f"cid-raw-{index}", backend.host, backend.port)
    )
