"""Faults on HTTP/2 and gRPC endpoints (per stream): grpcio and h2c clients and replicas."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from h2.errors import ErrorCodes

from meshlocal.faults import Fault, Kind, expected_hits
from meshlocal.proxy.faultio import CONNECT_FAILURE
from meshlocal.registry import Replica

from .faultkit import added_p50, binomial_99
from .test_http2 import (
    PROXY_HOST,
    H2Client,
    Harness,
    channel,
    grpc_replicas,
    h2_replicas,
    harness,
    source_ip,
)

__all__ = ["harness"]  # the fixture, imported for pytest

FRONT_END = "127.0.0.3"
WORKER = "127.0.0.4"


def fault(h: Harness, kind: Kind, **kw: object) -> str:
    return h.proxy.faults.add(Fault("api", kind, **kw)).id  # type: ignore[arg-type]


def who(ch: Any, request: bytes = b"hi", timeout: float = 10) -> bytes:
    out: bytes = ch.unary_unary("/test.Echo/Who")(request, timeout=timeout)
    return out


def outcomes(h: Harness, n: int) -> list[str]:
    """n unary calls on one channel: the replica that answered, or the error's code name."""
    out = []
    with channel(h) as ch:
        for _ in range(n):
            try:
                out.append(who(ch).decode())
            except grpc.RpcError as exc:
                out.append(f"{exc.code().name}:{exc.details()}")
    return out


async def client(h: Harness, source: str | None = None) -> H2Client:
    c = await H2Client().connect(PROXY_HOST, h.port, source)
    h.cleanups.append(c.close)
    return c


# -- latency -------------------------------------------------------------------------


async def test_grpc_latency_holds_each_call(harness: Callable[..., Any]) -> None:
    h = await harness(grpc=True)
    await grpc_replicas(h, 2)
    fault(h, Kind.LATENCY, latency_ms=100, replica=2)

    def run() -> list[tuple[str, float]]:
        with channel(h) as ch:
            who(ch)  # connected before timing

            def timed(_: int) -> tuple[str, float]:
                start = time.perf_counter()
                name = who(ch).decode()
                return name, (time.perf_counter() - start) * 1000

            with ThreadPoolExecutor(max_workers=10) as pool:
                return list(pool.map(timed, range(400)))

    samples = await asyncio.to_thread(run)
    p50, n = added_p50(samples, "api-2", "api-1")
    assert n == 200, n  # strict round robin: every other call
    assert 80 <= p50 <= 120, p50
    assert min(ms for name, ms in samples if name == "api-2") >= 98


async def test_h2_delay_does_not_count_toward_the_request_timeout(
    harness: Callable[..., Any],
) -> None:
    h = await harness(grpc=False, request_timeout_s=0.3)
    await h2_replicas(h, 1)
    fault(h, Kind.LATENCY, latency_ms=600)
    c = await client(h)
    start = time.monotonic()
    r = await c.request("GET", "/")
    assert (r.status, bytes(r.body)) == (200, b"api-1")
    assert time.monotonic() - start >= 0.6


# -- abort ---------------------------------------------------------------------------


async def test_grpc_seeded_abort_is_exact_and_trailers_only(harness: Callable[..., Any]) -> None:
    h = await harness(grpc=True)
    (replica,) = await grpc_replicas(h, 1)
    ident = fault(h, Kind.ABORT, grpc_status=8, percent=30, seed=5)
    got = await asyncio.to_thread(outcomes, h, 200)
    want = expected_hits(30, 5, 200)
    assert got.count("RESOURCE_EXHAUSTED:fault filter abort") == want
    # RESOURCE_EXHAUSTED is a 429 to ECS: calls, not errors.
    assert [(e.calls, e.errors) for e in h.metrics.edges.values()] == [(200, 0)]
    assert got.count("api-1") == 200 - want
    assert replica.hits == 200 - want
    active = h.proxy.faults.get(ident)
    assert active is not None and (active.seen, active.hits) == (200, want)
    # Answered by the fault, not by a replica: no Target/gRPC status metric counts it.
    assert h.snap().get("GrpcStatusCount", {}).get("8", 0) == 0


async def test_grpc_abort_is_a_trailers_only_response(harness: Callable[..., Any]) -> None:
    h = await harness(grpc=True)
    (replica,) = await grpc_replicas(h, 1)
    fault(h, Kind.ABORT, grpc_status=14)
    c = await client(h)
    r = await c.request("POST", "/test.Echo/Who")
    assert r.status == 200 and r.reset is None
    assert (r.headers[b"grpc-status"], r.headers[b"grpc-message"]) == (b"14", b"fault filter abort")
    assert (bytes(r.body), r.trailers) == (b"", {})  # all in the one HEADERS frame
    assert replica.hits == 0
    # UNAVAILABLE is a 5xx to ECS: one failed call on the caller's edge.
    ((_, edge),) = h.metrics.edges.items()
    assert (edge.calls, edge.errors) == (1, 1)


async def test_h2_unseeded_abort_is_within_the_binomial_interval(
    harness: Callable[..., Any],
) -> None:
    h = await harness(grpc=False)
    await h2_replicas(h, 1)
    fault(h, Kind.ABORT, http_status=500, percent=50)
    c = await client(h)
    low, high = binomial_99(200, 0.5)
    # A correct proxy falls outside a 99 % interval 1 time in 100; a second sample
    # only then makes a false failure 1 in 10,000 (a biased one fails both).
    for _ in range(2):
        responses = await asyncio.gather(*(c.request("GET", "/") for _ in range(200)))
        statuses = [r.status for r in responses]
        if low <= statuses.count(500) <= high:
            break
    assert low <= statuses.count(500) <= high
    assert statuses.count(500) + statuses.count(200) == 200
    assert all(bytes(r.body).strip() == b"fault filter abort" for r in responses if r.status == 500)


async def test_grpc_abort_removed_restores_the_next_call(harness: Callable[..., Any]) -> None:
    h = await harness(grpc=True)
    await grpc_replicas(h, 1)
    ident = fault(h, Kind.ABORT, grpc_status=14)

    with channel(h) as ch:

        def call() -> str:
            try:
                return who(ch).decode()
            except grpc.RpcError as exc:
                return str(exc.code().name)

        assert await asyncio.to_thread(call) == "UNAVAILABLE"
        h.proxy.faults.remove(ident)
        assert await asyncio.to_thread(call) == "api-1"  # the next call, same channel


# -- reset ---------------------------------------------------------------------------


async def test_reset_at_once_resets_the_stream_not_the_connection(
    harness: Callable[..., Any],
) -> None:
    h = await harness(grpc=False)
    (replica,) = await h2_replicas(h, 1)
    ident = fault(h, Kind.RESET)
    c = await client(h)
    r = await c.request("GET", "/")
    assert r.reset == ErrorCodes.INTERNAL_ERROR and r.status == 0
    assert replica.hits == 0
    h.proxy.faults.remove(ident)
    again = await c.request("GET", "/")  # the same connection
    assert (again.status, bytes(again.body)) == (200, b"api-1")


async def test_grpc_reset_is_the_callers_error(harness: Callable[..., Any]) -> None:
    h = await harness(grpc=True)
    await grpc_replicas(h, 1)
    fault(h, Kind.RESET)
    got = await asyncio.to_thread(outcomes, h, 3)
    assert all(g.startswith("INTERNAL:") for g in got), got
    calls = [(e.calls, e.errors) for e in h.metrics.edges.values()]
    assert [sum(c) for c in zip(*calls, strict=True)] == [3, 3]  # each reset is a failed call


async def test_reset_after_n_bytes_gives_the_stream_exactly_n(
    harness: Callable[..., Any],
) -> None:
    h = await harness(grpc=False)
    await h2_replicas(h, 1)
    fault(h, Kind.RESET, after_bytes=5000)
    c = await client(h)
    r = await c.request("GET", "/big?n=100000")
    assert r.status == 200
    assert len(r.body) == 5000
    assert r.reset == ErrorCodes.INTERNAL_ERROR


# -- refuse and partition ------------------------------------------------------------


async def test_grpc_refuse_is_unavailable_and_not_an_outlier(harness: Callable[..., Any]) -> None:
    h = await harness(grpc=True)
    (replica,) = await grpc_replicas(h, 1)
    fault(h, Kind.REFUSE)
    got = await asyncio.to_thread(outcomes, h, 6)
    assert got == [f"UNAVAILABLE:{CONNECT_FAILURE}"] * 6
    assert replica.hits == 0
    assert not h.balancer.ejected_for(h.registry.for_service("api")[0])


async def test_grpc_refusing_one_replica_retries_on_another(harness: Callable[..., Any]) -> None:
    h = await harness(grpc=True)
    first, second = await grpc_replicas(h, 2)
    fault(h, Kind.REFUSE, replica=2)
    got = await asyncio.to_thread(outcomes, h, 6)
    assert got == ["api-1"] * 6
    assert (first.hits, second.hits) == (6, 0)


async def test_h2_refuse_is_envoys_503(harness: Callable[..., Any]) -> None:
    h = await harness(grpc=False)
    await h2_replicas(h, 1)
    fault(h, Kind.REFUSE)
    c = await client(h)
    r = await c.request("GET", "/")
    assert (r.status, bytes(r.body).strip()) == (503, CONNECT_FAILURE.encode())


async def test_partition_only_between_the_named_services(harness: Callable[..., Any]) -> None:
    h = await harness(grpc=False, connect_timeout_s=0.3)
    (replica,) = await h2_replicas(h, 1)
    h.registry.add_client(Replica("front-end", 1, "cid-fe-1", FRONT_END, None))
    h.registry.add_client(Replica("worker", 1, "cid-worker-1", WORKER, None))
    fault(h, Kind.PARTITION, source="front-end")
    fe, worker = await client(h, FRONT_END), await client(h, WORKER)
    start = time.monotonic()
    r = await fe.request("POST", "/upload", b"swallowed")
    waited = time.monotonic() - start
    assert (r.status, bytes(r.body).strip()) == (503, CONNECT_FAILURE.encode())
    assert 0.28 <= waited < 1.5, waited
    ok = await worker.request("GET", "/")
    assert (ok.status, bytes(ok.body)) == (200, b"api-1")
    assert (replica.hits, replica.received) == (1, 0)


async def test_grpc_partition_from_the_callers_service(harness: Callable[..., Any]) -> None:
    h = await harness(grpc=True, connect_timeout_s=0.2)
    await grpc_replicas(h, 1)
    h.registry.add_client(Replica("front-end", 1, "cid-fe-1", source_ip(h), None))
    ident = fault(h, Kind.PARTITION, source="worker")
    assert await asyncio.to_thread(outcomes, h, 2) == ["api-1"] * 2  # not this caller's
    h.proxy.faults.remove(ident)
    fault(h, Kind.PARTITION, source="front-end")
    assert await asyncio.to_thread(outcomes, h, 1) == [f"UNAVAILABLE:{CONNECT_FAILURE}"]


# -- bandwidth and replica targeting -------------------------------------------------


async def test_bandwidth_paces_the_response(harness: Callable[..., Any]) -> None:
    h = await harness(grpc=False)
    await h2_replicas(h, 1)
    fault(h, Kind.BANDWIDTH, rate=100_000)
    c = await client(h)
    start = time.monotonic()
    r = await c.request("GET", "/big?n=200000")
    took = time.monotonic() - start
    assert (r.status, len(r.body)) == (200, 200_000)
    assert 1.5 <= took <= 2.5, took


async def test_bandwidth_paces_the_request_body(harness: Callable[..., Any]) -> None:
    h = await harness(grpc=False)
    await h2_replicas(h, 1)
    fault(h, Kind.BANDWIDTH, rate=100_000)
    c = await client(h)
    start = time.monotonic()
    r = await c.request("POST", "/upload", b"u" * 200_000)
    took = time.monotonic() - start
    assert bytes(r.body).startswith(b"200000 ")
    assert 1.5 <= took <= 2.5, took


async def test_a_replica_fault_slows_only_that_replica(harness: Callable[..., Any]) -> None:
    h = await harness(grpc=True)
    await grpc_replicas(h, 2)
    fault(h, Kind.LATENCY, latency_ms=150, replica=2)

    def run() -> dict[str, list[float]]:
        seen: dict[str, list[float]] = {"api-1": [], "api-2": []}
        with channel(h) as ch:
            who(ch)
            for _ in range(8):
                start = time.perf_counter()
                name = who(ch).decode()
                seen[name].append(time.perf_counter() - start)
        return seen

    seen = await asyncio.to_thread(run)
    assert len(seen["api-1"]) == len(seen["api-2"]) == 4
    assert min(seen["api-2"]) >= 0.15
    assert statistics.median(seen["api-2"]) - statistics.median(seen["api-1"]) >= 0.12


# -- review fixes --------------------------------------------------------------------


async def test_grpc_seeded_refuse_is_drawn_once_per_call(harness: Callable[..., Any]) -> None:
    h = await harness(grpc=True)
    first, second = await grpc_replicas(h, 2)
    slow = fault(h, Kind.LATENCY, latency_ms=1)
    refuse = fault(h, Kind.REFUSE, percent=30, seed=4)
    got = await asyncio.to_thread(outcomes, h, 60)
    want = expected_hits(30, 4, 60)
    # A hit call is refused by every replica it tries, without a new draw.
    assert got.count(f"UNAVAILABLE:{CONNECT_FAILURE}") == want
    assert first.hits + second.hits == 60 - want
    lat, ref = (h.proxy.faults.get(i) for i in (slow, refuse))
    assert lat is not None and ref is not None
    assert (ref.seen, ref.hits) == (60, want)
    assert (lat.seen, lat.hits) == (60, 60 - want)  # never counted for a refused call
