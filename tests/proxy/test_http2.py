"""The http2 and grpc modes: real gRPC and h2c replicas on 127.0.0.x behind the proxy."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import socket
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    DataReceived,
    RequestReceived,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError
from h2.settings import SettingCodes, Settings

from meshlocal.proxy import h2util
from meshlocal.proxy.balancer import Balancer
from meshlocal.proxy.http2 import H2Proxy
from meshlocal.proxy.metrics import Metrics
from meshlocal.proxy.promexport import new_registry
from meshlocal.proxy.settings import ProxySettings
from meshlocal.registry import Replica, ReplicaRegistry

PROXY_HOST = "127.0.0.5"
GRPC_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]


# -- gRPC replicas (grpcio, bytes in and out, no protoc) -------------------------


class GrpcReplica:
    """A grpcio server whose methods answer with the replica's name."""

    def __init__(self, name: str, host: str) -> None:
        self.name = name
        self.host = host
        self.port = 0
        self.hits = 0
        self.release = threading.Event()  # lets "Slow" calls finish
        self.server: Any = None

    def _who(self, request: bytes, context: Any) -> bytes:
        self.hits += 1
        if request == b"not-found":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        if request == b"internal":
            context.abort(grpc.StatusCode.INTERNAL, "broken")
        if request.startswith(b"sleep:"):
            time.sleep(float(request[6:]))
        return self.name.encode()

    def _count(self, request: bytes, context: Any) -> Iterator[bytes]:
        self.hits += 1
        for i in range(int(request)):
            yield f"{self.name}:{i}".encode()

    def _slow(self, request: bytes, context: Any) -> Iterator[bytes]:
        self.hits += 1
        yield b"first"
        self.release.wait(10)
        yield b"second"

    def _chat(self, requests: Iterator[bytes], context: Any) -> Iterator[bytes]:
        self.hits += 1
        for msg in requests:
            yield self.name.encode() + b":" + msg

    def start(self) -> GrpcReplica:
        handler = grpc.method_handlers_generic_handler(
            "test.Echo",
            {
                "Who": grpc.unary_unary_rpc_method_handler(self._who),
                "Count": grpc.unary_stream_rpc_method_handler(self._count),
                "Slow": grpc.unary_stream_rpc_method_handler(self._slow),
                "Chat": grpc.stream_stream_rpc_method_handler(self._chat),
            },
        )
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8), options=GRPC_OPTIONS)
        self.server.add_generic_rpc_handlers((handler,))
        self.port = self.server.add_insecure_port(f"{self.host}:0")
        self.server.start()
        return self

    def stop(self, grace: float | None = 0) -> Any:
        self.release.set()
        return self.server.stop(grace)


# -- h2c replicas (h2, sans-I/O) ----------------------------------------------------


class H2Replica:
    """An h2c server: GET -> its name; POST /upload -> "<length> <sha256>"; GET /big?n=N.

    GET /trailers answers with trailers. `stall`: never acknowledges request
    bodies (its windows stay shut); `delay`: seconds before each answer;
    `max_streams`: its SETTINGS_MAX_CONCURRENT_STREAMS.
    """

    def __init__(
        self,
        name: str,
        host: str,
        *,
        stall: bool = False,
        delay: float = 0.0,
        max_streams: int = 100,
    ) -> None:
        self.name = name
        self.host = host
        self.stall = stall
        self.delay = delay
        self.max_streams = max_streams
        self.resets = 0
        self.trailers: list[dict[bytes, bytes]] = []
        self.port = 0
        self.hits = 0
        self.connections = 0
        self.received = 0
        self.seen: list[dict[bytes, bytes]] = []
        self.server: asyncio.Server | None = None
        self.transports: set[asyncio.Transport] = set()

    async def start(self) -> H2Replica:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _H2ReplicaConn(self), self.host, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            for t in list(self.transports):
                t.abort()
            await self.server.wait_closed()


class _H2ReplicaConn(asyncio.Protocol):
    def __init__(self, replica: H2Replica) -> None:
        self.replica = replica
        self.conn = H2Connection(H2Configuration(client_side=False, header_encoding=None))
        self.conn.local_settings = Settings(
            client=False, initial_values={SettingCodes.MAX_CONCURRENT_STREAMS: replica.max_streams}
        )
        self.requests: dict[int, tuple[dict[bytes, bytes], bytearray]] = {}
        self.out: dict[int, memoryview] = {}
        self.trailing: dict[int, list[tuple[bytes, bytes]]] = {}
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.replica.connections += 1
        self.replica.transports.add(transport)
        self.conn.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.replica.transports.discard(self.transport)

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self._flush()
            assert self.transport is not None
            self.transport.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                headers = dict(event.headers)
                self.requests[event.stream_id] = (headers, bytearray())
                self.replica.hits += 1
                self.replica.seen.append(headers)
            elif isinstance(event, DataReceived):
                self.requests[event.stream_id][1].extend(event.data)
                self.replica.received += len(event.data)
                if not self.replica.stall:
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
            elif isinstance(event, TrailersReceived):
                self.replica.trailers.append(dict(event.headers))
            elif isinstance(event, StreamEnded):
                if self.replica.delay:
                    loop = asyncio.get_running_loop()
                    loop.call_later(self.replica.delay, self._respond, event.stream_id)
                else:
                    self._respond(event.stream_id)
            elif isinstance(event, WindowUpdated):
                self._pump()
            elif isinstance(event, StreamReset):
                self.replica.resets += 1
                self.out.pop(event.stream_id, None)
                self.requests.pop(event.stream_id, None)
        self._flush()

    def _respond(self, sid: int) -> None:
        if sid not in self.requests:
            return  # reset meanwhile
        headers, body = self.requests.pop(sid)
        path = headers[b":path"]
        if path == b"/upload":
            out = b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
        elif path.startswith(b"/big?n="):
            out = b"x" * int(path[7:])
        else:
            out = self.replica.name.encode()
        self.conn.send_headers(
            sid,
            [(b":status", b"200"), (b"content-length", b"%d" % len(out)), (b"x-backend", b"1")],
        )
        if path == b"/trailers":
            self.trailing[sid] = [
                (b"x-checksum", b"abc"),
                (b"x-replica", self.replica.name.encode()),
            ]
        self.out[sid] = memoryview(out)
        self._pump()

    def _pump(self) -> None:
        for sid, view in list(self.out.items()):
            while view:
                room = min(self.conn.local_flow_control_window(sid), 16384)
                if room <= 0:
                    break
                part = view[:room]
                last = len(part) == len(view) and sid not in self.trailing
                self.conn.send_data(sid, part.tobytes(), end_stream=last)
                view = view[room:]
            if view:
                self.out[sid] = view
                continue
            del self.out[sid]
            if sid in self.trailing:
                self.conn.send_headers(sid, self.trailing.pop(sid), end_stream=True)
        self._flush()


# -- an h2c client that can bind its source address ----------------------------------


class Response:
    def __init__(self) -> None:
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.body = bytearray()
        self.trailers: dict[bytes, bytes] = {}
        self.reset: int | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class H2Client:
    def __init__(self) -> None:
        self.conn = H2Connection(H2Configuration(client_side=True, header_encoding=None))
        self.streams: dict[int, Response] = {}
        self.window = asyncio.Event()
        self.sent = 0
        self.task: asyncio.Task[None] | None = None

    async def connect(self, host: str, port: int, source: str | None = None) -> H2Client:
        self.reader, self.writer = await asyncio.open_connection(
            host, port, local_addr=(source, 0) if source else None
        )
        self.conn.initiate_connection()
        self._flush()
        self.task = asyncio.create_task(self._read())
        return self

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    async def _read(self) -> None:
        while data := await self.reader.read(65536):
            for event in self.conn.receive_data(data):
                r = self.streams.get(getattr(event, "stream_id", 0) or 0)
                if isinstance(event, WindowUpdated):
                    self.window.set()
                elif r is None:
                    continue
                elif isinstance(event, ResponseReceived):
                    r.status = int(dict(event.headers)[b":status"])
                    r.headers = dict(event.headers)
                elif isinstance(event, DataReceived):
                    r.body.extend(event.data)
                    self.conn.acknowledge_received_data(
                        event.flow_controlled_length, event.stream_id
                    )
                elif isinstance(event, TrailersReceived):
                    r.trailers = dict(event.headers)
                elif isinstance(event, StreamEnded | StreamReset):
                    if isinstance(event, StreamReset):
                        r.reset = event.error_code
                    if not r.done.done():
                        r.done.set_result(None)
            self._flush()
        for r in self.streams.values():
            if not r.done.done():
                r.done.set_exception(ConnectionError("connection closed"))

    def start(self, method: str, path: str, *, end: bool = True) -> tuple[int, Response]:
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "http"), (":authority", "api"), (":path", path)]
        self.conn.send_headers(sid, headers, end_stream=end)
        self._flush()
        self.streams[sid] = r = Response()
        return sid, r

    async def send_body(self, sid: int, body: bytes, *, end: bool = True) -> None:
        view = memoryview(body)
        while view:
            room = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if room <= 0:
                self.window.clear()
                await self.window.wait()
                continue
            part = view[:room]
            self.conn.send_data(sid, part.tobytes(), end_stream=end and len(part) == len(view))
            self.sent += len(part)
            view = view[room:]
            self._flush()
            await self.writer.drain()

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        trailers: list[tuple[str, str]] | None = None,
    ) -> Response:
        sid, r = self.start(method, path, end=not body and not trailers)
        if body:
            await self.send_body(sid, body, end=not trailers)
        if trailers:
            self.conn.send_headers(sid, trailers, end_stream=True)
            self._flush()
        await asyncio.wait_for(r.done, 10)
        return r

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        self.writer.close()


# -- the proxy under test ------------------------------------------------------------


class Harness:
    def __init__(self, settings: ProxySettings) -> None:
        self.registry = ReplicaRegistry()
        self.settings = settings
        self.balancer = Balancer(
            self.registry,
            consecutive_errors=settings.consecutive_errors,
            base_ejection_s=settings.base_ejection_s,
        )
        self.metrics = Metrics()
        self.proxy = H2Proxy(self.balancer, self.metrics, settings)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.cleanups: list[Callable[[], Any]] = []

    async def start(self, *, grpc: bool) -> Harness:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.proxy.factory("api", grpc=grpc), PROXY_HOST, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._sweeper = asyncio.create_task(self._sweep())
        return self

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(0.05)
            self.proxy.sweep(time.monotonic())

    def add(self, index: int, host: str, port: int) -> Replica:
        replica = Replica("api", index, f"cid-api-{index}", host, port)
        self.registry.upsert(replica)
        return replica

    def target(self) -> str:
        return f"{PROXY_HOST}:{self.port}"

    def snap(self) -> dict[str, Any]:
        return self.metrics.snapshot()["api"]

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.proxy.close_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for fn in reversed(self.cleanups):
            result = fn()
            if asyncio.iscoroutine(result):
                await result
        self.balancer.close()


@pytest.fixture
async def harness() -> AsyncIterator[Callable[..., Any]]:
    made: list[Harness] = []

    async def make(*, grpc: bool, **settings: Any) -> Harness:
        h = await Harness(ProxySettings(**settings)).start(grpc=grpc)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.close()


async def grpc_replicas(h: Harness, n: int) -> list[GrpcReplica]:
    replicas = []
    for i in range(1, n + 1):
        r = await asyncio.to_thread(GrpcReplica(f"api-{i}", f"127.0.0.{10 + i}").start)
        h.cleanups.append(lambda r=r: asyncio.to_thread(lambda: r.stop().wait()))
        h.add(i, r.host, r.port)
        replicas.append(r)
    return replicas


async def h2_replicas(h: Harness, n: int, **kw: Any) -> list[H2Replica]:
    replicas = []
    for i in range(1, n + 1):
        r = await H2Replica(f"api-{i}", f"127.0.0.{20 + i}", **kw).start()
        h.cleanups.append(r.stop)
        h.add(i, r.host, r.port)
        replicas.append(r)
    return replicas


def channel(h: Harness) -> Any:
    return grpc.insecure_channel(h.target(), options=GRPC_OPTIONS)


def source_ip(h: Harness) -> str:
    """The address the kernel gives a client of the proxy that binds none."""
    with socket.create_connection((PROXY_HOST, h.port)) as s:
        ip: str = s.getsockname()[0]
    return ip


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.9", 0))
        port: int = s.getsockname()[1]
    return port


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# -- gRPC ------------------------------------------------------------------------------


async def test_grpc_unary_calls_on_one_channel_spread_round_robin(harness: Any) -> None:
    h = await harness(grpc=True)
    await grpc_replicas(h, 3)

    def calls() -> list[bytes]:
        with channel(h) as ch:
            who = ch.unary_unary("/test.Echo/Who")
            return [who(b"hi", timeout=5) for _ in range(30)]

    answers = await asyncio.to_thread(calls)
    assert Counter(answers) == {b"api-1": 10, b"api-2": 10, b"api-3": 10}
    assert answers[:6] == [b"api-1", b"api-2", b"api-3"] * 2  # strict rotation
    snap = h.snap()
    assert snap["RequestCount"] == 30
    assert snap["HTTPCode_Target_2XX_Count"] == 30
    assert snap["GrpcRequestCount"] == 30
    assert snap["GrpcStatusCount"] == {"0": 30}
    assert snap["NewConnectionCount"] == 3  # one multiplexed connection per replica
    assert snap["ActiveConnectionCount"] == 3
    assert snap["ProcessedBytes"] > 30 * 10
    assert all(h.balancer.in_flight(f"cid-api-{i}") == 0 for i in (1, 2, 3))


async def test_grpc_status_reaches_client_and_metrics(harness: Any) -> None:
    h = await harness(grpc=True)
    await grpc_replicas(h, 1)

    def call() -> grpc.RpcError:
        with channel(h) as ch, pytest.raises(grpc.RpcError) as info:
            ch.unary_unary("/test.Echo/Who")(b"not-found", timeout=5)
        return info.value

    err = await asyncio.to_thread(call)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert err.details() == "no such thing"
    snap = h.snap()
    assert snap["GrpcStatusCount"] == {"5": 1}
    assert snap["RequestCount"] == 1
    assert snap["HTTPCode_Target_2XX_Count"] == 1  # gRPC errors travel in HTTP 200
    exported = new_registry(h.metrics)
    assert exported.get_sample_value("GrpcStatusCount_total", {"service": "api", "code": "5"}) == 1
    assert exported.get_sample_value("GrpcRequestCount_total", {"service": "api"}) == 1


async def test_grpc_errors_count_for_outlier_detection_as_envoy_maps_them(harness: Any) -> None:
    """INTERNAL (-> 500) ejects after 5 in a row; NOT_FOUND (-> 404) never does."""
    h = await harness(grpc=True)
    await grpc_replicas(h, 2)

    def calls(request: bytes, n: int) -> list[str]:
        out = []
        with channel(h) as ch:
            who = ch.unary_unary("/test.Echo/Who")
            for _ in range(n):
                try:
                    out.append(who(request, timeout=5).decode())
                except grpc.RpcError as exc:
                    out.append(exc.code().name)
        return out

    assert await asyncio.to_thread(calls, b"not-found", 12) == ["NOT_FOUND"] * 12
    client = source_ip(h)
    replicas = h.registry.for_service("api")
    assert not any(h.balancer.is_ejected(r, client) for r in replicas)

    # Both replicas fail: 5 in a row on one of them ejects it (the last one never is).
    assert await asyncio.to_thread(calls, b"internal", 10) == ["INTERNAL"] * 10
    assert sum(h.balancer.is_ejected(r, client) for r in replicas) == 1
    assert h.snap()["GrpcStatusCount"] == {"5": 12, "13": 10}


async def test_grpc_server_streaming_and_bidi(harness: Any) -> None:
    h = await harness(grpc=True)
    await grpc_replicas(h, 2)

    def calls() -> tuple[list[bytes], list[bytes], Any, Any]:
        with channel(h) as ch:
            count = ch.unary_stream("/test.Echo/Count")(b"200", timeout=5)
            counted = list(count)
            chat = ch.stream_stream("/test.Echo/Chat")(
                iter([b"m%d" % i for i in range(50)]), timeout=5
            )
            chatted = list(chat)
            return counted, chatted, count.code(), chat.code()

    counted, chatted, code1, code2 = await asyncio.to_thread(calls)
    assert counted == [f"api-1:{i}".encode() for i in range(200)]
    assert chatted == [b"api-2:m%d" % i for i in range(50)]  # per-stream rotation
    assert code1 == code2 == grpc.StatusCode.OK  # the trailers arrived
    assert h.snap()["GrpcStatusCount"] == {"0": 2}


async def test_grpc_no_replica_is_unavailable(harness: Any) -> None:
    h = await harness(grpc=True)

    def call() -> grpc.RpcError:
        with channel(h) as ch, pytest.raises(grpc.RpcError) as info:
            ch.unary_unary("/test.Echo/Who")(b"hi", timeout=5)
        return info.value

    err = await asyncio.to_thread(call)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert "no replica of service 'api' is running" in err.details()


async def test_grpc_dead_replica_is_retried_on_another(harness: Any) -> None:
    h = await harness(grpc=True)
    (live,) = await grpc_replicas(h, 1)
    h.add(2, "127.0.0.9", dead_port())

    def calls() -> list[bytes]:
        with channel(h) as ch:
            who = ch.unary_unary("/test.Echo/Who")
            return [who(b"hi", timeout=5) for _ in range(6)]

    assert await asyncio.to_thread(calls) == [b"api-1"] * 6
    assert live.hits == 6
    assert h.snap()["HTTPCode_Target_5XX_Count"] == 0
    assert h.balancer.in_flight("cid-api-2") == 0


async def test_grpc_timeout_is_unavailable_as_envoy_sends(harness: Any) -> None:
    h = await harness(grpc=True, request_timeout_s=0.3)
    await grpc_replicas(h, 1)

    def call() -> grpc.RpcError:
        with channel(h) as ch, pytest.raises(grpc.RpcError) as info:
            ch.unary_unary("/test.Echo/Who")(b"sleep:1.5", timeout=5)
        return info.value

    started = time.monotonic()
    err = await asyncio.to_thread(call)
    assert time.monotonic() - started < 1.2
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert err.details() == "upstream request timeout"
    snap = h.snap()
    assert snap["HTTPCode_Target_5XX_Count"] == 1  # counted as a 504
    assert snap["GrpcStatusCount"] == {"14": 1}


async def test_grpc_replica_gone_mid_stream_fails_the_call(harness: Any) -> None:
    h = await harness(grpc=True)
    (r1,) = await grpc_replicas(h, 1)
    first = threading.Event()

    def call() -> tuple[list[bytes], grpc.StatusCode]:
        got = []
        with channel(h) as ch:
            stream = ch.unary_stream("/test.Echo/Slow")(b"", timeout=5)
            try:
                for msg in stream:
                    got.append(msg)
                    first.set()
            except grpc.RpcError as exc:
                return got, exc.code()
        return got, grpc.StatusCode.OK

    task = asyncio.ensure_future(asyncio.to_thread(call))
    await until(first.is_set)
    h.proxy.close_replica("cid-api-1")
    got, code = await task
    r1.release.set()
    assert got == [b"first"]
    assert code != grpc.StatusCode.OK
    assert h.balancer.in_flight("cid-api-1") == 0


async def test_grpc_graceful_goaway_lets_in_flight_calls_finish(harness: Any) -> None:
    h = await harness(grpc=True)
    r1, _ = await grpc_replicas(h, 2)
    first = threading.Event()

    def slow_call() -> list[bytes]:
        with channel(h) as ch:
            out = []
            for msg in ch.unary_stream("/test.Echo/Slow")(b"", timeout=10):
                out.append(msg)
                first.set()
            return out

    task = asyncio.ensure_future(asyncio.to_thread(slow_call))
    await until(first.is_set)
    stopped = r1.server.stop(5)  # GOAWAY; in-flight calls may finish within the grace
    await asyncio.sleep(0.3)
    r1.release.set()
    assert await task == [b"first", b"second"]
    await asyncio.to_thread(stopped.wait)


# -- plain http2 -------------------------------------------------------------------------


async def test_http2_round_robin_per_stream_and_big_bodies(harness: Any) -> None:
    h = await harness(grpc=False)
    replicas = await h2_replicas(h, 3)
    client = await H2Client().connect(PROXY_HOST, h.port)
    try:
        names = [bytes((await client.request("GET", "/")).body) for _ in range(6)]
        assert names == [b"api-1", b"api-2", b"api-3"] * 2
        # Concurrent streams on the one connection rotate too.
        many = await asyncio.gather(*(client.request("GET", "/") for _ in range(6)))
        assert Counter(bytes(r.body) for r in many) == {b"api-1": 2, b"api-2": 2, b"api-3": 2}
        assert all(r.headers[b"x-meshlocal-replica"] == r.body for r in many)

        body = bytes(range(256)) * (5 * 4096)  # 5 MiB: many windows' worth
        up = await client.request("POST", "/upload", body)
        assert up.status == 200
        assert bytes(up.body) == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
        down = await client.request("GET", f"/big?n={3 << 20}")
        assert len(down.body) == 3 << 20
    finally:
        await client.close()
    assert [r.connections for r in replicas] == [1, 1, 1]
    seen = replicas[0].seen[0]
    assert seen[b":authority"] == b"api" and seen[b"x-forwarded-proto"] == b"http"
    assert seen[b"x-forwarded-for"] == source_ip(h).encode()
    snap = h.snap()
    assert snap["RequestCount"] == 14 and snap["HTTPCode_Target_2XX_Count"] == 14
    assert snap["GrpcRequestCount"] == 0


async def test_http2_two_clients_rotate_independently(harness: Any) -> None:
    h = await harness(grpc=False)
    await h2_replicas(h, 3)
    a = await H2Client().connect(PROXY_HOST, h.port, source="127.0.0.2")
    b = await H2Client().connect(PROXY_HOST, h.port, source="127.0.0.3")
    seen: dict[str, list[bytes]] = {"a": [], "b": []}
    try:
        for _ in range(6):
            for key, client in (("a", a), ("b", b)):
                seen[key].append(bytes((await client.request("GET", "/")).body))
    finally:
        await a.close()
        await b.close()
    # One Envoy per client task: each has its own position in the rotation.
    assert seen["a"] == seen["b"] == [b"api-1", b"api-2", b"api-3"] * 2


async def test_http2_no_replica_is_503_and_dead_replica_retried(harness: Any) -> None:
    h = await harness(grpc=False)
    client = await H2Client().connect(PROXY_HOST, h.port)
    try:
        r = await client.request("GET", "/")
        assert r.status == 503
        assert b"no replica of service 'api' is running" in r.body
        (live,) = await h2_replicas(h, 1)
        h.add(2, "127.0.0.9", dead_port())
        answers = [bytes((await client.request("GET", "/")).body) for _ in range(4)]
        assert answers == [b"api-1"] * 4
        assert live.hits == 4
    finally:
        await client.close()


async def test_http2_slow_replica_bounds_what_the_proxy_buffers(harness: Any) -> None:
    """A replica that reads nothing: the client is held back, the proxy holds <= a window."""
    h = await harness(grpc=False)
    (replica,) = await h2_replicas(h, 1, stall=True)
    client = await H2Client().connect(PROXY_HOST, h.port)
    try:
        sid, _ = client.start("POST", "/upload", end=False)
        sender = asyncio.create_task(client.send_body(sid, b"x" * (16 << 20)))
        await asyncio.sleep(1.0)
        assert not sender.done()
        (down,) = h.proxy.connections
        (st,) = down.streams.values()
        buffered = sum(len(c) for c in st.req_buf)
        assert buffered <= h2util.STREAM_WINDOW
        assert client.sent <= h2util.STREAM_WINDOW + 65535 + 16384
        sender.cancel()
        client.conn.reset_stream(sid)
        client._flush()
        await until(lambda: not down.streams)
        assert h.balancer.in_flight("cid-api-1") == 0
        await until(lambda: replica.resets == 1)  # RST_STREAM went on to the replica
    finally:
        await client.close()


async def test_http2_trailers_both_ways(harness: Any) -> None:
    h = await harness(grpc=False)
    (replica,) = await h2_replicas(h, 1)
    client = await H2Client().connect(PROXY_HOST, h.port)
    try:
        r = await client.request("POST", "/trailers", b"data", trailers=[("x-sum", "42")])
    finally:
        await client.close()
    assert replica.trailers == [{b"x-sum": b"42"}]
    assert bytes(r.body) == b"api-1"
    assert r.trailers == {b"x-checksum": b"abc", b"x-replica": b"api-1"}


async def test_http2_replica_stream_limit_opens_another_connection(harness: Any) -> None:
    h = await harness(grpc=False)
    (replica,) = await h2_replicas(h, 1, delay=0.3, max_streams=2)
    client = await H2Client().connect(PROXY_HOST, h.port)
    try:
        await client.request("GET", "/")  # the replica's SETTINGS are known from here on
        answers = await asyncio.gather(*(client.request("GET", "/") for _ in range(6)))
    finally:
        await client.close()
    assert [r.status for r in answers] == [200] * 6
    assert replica.connections == 3  # 2 streams each
    assert h.snap()["NewConnectionCount"] == 3


async def test_idle_connections_are_closed(harness: Any) -> None:
    h = await harness(grpc=False, idle_timeout_s=0.3)
    await h2_replicas(h, 1)
    client = await H2Client().connect(PROXY_HOST, h.port)
    assert (await client.request("GET", "/")).status == 200
    assert h.snap()["ActiveConnectionCount"] == 1
    assert client.task is not None
    await asyncio.wait_for(client.task, 3)  # the proxy sent GOAWAY and closed
    await until(lambda: h.snap()["ActiveConnectionCount"] == 0)
    assert not h.proxy.connections and not h.proxy.upstreams
    await client.close()


async def test_http1_client_is_told_to_speak_http2(harness: Any) -> None:
    h = await harness(grpc=False)
    reader, writer = await asyncio.open_connection(PROXY_HOST, h.port)
    writer.write(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)  # then the proxy closes
    writer.close()
    assert answer.startswith(b"HTTP/1.1 505 ")
    assert b"HTTP/2 with prior knowledge" in answer


@pytest.mark.parametrize(
    ("raw", "code"),
    [(b"0", 0), (b"5", 5), (b"16", 16), (b"17", 2), (b"-99999", 2), (b" 1_0 ", 2), (b"x", 2)],
)
def test_grpc_status_outside_grpcs_17_codes_is_unknown(raw: bytes, code: int) -> None:
    # A replica must not grow the per-status metrics with statuses gRPC doesn't define.
    from meshlocal.proxy.h2util import grpc_status

    assert grpc_status([(b"grpc-status", raw)]) == code
