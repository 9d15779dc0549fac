"""Faults on HTTP/1 endpoints (per request): a real proxy, aiohttp replicas and clients."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from meshlocal.faults import Fault, Kind, expected_hits
from meshlocal.proxy import faultio
from meshlocal.proxy.faultio import CONNECT_FAILURE
from meshlocal.proxy.settings import ProxySettings
from meshlocal.registry import Replica

from .faultkit import added_p50, binomial_99
from .helpers import Mesh, MeshFactory

FRONT_END = "127.0.0.3"  # a replica of front-end
WORKER = "127.0.0.4"  # a replica of worker


def fault(mesh: Mesh, kind: Kind, **kw: object) -> str:
    return mesh.proxy.engine.faults.add(Fault("api", kind, **kw)).id  # type: ignore[arg-type]


def clients(mesh: Mesh) -> None:
    mesh.registry.add_client(Replica("front-end", 1, "cid-fe-1", FRONT_END, None))
    mesh.registry.add_client(Replica("worker", 1, "cid-worker-1", WORKER, None))


@pytest.fixture
async def from_front_end() -> AsyncIterator[aiohttp.ClientSession]:
    conn = aiohttp.TCPConnector(local_addr=(FRONT_END, 0))
    async with aiohttp.ClientSession(connector=conn) as session:
        yield session


@pytest.fixture
async def from_worker() -> AsyncIterator[aiohttp.ClientSession]:
    conn = aiohttp.TCPConnector(local_addr=(WORKER, 0))
    async with aiohttp.ClientSession(connector=conn) as session:
        yield session


async def get(client: aiohttp.ClientSession, url: str) -> tuple[int, str, dict[str, str]]:
    async with asyncio.timeout(10), client.get(url) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


async def raw_until_reset(port: int, request: bytes) -> tuple[bytes, bool]:
    """Send a request on a raw socket: (bytes received, whether it ended in a reset)."""
    reader, writer = await asyncio.open_connection("127.0.0.2", port)
    got = bytearray()
    try:
        writer.write(request)
        async with asyncio.timeout(5):
            while True:
                try:
                    chunk = await reader.read(65536)
                except ConnectionResetError:
                    return bytes(got), True
                if not chunk:
                    return bytes(got), False
                got += chunk
    finally:
        writer.close()


async def test_latency_holds_each_request(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=2)
    fault(mesh, Kind.LATENCY, latency_ms=100, replica=2)
    url = mesh.url("/")

    async def worker(i: int) -> list[tuple[str, float]]:
        await asyncio.sleep(i * 0.01)  # staggered: the calls don't all wake the loop at once
        out = []
        for _ in range(40):
            start = time.perf_counter()
            status, body, _ = await get(client, url)
            assert status == 200
            out.append((body, (time.perf_counter() - start) * 1000))
        return out

    samples = [s for w in await asyncio.gather(*(worker(i) for i in range(10))) for s in w]
    p50, n = added_p50(samples, "api-2", "api-1")
    assert n == 200  # strict round robin: every other request
    assert 80 <= p50 <= 120, p50
    assert min(ms for name, ms in samples if name == "api-2") >= 98


async def test_the_delay_does_not_count_toward_the_request_timeout(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(settings=ProxySettings(request_timeout_s=0.3), replicas=1)
    fault(mesh, Kind.LATENCY, latency_ms=600)
    start = time.monotonic()
    status, body, _ = await get(client, mesh.url("/"))
    assert (status, body) == (200, "api-1")
    assert time.monotonic() - start >= 0.6


async def test_seeded_abort_hits_exactly_the_expected_requests(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=1)
    ident = fault(mesh, Kind.ABORT, http_status=503, percent=25, seed=11)
    results = [await get(client, mesh.url("/")) for _ in range(200)]
    want = expected_hits(25, 11, 200)
    aborted = [r for r in results if r[0] == 503]
    assert len(aborted) == want
    assert all(body.strip() == "fault filter abort" for _, body, _ in aborted)
    assert sum(1 for r in results if r[0] == 200) == 200 - want
    assert mesh.backends["api-1"].hits == 200 - want
    active = mesh.proxy.engine.faults.get(ident)
    assert active is not None and (active.seen, active.hits) == (200, want)
    # Answered by the fault, not by a replica: HTTPCode_Target_5XX_Count doesn't count it.
    assert mesh.proxy.metrics.snapshot()["api"]["HTTPCode_Target_5XX_Count"] == 0


async def test_unseeded_abort_is_within_the_binomial_interval(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=1)
    fault(mesh, Kind.ABORT, http_status=500, percent=50)
    low, high = binomial_99(200, 0.5)
    # A correct proxy falls outside a 99 % interval 1 time in 100; a second sample
    # only then makes a false failure 1 in 10,000 (a biased one fails both).
    for _ in range(2):
        statuses = [(await get(client, mesh.url("/")))[0] for _ in range(200)]
        if low <= statuses.count(500) <= high:
            break
    assert low <= statuses.count(500) <= high
    assert statuses.count(500) + statuses.count(200) == 200


async def test_removing_a_fault_restores_the_next_request(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=1)
    ident = fault(mesh, Kind.ABORT, http_status=429)
    assert (await get(client, mesh.url("/")))[0] == 429
    mesh.proxy.engine.faults.remove(ident)
    assert (await get(client, mesh.url("/")))[:2] == (200, "api-1")


async def test_reset_at_once_is_the_clients_error(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    fault(mesh, Kind.RESET)
    port = mesh.proxy.bound_port(8080)
    got, was_reset = await raw_until_reset(port, b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
    assert (got, was_reset) == (b"", True)
    assert mesh.backends["api-1"].hits == 0
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await get(session, mesh.url("/"))
    # Each reset is a failed call on its client's edge, though no status was sent.
    edges = [e for (svc, _), e in mesh.proxy.engine.metrics.edges.items() if svc == "api"]
    assert sum(e.calls for e in edges) == sum(e.errors for e in edges) >= 2


async def test_reset_after_n_bytes_gives_the_client_exactly_n(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    fault(mesh, Kind.RESET, after_bytes=5000)
    port = mesh.proxy.bound_port(8080)
    got, was_reset = await raw_until_reset(port, b"GET /big?n=100000 HTTP/1.1\r\nHost: api\r\n\r\n")
    assert was_reset
    assert len(got) == 5000
    assert got.startswith(b"HTTP/1.1 200 OK\r\n")


async def test_refuse_is_envoys_503_and_is_not_an_outlier(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=1)
    fault(mesh, Kind.REFUSE)
    for _ in range(6):
        status, body, _ = await get(client, mesh.url("/"))
        assert (status, body.strip()) == (503, CONNECT_FAILURE)
    assert mesh.backends["api-1"].hits == 0
    assert not mesh.proxy.balancer.ejected_for(mesh.registry.for_service("api")[0])


async def test_refusing_one_replica_retries_on_another(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=2)
    ident = fault(mesh, Kind.REFUSE, replica=2)
    bodies = [(await get(client, mesh.url("/")))[:2] for _ in range(6)]
    assert bodies == [(200, "api-1")] * 6
    assert mesh.backends["api-2"].hits == 0
    active = mesh.proxy.engine.faults.get(ident)
    assert active is not None and active.hits == active.seen == 5  # the picks of replica 2


async def test_a_replica_fault_slows_only_that_replica(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=2)
    fault(mesh, Kind.LATENCY, latency_ms=150, replica=2)
    seen: dict[str, list[float]] = {"api-1": [], "api-2": []}
    for _ in range(8):
        start = time.perf_counter()
        status, body, _ = await get(client, mesh.url("/"))
        assert status == 200
        seen[body].append(time.perf_counter() - start)
    assert len(seen["api-1"]) == len(seen["api-2"]) == 4
    assert min(seen["api-2"]) >= 0.15
    assert statistics.median(seen["api-2"]) - statistics.median(seen["api-1"]) >= 0.12


async def test_partition_only_between_the_named_services(
    mesh_factory: MeshFactory,
    from_front_end: aiohttp.ClientSession,
    from_worker: aiohttp.ClientSession,
) -> None:
    mesh = await mesh_factory(settings=ProxySettings(connect_timeout_s=0.3), replicas=1)
    clients(mesh)
    fault(mesh, Kind.PARTITION, source="front-end")
    start = time.monotonic()
    status, body, _ = await get(from_front_end, mesh.url("/"))
    waited = time.monotonic() - start
    assert (status, body.strip()) == (503, CONNECT_FAILURE)
    assert 0.28 <= waited < 1.5, waited
    assert (await get(from_worker, mesh.url("/")))[:2] == (200, "api-1")
    assert mesh.backends["api-1"].hits == 1


async def test_bandwidth_paces_the_response(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=1)
    fault(mesh, Kind.BANDWIDTH, rate=100_000)
    start = time.monotonic()
    async with asyncio.timeout(10), client.get(mesh.url("/big?n=200000")) as resp:
        body = await resp.read()
        assert resp.headers.get("Connection", "").lower() == "close"
    took = time.monotonic() - start
    assert len(body) == 200_000
    assert 1.5 <= took <= 2.5, took


async def test_bandwidth_paces_the_request_body(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=1)
    fault(mesh, Kind.BANDWIDTH, rate=100_000)
    start = time.monotonic()
    async with asyncio.timeout(10), client.post(mesh.url("/upload"), data=b"u" * 200_000) as resp:
        assert (await resp.json())["received"] == 200_000
    took = time.monotonic() - start
    assert 1.5 <= took <= 2.5, took


# -- review fixes --------------------------------------------------------------------


async def read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response with a Content-Length body: (head, body)."""
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        return head, await reader.readexactly(length)


async def test_aborts_keep_the_connection_alive(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    ident = fault(mesh, Kind.ABORT, http_status=503)
    reader, writer = await asyncio.open_connection("127.0.0.2", mesh.proxy.bound_port(8080))
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 503 ") and b"connection: close" not in head.lower()
        assert body.strip() == b"fault filter abort"
        # A body that comes after the head is skipped, not taken for the next request.
        writer.write(b"POST /upload HTTP/1.1\r\nHost: api\r\nContent-Length: 10\r\n\r\n")
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 503 ")
        writer.write(b"0123456789")
        writer.write(b"POST /upload HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"5\r\nhello\r\n0\r\n\r\n")
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 503 ") and body.strip() == b"fault filter abort"
        mesh.proxy.engine.faults.remove(ident)
        writer.write(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        head, body = await read_response(reader)
        assert head.startswith(b"HTTP/1.1 200 ") and body == b"api-1"
    finally:
        writer.close()
    assert mesh.backends["api-1"].hits == 1


async def test_an_abort_before_a_large_body_closes(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    fault(mesh, Kind.ABORT, http_status=503)
    port = mesh.proxy.bound_port(8080)
    request = b"POST /upload HTTP/1.1\r\nHost: api\r\nContent-Length: 100000000\r\n\r\n"
    got, was_reset = await raw_until_reset(port, request)
    assert not was_reset and got.startswith(b"HTTP/1.1 503 ")
    assert b"connection: close" in got.lower()


async def test_a_client_that_gives_up_leaves_no_shaper_timer(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    fault(mesh, Kind.BANDWIDTH, rate=50_000)
    reader, writer = await asyncio.open_connection("127.0.0.2", mesh.proxy.bound_port(8080))
    try:
        writer.write(b"GET /big?n=1000000 HTTP/1.1\r\nHost: api\r\n\r\n")
        async with asyncio.timeout(5):
            await reader.readexactly(1000)  # paced: 20 s for all of it
        (down,) = mesh.proxy.engine.forwarder.connections
        transport = down.transport
        assert isinstance(transport, faultio.ShapedTransport)
        shaper = transport.shaper
        faultio.reset(writer.transport)  # gives up (RST)
    finally:
        writer.close()
    for _ in range(50):
        if shaper.timer is None and shaper.empty:
            break
        await asyncio.sleep(0.01)
    assert shaper.timer is None and shaper.empty


async def test_a_refused_request_counts_no_latency_hit(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=2)
    slow = fault(mesh, Kind.LATENCY, latency_ms=1)
    refuse = fault(mesh, Kind.REFUSE, percent=40, seed=9)
    statuses = [(await get(client, mesh.url("/")))[0] for _ in range(60)]
    want = expected_hits(40, 9, 60)
    # Drawn once per request: a hit request is refused by every replica tried.
    assert statuses.count(503) == want and statuses.count(200) == 60 - want
    lat, ref = (mesh.proxy.engine.faults.get(i) for i in (slow, refuse))
    assert lat is not None and ref is not None
    assert (ref.seen, ref.hits) == (60, want)
    assert (lat.seen, lat.hits) == (60, 60 - want)


async def test_a_retry_after_a_real_connect_failure_is_not_delayed_again(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=0)
    probe = socket.socket()
    probe.bind(("127.0.0.9", 0))
    dead = probe.getsockname()[1]
    probe.close()
    mesh.add_dead("api", 1, dead)
    await mesh.add("api", 2)
    ident = fault(mesh, Kind.LATENCY, latency_ms=300)
    start = time.monotonic()
    assert (await get(client, mesh.url("/")))[:2] == (200, "api-2")
    assert 0.3 <= time.monotonic() - start < 0.55  # once, not once per replica tried
    active = mesh.proxy.engine.faults.get(ident)
    assert active is not None and (active.seen, active.hits) == (1, 1)
