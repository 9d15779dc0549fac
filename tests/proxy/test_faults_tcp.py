"""Faults in TCP mode (per connection): real sockets on 127.0.0.x through `TcpProxy`."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time

import pytest

from meshlocal.faults import Fault, Kind, expected_hits
from meshlocal.proxy import faultio
from meshlocal.proxy.settings import ProxySettings
from meshlocal.registry import Replica

from .faultkit import added_p50, binomial_99
from .test_tcp import (
    CLIENT_A,
    CLIENT_B,
    PROXY_HOST,
    MeshMaker,
    TcpMesh,
    ask,
    eventually,
    name_of_next,
    read_all,
    tcp_mesh,
)

__all__ = ["tcp_mesh"]  # the fixture, imported for pytest


def fault(mesh: TcpMesh, kind: Kind, **kw: object) -> str:
    return mesh.proxy.faults.add(Fault("api", kind, **kw)).id  # type: ignore[arg-type]


def clients(mesh: TcpMesh) -> None:
    """CLIENT_A is a replica of front-end, CLIENT_B one of worker."""
    mesh.registry.add_client(Replica("front-end", 1, "cid-fe-1", CLIENT_A, None))
    mesh.registry.add_client(Replica("worker", 1, "cid-worker-1", CLIENT_B, None))


async def timed_calls(
    mesh: TcpMesh, connections: int, per_connection: int
) -> list[tuple[str, float]]:
    """(replica, milliseconds) per request/response line, over concurrent connections
    (their starts staggered, so the calls don't all wake the loop at once)."""

    async def one(i: int) -> list[tuple[str, float]]:
        await asyncio.sleep(i * 0.01)
        reader, writer = await mesh.connect()
        out = []
        try:
            for j in range(per_connection):
                start = time.perf_counter()
                reply = await ask(reader, writer, b"c%d-%d" % (i, j))
                assert reply.endswith(b"c%d-%d" % (i, j))
                out.append((reply.split(b":")[0].decode(), (time.perf_counter() - start) * 1000))
        finally:
            writer.close()
        return out

    results = await asyncio.gather(*(one(i) for i in range(connections)))
    return [sample for r in results for sample in r]


async def test_latency_delays_every_chunk_to_the_client(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    await mesh.add()
    await mesh.add()
    fault(mesh, Kind.LATENCY, latency_ms=100, replica=2)
    samples = await timed_calls(mesh, 20, 20)  # connections alternate: 10 on each replica
    p50, n = added_p50(samples, "api-2", "api-1")
    assert n == 200
    assert 80 <= p50 <= 120, p50
    assert min(ms for name, ms in samples if name == "api-2") >= 98  # every chunk


async def test_latency_jitter_spreads_the_delays(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    await mesh.add()
    await mesh.add()
    fault(mesh, Kind.LATENCY, latency_ms=100, jitter_ms=40, seed=3, replica=2)
    samples = await timed_calls(mesh, 20, 20)
    p50, n = added_p50(samples, "api-2", "api-1")
    assert 80 <= p50 <= 120 and n == 200, p50
    times = [ms for name, ms in samples if name == "api-2"]
    assert min(times) >= 59
    # Uniform over ±40 ms: the quartiles sit about 40 ms apart (none without jitter).
    q1, _, q3 = statistics.quantiles(times, n=4)
    assert 25 <= q3 - q1 <= 60, (q1, q3)


async def test_no_fault_on_another_service_leaves_the_connection_alone(
    tcp_mesh: MeshMaker,
) -> None:
    mesh = await tcp_mesh()
    await mesh.add()
    mesh.proxy.faults.add(Fault("other", Kind.LATENCY, latency_ms=500))
    samples = await timed_calls(mesh, 4, 5)
    assert statistics.median(ms for _, ms in samples) < 100


async def test_seeded_refuse_hits_exactly_the_expected_connections(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    await mesh.add()
    ident = fault(mesh, Kind.REFUSE, percent=30, seed=7)
    names = [await name_of_next(mesh) for _ in range(200)]
    want = expected_hits(30, 7, 200)
    assert names.count("reset") == want
    assert names.count("api-1") == 200 - want
    active = mesh.proxy.faults.get(ident)
    assert active is not None and (active.seen, active.hits) == (200, want)
    # Refusals are the fault's, not the replica's: outlier detection saw none.
    assert mesh.balancer.ejections(mesh.registry.for_service("api")[0], CLIENT_A) == 0
    assert mesh.backends[0].connections == 200 - want


async def test_unseeded_refuse_is_within_the_binomial_interval(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    await mesh.add()
    fault(mesh, Kind.REFUSE, percent=40)
    low, high = binomial_99(200, 0.4)
    # A correct proxy falls outside a 99 % interval 1 time in 100; a second sample
    # only then makes a false failure 1 in 10,000 (a biased one fails both).
    for _ in range(2):
        names = [await name_of_next(mesh) for _ in range(200)]
        if low <= names.count("reset") <= high:
            break
    assert low <= names.count("reset") <= high


async def test_reset_at_once_resets_before_any_byte(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    backend = await mesh.add()
    fault(mesh, Kind.RESET)
    reader, writer = await mesh.connect()
    try:
        writer.write(b"hello\n")
        async with asyncio.timeout(5):
            try:
                data = await reader.read(100)
            except ConnectionResetError:
                data = None
        assert data is None  # a reset, not an orderly close
    finally:
        writer.close()
    assert backend.connections == 0


async def test_reset_after_n_bytes_gives_the_client_exactly_n(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    await mesh.add("at_eof", reply_body=b"z" * 100_000)
    fault(mesh, Kind.RESET, after_bytes=1000)
    reader, writer = await mesh.connect()
    got = bytearray()
    try:
        writer.write(b"x" * 10)
        writer.write_eof()
        async with asyncio.timeout(5):
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionResetError:
                    break
                assert chunk, "closed instead of reset"
                got += chunk
    finally:
        writer.close()
    assert len(got) == 1000
    assert got.startswith(b"api-1:10\n")


async def test_refuse_resets_the_client_and_removing_it_restores_at_once(
    tcp_mesh: MeshMaker,
) -> None:
    mesh = await tcp_mesh()
    await mesh.add()
    ident = fault(mesh, Kind.REFUSE)
    assert [await name_of_next(mesh) for _ in range(3)] == ["reset"] * 3
    assert mesh.backends[0].connections == 0
    mesh.proxy.faults.remove(ident)
    assert await name_of_next(mesh) == "api-1"


async def test_partition_only_between_the_named_services(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh(ProxySettings(connect_timeout_s=0.3))
    await mesh.add()
    clients(mesh)
    fault(mesh, Kind.PARTITION, source="front-end")
    start = time.monotonic()
    assert await name_of_next(mesh, CLIENT_A) == "reset"
    waited = time.monotonic() - start
    assert 0.28 <= waited < 1.0, waited  # the connect timeout, then what it does: RST
    assert await name_of_next(mesh, CLIENT_B) == "api-1"
    assert mesh.backends[0].connections == 1  # nothing from front-end reached it


async def test_a_replica_fault_hits_only_that_replica(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    await mesh.add()
    await mesh.add()
    fault(mesh, Kind.REFUSE, replica=2)
    names = [await name_of_next(mesh) for _ in range(6)]
    assert names == ["api-1", "reset"] * 3
    assert [b.connections for b in mesh.backends] == [3, 0]


async def test_bandwidth_paces_the_replica_to_client_direction(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    await mesh.add("at_eof", reply_body=b"z" * 200_000)
    fault(mesh, Kind.BANDWIDTH, rate=100_000)
    reader, writer = await mesh.connect()
    try:
        writer.write(b"go")
        writer.write_eof()
        start = time.monotonic()
        data = await read_all(reader)
        took = time.monotonic() - start
    finally:
        writer.close()
    assert len(data) == len(b"api-1:2\n") + 200_000
    assert 1.5 <= took <= 2.5, took


async def test_bandwidth_paces_the_client_to_replica_direction(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    backend = await mesh.add("at_eof")
    fault(mesh, Kind.BANDWIDTH, rate=100_000)
    reader, writer = await mesh.connect()
    try:
        start = time.monotonic()
        writer.write(b"u" * 200_000)
        writer.write_eof()
        data = await read_all(reader)
        took = time.monotonic() - start
    finally:
        writer.close()
    assert data == b"api-1:200000\n"
    assert backend.received_bytes == 200_000
    assert 1.5 <= took <= 2.5, took


# -- review fixes --------------------------------------------------------------------


def shaped(mesh: TcpMesh) -> faultio.Shaper | None:
    """The client side's shaper, once the replica side is connected."""
    (conn,) = mesh.proxy.connections
    transport = conn.transport
    return transport.shaper if isinstance(transport, faultio.ShapedTransport) else None


@pytest.mark.parametrize("kind", [Kind.LATENCY, Kind.BANDWIDTH])
async def test_a_client_that_gives_up_leaves_no_shaper_timer(
    tcp_mesh: MeshMaker, kind: Kind
) -> None:
    mesh = await tcp_mesh()
    fault(mesh, kind, latency_ms=2000, rate=50_000)
    latency = kind is Kind.LATENCY
    await (mesh.add() if latency else mesh.add("at_eof", reply_body=b"z" * 500_000))
    _reader, writer = await mesh.connect()
    if latency:
        writer.write(b"hi\n")  # the reply waits 2 s in the shaper
    else:
        writer.write(b"go")
        writer.write_eof()  # the reply is paced over 10 s
    await eventually(lambda: len(mesh.proxy.connections) == 1)
    await eventually(lambda: (s := shaped(mesh)) is not None and not s.empty)
    shaper = shaped(mesh)
    assert shaper is not None
    faultio.reset(writer.transport)  # gives up (RST) with the reply queued in the shaper
    # Within a bounded time, long before the 2 s delay or the 10 s of pacing.
    await eventually(lambda: shaper.timer is None and shaper.empty, timeout=0.5)
    await asyncio.sleep(0.05)
    assert shaper.timer is None


async def test_reset_after_n_bytes_is_exact_for_a_slow_reader(tcp_mesh: MeshMaker) -> None:
    n = 300_000
    mesh = await tcp_mesh()
    await mesh.add("at_eof", reply_body=b"z" * 1_000_000)
    fault(mesh, Kind.RESET, after_bytes=n)
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)  # the backlog stays with the proxy
    sock.bind((CLIENT_A, 0))
    sock.setblocking(False)
    got = 0
    reset = False
    try:
        async with asyncio.timeout(20):
            await loop.sock_connect(sock, (PROXY_HOST, mesh.port))
            await loop.sock_sendall(sock, b"go")
            sock.shutdown(socket.SHUT_WR)
            for _ in range(10_000):
                try:
                    chunk = await loop.sock_recv(sock, 16384)
                except ConnectionResetError:
                    reset = True
                    break
                if not chunk:
                    break
                got += len(chunk)
                await asyncio.sleep(0.002)  # slower than the proxy writes
    finally:
        sock.close()
    assert reset
    assert got == n


async def test_a_retry_on_another_replica_starts_with_a_plain_plan(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh(ProxySettings(tcp_connect_attempts=2))
    mesh.add_dead()  # api-1: refuses connections for real
    await mesh.add()
    ident = fault(mesh, Kind.LATENCY, latency_ms=600, replica=1)
    start = time.monotonic()
    assert await name_of_next(mesh) == "api-2"
    assert time.monotonic() - start < 0.4  # api-1's delay did not follow the call
    active = mesh.proxy.faults.get(ident)
    assert active is not None and (active.seen, active.hits) == (1, 0)  # never applied


async def test_bytes_sent_during_a_partition_are_swallowed(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh(ProxySettings(connect_timeout_s=0.3, tcp_connect_attempts=2))
    await mesh.add()
    await mesh.add()
    clients(mesh)
    fault(mesh, Kind.PARTITION, source="front-end", replica=1)
    reader, writer = await mesh.connect(CLIENT_A)
    try:
        writer.write(b"lost\n")  # during the hold on api-1
        await asyncio.sleep(0.1)
        writer.write(b"more lost\n")
        await asyncio.sleep(0.35)  # the hold is over: api-2 now
        assert await ask(reader, writer, b"after") == b"api-2:after"
    finally:
        writer.close()
    assert mesh.backends[1].connections == 1 and mesh.backends[0].connections == 0


async def test_unscoped_faults_skip_the_client_lookup(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    await mesh.add()
    asked: list[str] = []
    lookup = mesh.registry.by_address

    def spy(address: str) -> Replica | None:
        asked.append(address)
        return lookup(address)

    mesh.registry.by_address = spy  # type: ignore[method-assign]
    mesh.proxy.faults.add(Fault("other", Kind.LATENCY, latency_ms=500, source="front-end"))
    assert await name_of_next(mesh) == "api-1"  # no fault on api: no lookup
    fault(mesh, Kind.LATENCY, latency_ms=1)
    assert await name_of_next(mesh) == "api-1"  # no fault with a client: no lookup
    assert asked == []
    fault(mesh, Kind.REFUSE, source="worker")
    assert await name_of_next(mesh) == "api-1"
    assert asked == [CLIENT_A]


async def test_a_refused_connection_counts_no_latency_hit(tcp_mesh: MeshMaker) -> None:
    mesh = await tcp_mesh()
    await mesh.add()
    slow = fault(mesh, Kind.LATENCY, latency_ms=100)
    refuse = fault(mesh, Kind.REFUSE, percent=50, seed=5)
    names = [await name_of_next(mesh) for _ in range(40)]
    want = expected_hits(50, 5, 40)
    assert names.count("reset") == want
    lat, ref = mesh.proxy.faults.get(slow), mesh.proxy.faults.get(refuse)
    assert lat is not None and ref is not None
    assert (ref.seen, ref.hits) == (40, want)
    assert (lat.seen, lat.hits) == (40, 40 - want)  # drawn for each, applied to the others
