"""TCP mode: real sockets on 127.0.0.x through `TcpProxy`, real backends behind it."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from meshlocal.proxy.balancer import Balancer
from meshlocal.proxy.metrics import Metrics
from meshlocal.proxy.settings import ProxySettings
from meshlocal.proxy.tcp import TcpConnection, TcpProxy
from meshlocal.registry import Replica, ReplicaRegistry

PROXY_HOST = "127.0.0.1"
CLIENT_A = "127.0.0.2"
CLIENT_B = "127.0.0.3"
DEAD_HOST = "127.0.0.9"
MiB = 1 << 20


class Backend:
    """One replica. Modes:
    - "lines": answers `name:line` to every line, but nothing to `quiet`, and to
      `tick N` N lines 0.15 s apart (traffic one way only);
    - "echo": sends back every byte as it comes, closes at EOF;
    - "at_eof": reads to EOF, then answers `name:<bytes read>` + `reply_body`, and closes;
    - "greet": says `name` and shuts down its write side, then reads to EOF.
    """

    def __init__(
        self, name: str, host: str, mode: str = "lines", reply_body: bytes = b"", sockbuf: int = 0
    ) -> None:
        self.name = name
        self.sockbuf = sockbuf  # accepted sockets inherit the listener's buffer sizes
        self.host = host
        self.mode = mode
        self.reply_body = reply_body
        self.port = 0
        self.connections = 0
        self.ended = 0  # handlers that saw the connection end (EOF or reset)
        self.received = hashlib.sha256()
        self.received_bytes = 0
        self.writers: set[asyncio.StreamWriter] = set()
        self.handlers: set[asyncio.Task[None]] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> Backend:
        sock = socket.socket()
        if self.sockbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.sockbuf)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.sockbuf)
        sock.bind((self.host, 0))
        self.server = await asyncio.start_server(self._handle, sock=sock)
        self.port = sock.getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        prefix = self.name.encode() + b":"
        try:
            if self.mode == "lines":
                while line := await reader.readline():
                    if line.startswith(b"tick "):
                        for i in range(int(line.split()[1])):
                            await asyncio.sleep(0.15)
                            writer.write(prefix + b"tick %d\n" % i)
                    elif line != b"quiet\n":
                        writer.write(prefix + line)
                    await writer.drain()
            elif self.mode == "echo":
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            elif self.mode == "at_eof":
                while data := await reader.read(65536):
                    self.received.update(data)
                    self.received_bytes += len(data)
                writer.write(prefix + str(self.received_bytes).encode() + b"\n" + self.reply_body)
                await writer.drain()
            else:  # greet
                writer.write(self.name.encode() + b"\n")
                await writer.drain()
                writer.write_eof()
                while data := await reader.read(65536):
                    self.received.update(data)
                    self.received_bytes += len(data)
        except ConnectionError:
            pass
        finally:
            self.ended += 1
            self.writers.discard(writer)
            self.handlers.discard(task)
            writer.close()

    def kill(self) -> None:
        """The replica's process dies: its listener and live connections go at once."""
        if self.server is not None:
            self.server.close()
        for w in list(self.writers):
            w.transport.abort()

    async def stop(self) -> None:
        self.kill()
        async with asyncio.timeout(5):
            if self.server is not None:
                await self.server.wait_closed()
                self.server = None
            await asyncio.gather(*self.handlers, return_exceptions=True)


class TcpMesh:
    """A `TcpProxy` listening for service `api` over backends on 127.0.0.11 and up."""

    def __init__(self, settings: ProxySettings) -> None:
        self.registry = ReplicaRegistry()
        self.balancer = Balancer(self.registry)
        self.metrics = Metrics()
        self.proxy = TcpProxy(self.balancer, self.metrics, settings)
        self.backends: list[Backend] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> TcpMesh:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(self.proxy.factory("api"), PROXY_HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def add(self, mode: str = "lines", reply_body: bytes = b"", sockbuf: int = 0) -> Backend:
        index = len(self.registry.for_service("api")) + 1
        host = f"127.0.0.{10 + index}"
        backend = await Backend(f"api-{index}", host, mode, reply_body, sockbuf).start()
        self.backends.append(backend)
        self.registry.upsert(Replica("api", index, f"cid-api-{index}", host, backend.port))
        return backend

    def add_dead(self) -> None:
        """A replica in the registry with nothing listening on its port."""
        index = len(self.registry.for_service("api")) + 1
        probe = socket.socket()
        probe.bind((DEAD_HOST, 0))
        port = probe.getsockname()[1]
        probe.close()
        self.registry.upsert(Replica("api", index, f"cid-api-{index}", DEAD_HOST, port))

    async def connect(
        self, client: str = CLIENT_A
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        async with asyncio.timeout(5):
            return await asyncio.open_connection(PROXY_HOST, self.port, local_addr=(client, 0))

    def stats(self) -> dict[str, object]:
        return self.metrics.snapshot()["api"]

    async def close(self) -> None:
        self.proxy.close_all()
        if self.server is not None:
            self.server.close()
            async with asyncio.timeout(5):
                await self.server.wait_closed()
        for b in self.backends:
            await b.stop()
        self.balancer.close()


MeshMaker = Callable[..., Awaitable[TcpMesh]]


@pytest.fixture
async def tcp_mesh() -> AsyncIterator[MeshMaker]:
    made: list[TcpMesh] = []

    async def make(settings: ProxySettings | None = None) -> TcpMesh:
        mesh = await TcpMesh(settings or ProxySettings()).start()
        made.append(mesh)
        return mesh

    yield make
    for mesh in made:
        await mesh.close()


async def ask(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, msg: bytes) -> bytes:
    writer.write(msg + b"\n")
    async with asyncio.timeout(5):
        await writer.drain()
        return (await reader.readline()).rstrip(b"\n")


async def name_of_next(mesh: TcpMesh, client: str = CLIENT_A) -> str:
    """Open a connection, ask once, close: which backend answered (or "reset")."""
    reader, writer = await mesh.connect(client)
    try:
        reply = await ask(reader, writer, b"hi")
    except ConnectionError:
        return "reset"
    finally:
        writer.close()
    return reply.split(b":", 1)[0].decode() if reply else "reset"


async def ends(reader: asyncio.StreamReader) -> bool:
    """True when the peer closes or resets without sending anything more (within 5 s)."""
    try:
        async with asyncio.timeout(5):
            data = await reader.read(65536)
    except ConnectionError:
        return True
    return data == b""


async def read_all(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    async with asyncio.timeout(20):
        while chunk := await reader.read(1 << 18):
            out += chunk
    return bytes(out)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    assert check()


def only_connection(mesh: TcpMesh) -> TcpConnection:
    assert len(mesh.proxy.connections) == 1
    return next(iter(mesh.proxy.connections))


# -- balancing ----------------------------------------------------------------


async def test_a_connection_stays_on_its_replica_and_new_ones_rotate(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    for _ in range(3):
        await mesh.add()
    first_r, first_w = await mesh.connect()
    try:
        for i in range(4):
            assert await ask(first_r, first_w, b"m%d" % i) == b"api-1:m%d" % i
        # Other connections rotate; the first one stays pinned meanwhile.
        assert [await name_of_next(mesh) for _ in range(4)] == ["api-2", "api-3", "api-1", "api-2"]
        assert await ask(first_r, first_w, b"again") == b"api-1:again"
    finally:
        first_w.close()
    assert [b.connections for b in mesh.backends] == [2, 2, 1]


async def test_each_client_task_has_its_own_rotation(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    for _ in range(3):
        await mesh.add()
    seen: dict[str, list[str]] = {CLIENT_A: [], CLIENT_B: []}
    for _ in range(6):
        for client in (CLIENT_A, CLIENT_B):
            seen[client].append(await name_of_next(mesh, client))
    strict = ["api-1", "api-2", "api-3"] * 2
    assert seen == {CLIENT_A: strict, CLIENT_B: strict}


# -- bytes, back-pressure, half-close ---------------------------------------------


async def test_large_payload_both_ways_is_untouched_and_memory_stays_bounded(
    tcp_mesh: MeshMaker,
) -> None:
    small = 65536  # every socket buffer in the chain: the kernel can't absorb 8 MiB
    mesh = await tcp_mesh()
    await mesh.add("echo", sockbuf=small)
    payload = os.urandom(8 * MiB)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, small)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, small)
    sock.bind((CLIENT_A, 0))
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (PROXY_HOST, mesh.port))
    reader, writer = await asyncio.open_connection(sock=sock)
    await eventually(lambda: len(mesh.proxy.connections) == 1)
    conn = only_connection(mesh)
    await eventually(lambda: conn.up is not None)
    assert conn.transport is not None and conn.up is not None and conn.up.transport is not None
    for transport in (conn.transport, conn.up.transport):
        proxy_sock = transport.get_extra_info("socket")
        proxy_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, small)
        proxy_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, small)

    async def send() -> None:
        for i in range(0, len(payload), 256 * 1024):
            writer.write(payload[i : i + 256 * 1024])
            await writer.drain()
        writer.write_eof()

    sender = asyncio.create_task(send())
    try:
        # The client reads nothing for a while: the chain must stall both ways
        # (replica -> client, then client -> replica), not pile up in the proxy.
        peak = 0
        for _ in range(50):
            held = (
                conn.transport.get_write_buffer_size()
                + conn.up.transport.get_write_buffer_size()
                + conn.pending_size
            )
            peak = max(peak, held)
            await asyncio.sleep(0.02)
        assert peak <= 1 * MiB
        assert not sender.done()  # the client was held back too
        received = await read_all(reader)
        async with asyncio.timeout(20):
            await sender
    finally:
        sender.cancel()
        writer.close()
    assert len(received) == len(payload)
    assert hashlib.sha256(received).digest() == hashlib.sha256(payload).digest()
    assert mesh.stats()["ProcessedBytes"] == 2 * len(payload)


async def test_client_half_close_still_gets_the_whole_reply(tcp_mesh: MeshMaker) -> None:
    body = os.urandom(512 * 1024)
    mesh = await tcp_mesh()
    backend = await mesh.add("at_eof", reply_body=body)
    request = os.urandom(1 * MiB)  # sent at once: mostly before the replica has answered
    reader, writer = await mesh.connect()
    try:
        writer.write(request)
        writer.write_eof()
        reply = await read_all(reader)
    finally:
        writer.close()
    assert reply == b"api-1:%d\n" % len(request) + body
    assert backend.received.digest() == hashlib.sha256(request).digest()


async def test_bytes_and_eof_sent_before_the_replica_answers_are_delivered(
    tcp_mesh: MeshMaker, monkeypatch: pytest.MonkeyPatch
) -> None:
    mesh = await tcp_mesh()
    backend = await mesh.add("at_eof")
    loop = asyncio.get_running_loop()
    real_connect = loop.create_connection
    eof_seen_at_dial: list[bool] = []

    async def slow_connect(*args: Any, **kwargs: Any) -> Any:
        if args[1:2] == (backend.host,):  # the proxy dialling the replica: answer late
            await asyncio.sleep(0.3)
            eof_seen_at_dial.append(only_connection(mesh).client_eof)
        return await real_connect(*args, **kwargs)

    monkeypatch.setattr(loop, "create_connection", slow_connect)
    reader, writer = await mesh.connect()
    try:
        writer.write(b"early bytes")
        writer.write_eof()
        reply = await read_all(reader)
    finally:
        writer.close()
    assert eof_seen_at_dial == [True]  # bytes and EOF were in before the replica connection
    assert reply == b"api-1:11\n"
    assert backend.received.digest() == hashlib.sha256(b"early bytes").digest()


async def test_replica_half_close_lets_the_client_keep_sending(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    backend = await mesh.add("greet")
    reader, writer = await mesh.connect()
    try:
        assert await read_all(reader) == b"api-1\n"  # the replica's EOF reached the client
        writer.write(b"after your EOF")
        writer.write_eof()
        await eventually(lambda: backend.ended == 1)
    finally:
        writer.close()
    assert backend.received_bytes == len(b"after your EOF")
    await eventually(lambda: not mesh.proxy.connections)


# -- replicas going away, connect failures --------------------------------------------


async def test_a_killed_replica_breaks_its_connections_and_the_next_goes_to_a_live_one(
    tcp_mesh: MeshMaker,
) -> None:
    mesh = await tcp_mesh()
    one = await mesh.add()
    await mesh.add()
    reader, writer = await mesh.connect()
    try:
        assert await ask(reader, writer, b"x") == b"api-1:x"
        assert mesh.balancer.in_flight("cid-api-1") == 1
        one.kill()
        assert await ends(reader)
    finally:
        writer.close()
    await eventually(lambda: mesh.balancer.in_flight("cid-api-1") == 0)
    await eventually(lambda: not mesh.proxy.connections)
    assert await name_of_next(mesh) == "api-2"
    await eventually(lambda: mesh.stats()["ActiveConnectionCount"] == 0)


async def test_close_replica_aborts_only_the_connections_pinned_to_it(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    await mesh.add()
    await mesh.add()
    r1, w1 = await mesh.connect()
    r2, w2 = await mesh.connect()
    try:
        assert await ask(r1, w1, b"a") == b"api-1:a"
        assert await ask(r2, w2, b"b") == b"api-2:b"
        mesh.proxy.close_replica("cid-api-1")
        assert await ends(r1)
        assert await ask(r2, w2, b"still") == b"api-2:still"
    finally:
        w1.close()
        w2.close()
    await eventually(lambda: mesh.backends[0].ended == 1)  # the replica side went too


async def test_connect_failure_resets_the_client_and_feeds_outlier_detection(
    tcp_mesh: MeshMaker,
) -> None:
    mesh = await tcp_mesh()  # tcp_connect_attempts=1: Envoy's default, which ECS keeps
    mesh.add_dead()
    await mesh.add()
    names = [await name_of_next(mesh) for _ in range(14)]
    # Five failed connects in a row eject the dead replica, for this client only.
    assert names == ["reset", "api-2"] * 5 + ["api-2"] * 4
    assert await name_of_next(mesh, CLIENT_B) == "reset"
    stats = mesh.stats()
    assert stats["NewConnectionCount"] == 9  # connections to a replica, not accepted ones
    assert stats["RequestCount"] == 0


async def test_more_connect_attempts_try_the_next_replica(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh(ProxySettings(tcp_connect_attempts=2))
    mesh.add_dead()
    await mesh.add()
    # The client speaks first, before any replica has answered: its bytes wait.
    assert [await name_of_next(mesh) for _ in range(4)] == ["api-2"] * 4
    assert mesh.stats()["NewConnectionCount"] == 4


async def test_no_replica_in_rotation_resets_at_once(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    await mesh.add()
    mesh.registry.set_draining("cid-api-1")
    reader, writer = await mesh.connect()
    try:
        writer.write(b"hello\n")
        assert await ends(reader)
    finally:
        writer.close()
    assert not mesh.proxy.connections
    assert mesh.backends[0].connections == 0
    stats = mesh.stats()
    assert stats["NewConnectionCount"] == 0 and stats["RequestCount"] == 0


# -- idle timeout, metrics ------------------------------------------------------------


async def test_idle_timeout_is_1_h_by_default(tcp_mesh: MeshMaker) -> None:
    """ECS's TCP idle timeout (3600 s) is the one the sweeper applies, with an injected clock."""
    mesh = await tcp_mesh()  # default settings
    backend = await mesh.add()
    reader, writer = await mesh.connect()
    try:
        assert await ask(reader, writer, b"a") == b"api-1:a"
        quiet_since = time.monotonic()
        mesh.proxy.sweep(quiet_since + 3599)
        await asyncio.sleep(0.2)
        assert not reader.at_eof() and backend.ended == 0
        mesh.proxy.sweep(quiet_since + 3601)
        async with asyncio.timeout(5):
            assert await reader.read() == b""
    finally:
        writer.close()


async def test_idle_connections_are_closed_on_both_sides(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh(ProxySettings(tcp_idle_timeout_s=0.5))
    backend = await mesh.add()

    async def sweeper() -> None:
        while True:
            await asyncio.sleep(0.05)
            mesh.proxy.sweep(time.monotonic())

    task = asyncio.create_task(sweeper())
    reader, writer = await mesh.connect()
    try:
        # Bytes one way only keep it open well past the timeout: client -> replica...
        for _ in range(6):
            writer.write(b"quiet\n")
            await writer.drain()
            await asyncio.sleep(0.15)
        assert await ask(reader, writer, b"a") == b"api-1:a"
        # ...and replica -> client.
        writer.write(b"tick 6\n")
        for i in range(6):
            async with asyncio.timeout(5):
                assert await reader.readline() == b"api-1:tick %d\n" % i
        quiet_since = time.monotonic()
        # Silence closes it, client side and replica side.
        assert await ends(reader)
        assert time.monotonic() - quiet_since >= 0.3
        await eventually(lambda: backend.ended == 1)
    finally:
        task.cancel()
        writer.close()
    await eventually(lambda: not mesh.proxy.connections)
    assert mesh.stats()["ActiveConnectionCount"] == 0


async def test_connection_and_byte_metrics_are_exact(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    await mesh.add()
    reader, writer = await mesh.connect()
    try:
        assert await ask(reader, writer, b"hello") == b"api-1:hello"  # 6 bytes in, 12 out
        stats = mesh.stats()
        assert stats["NewConnectionCount"] == 1
        assert stats["ActiveConnectionCount"] == 1
        assert stats["ProcessedBytes"] == 18  # counted while the connection is open
        assert mesh.balancer.in_flight("cid-api-1") == 1
    finally:
        writer.close()
    await eventually(lambda: mesh.stats()["ActiveConnectionCount"] == 0)
    assert mesh.balancer.in_flight("cid-api-1") == 0
    assert await name_of_next(mesh) == "api-1"  # "hi" in, "api-1:hi" out: 3 + 9 bytes
    await eventually(lambda: mesh.stats()["ActiveConnectionCount"] == 0)
    stats = mesh.stats()
    assert stats["NewConnectionCount"] == 2
    assert stats["ProcessedBytes"] == 18 + 12
    assert stats["RequestCount"] == 0
    assert all(stats[f"HTTPCode_Target_{c}XX_Count"] == 0 for c in (2, 3, 4, 5))
    assert stats["TargetResponseTime"] == 0.0
