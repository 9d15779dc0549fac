"""Retries, outlier ejection, timeouts, no replica, draining, health, faults under load."""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from collections.abc import Callable

import aiohttp

from meshlocal.proxy.settings import ProxySettings
from meshlocal.registry import Health

from .helpers import FakeClock, MeshFactory, raw_exchange, service, split_response

# The test clients connect from 127.0.0.1: balancer state is kept per client address.
CLIENT = "127.0.0.1"


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


def closed_port() -> int:
    """A port on 127.0.0.9 that nothing listens on (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.9", 0))
        return int(s.getsockname()[1])


async def get(client: aiohttp.ClientSession, url: str, path_host: str = "api") -> tuple[int, str]:
    async with client.get(url, headers={"Host": path_host}) as resp:
        return resp.status, resp.headers.get("x-meshlocal-replica", "")


async def test_connect_failure_is_retried_on_another_replica(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory()
    await mesh.add()  # api-1
    mesh.add_dead("api", 2, closed_port())
    await mesh.add(index=3)
    results = [await get(client, mesh.url()) for _ in range(12)]
    assert all(status == 200 for status, _ in results)
    assert {r for _, r in results} == {"api-1", "api-3"}


async def test_at_most_two_retries(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory()
    for i in range(1, 5):
        mesh.add_dead("api", i, closed_port())
    out = await raw_exchange(
        "127.0.0.2", mesh.proxy.bound_port(8080), b"GET / HTTP/1.1\r\nHost: api\r\n\r\n"
    )
    status, _, body = split_response(out)
    assert status == 503
    assert b"tried 3" in body  # the first attempt and two retries, no more


async def test_ejection_after_five_5xx_and_its_duration(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    clock = FakeClock()
    mesh = await mesh_factory(clock=clock)
    good = await mesh.add()
    bad = await mesh.add()
    bad.status = 500

    async def bad_hits_for(n: int) -> int:
        before = bad.hits
        for _ in range(n):
            await get(client, mesh.url())
        return bad.hits - before

    # Round robin: 10 requests give the bad replica its 5 consecutive 5xx.
    assert await bad_hits_for(10) == 5
    # Ejected now: everything goes to the good one.
    assert await bad_hits_for(10) == 0
    clock.now += 29.0
    assert await bad_hits_for(6) == 0
    clock.now += 1.5  # 30 s x 1 ejection has passed
    assert await bad_hits_for(10) == 5
    # Second ejection lasts 60 s.
    assert await bad_hits_for(6) == 0
    clock.now += 45.0
    assert await bad_hits_for(6) == 0
    clock.now += 16.0
    assert await bad_hits_for(4) == 2
    assert good.hits > 0
    replica = mesh.registry.get("cid-api-2")
    assert replica is not None
    assert mesh.proxy.balancer.ejections(replica, CLIENT) == 2


async def test_success_resets_the_consecutive_count(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(clock=FakeClock())
    flaky = await mesh.add()
    flaky.status = 500
    for _ in range(4):
        await get(client, mesh.url())
    flaky.status = 200
    await get(client, mesh.url())
    await mesh.add()
    flaky.status = 500
    for _ in range(8):  # 4 more failures on flaky: 4 in a row, not 9
        await get(client, mesh.url())
    replica = mesh.registry.get("cid-api-1")
    assert replica is not None
    assert not mesh.proxy.balancer.is_ejected(replica, CLIENT)


async def test_last_replica_is_never_ejected(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(clock=FakeClock())
    only = await mesh.add()
    only.status = 503
    statuses = [(await get(client, mesh.url()))[0] for _ in range(12)]
    assert statuses == [503] * 12
    assert only.hits == 12  # every request still reached it: no ejection


async def test_slow_replica_times_out_with_504(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(settings=ProxySettings(request_timeout_s=0.3))
    backend = await mesh.add()
    out = await raw_exchange(
        "127.0.0.2",
        mesh.proxy.bound_port(8080),
        b"GET /?delay=3 HTTP/1.1\r\nHost: api\r\n\r\n",
        timeout=2.5,
    )
    status, _, body = split_response(out)
    assert status == 504
    assert b"api-1" in body and b"0.3 s" in body
    assert backend.hits == 1
    assert mesh.proxy.metrics.snapshot()["api"]["HTTPCode_Target_5XX_Count"] == 1


async def test_idle_client_connection_is_closed(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(settings=ProxySettings(idle_timeout_s=0.4), replicas=1)
    reader, writer = await asyncio.open_connection("127.0.0.2", mesh.proxy.bound_port(8080))
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
        async with asyncio.timeout(3):
            await reader.readuntil(b"\r\n\r\napi-1")
            # Then silence: the proxy must hang up on its own.
            assert await reader.read() == b""
    finally:
        writer.close()


async def test_no_replica_gives_503_with_reason(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory()
    port = mesh.proxy.bound_port(8080)
    out = await raw_exchange("127.0.0.2", port, b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
    status, _, body = split_response(out)
    assert status == 503
    assert b"no replica of service 'api' is running" in body

    await mesh.add()
    await mesh.add()
    mesh.registry.set_health("cid-api-1", Health.UNHEALTHY)
    mesh.registry.set_draining("cid-api-2")
    out = await raw_exchange("127.0.0.2", port, b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
    status, _, body = split_response(out)
    assert status == 503
    assert b"api-1: unhealthy" in body and b"api-2: draining" in body


async def test_unhealthy_replica_leaves_rotation_and_comes_back(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=2)
    mesh.registry.set_health("cid-api-2", Health.UNHEALTHY)
    assert {(await get(client, mesh.url()))[1] for _ in range(6)} == {"api-1"}
    mesh.registry.set_health("cid-api-2", Health.STARTING)
    assert {(await get(client, mesh.url()))[1] for _ in range(6)} == {"api-1"}
    mesh.registry.set_health("cid-api-2", Health.HEALTHY)
    assert {(await get(client, mesh.url()))[1] for _ in range(6)} == {"api-1", "api-2"}


async def test_scale_in_drains_in_flight_requests(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=2)
    # Pin a slow request to api-1 (round robin starts there).
    slow = asyncio.ensure_future(client.get(mesh.url("/?delay=0.8"), headers={"Host": "api"}))
    await until(lambda: mesh.proxy.balancer.in_flight("cid-api-1") == 1)
    drain = asyncio.ensure_future(mesh.proxy.drain("cid-api-1", timeout_s=5))
    await asyncio.sleep(0.05)
    assert not drain.done()
    # New requests go to the other replica only.
    assert {(await get(client, mesh.url()))[1] for _ in range(4)} == {"api-2"}
    resp = await slow
    assert resp.status == 200
    assert await resp.text() == "api-1"
    resp.release()
    assert await asyncio.wait_for(drain, 3) is True
    assert mesh.proxy.engine.pool.idle_count("cid-api-1") == 0


async def test_drain_times_out_when_requests_outlive_it(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=1)
    slow = asyncio.ensure_future(client.get(mesh.url("/?delay=1.0"), headers={"Host": "api"}))
    await until(lambda: mesh.proxy.balancer.in_flight("cid-api-1") == 1)
    assert await mesh.proxy.drain("cid-api-1", timeout_s=0.2) is False
    (await slow).release()


async def test_kill_backend_under_load_fails_only_in_flight(
    mesh_factory: MeshFactory,
) -> None:
    mesh = await mesh_factory(replicas=3)
    victim = mesh.backends["api-2"]
    concurrency, total = 8, 600
    outcomes: Counter[str] = Counter()
    done = 0
    killed = asyncio.Event()

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while done < total:
            done += 1
            if done == total // 3:
                killed.set()
            try:
                async with session.get(mesh.url("/?delay=0.002"), headers={"Host": "api"}) as resp:
                    await resp.read()
                    outcomes["ok" if resp.status == 200 else f"http{resp.status}"] += 1
            except aiohttp.ClientError:
                outcomes["error"] += 1

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        workers = [asyncio.ensure_future(worker(session)) for _ in range(concurrency)]
        await asyncio.wait_for(killed.wait(), 20)
        await victim.stop()  # closes its listener and its connections
        await asyncio.wait_for(asyncio.gather(*workers), 60)
    failed = total - outcomes["ok"]
    # Only requests that were in flight on the victim may fail; never more than concurrency.
    assert failed <= concurrency, outcomes
    assert outcomes["ok"] >= total - concurrency
    # And the dead replica stops getting traffic (connect failures retried, then ejected).
    replica = mesh.registry.get("cid-api-2")
    assert replica is not None
    assert mesh.proxy.balancer.is_ejected(replica, CLIENT)


async def test_public_endpoint_routes_by_longest_path_prefix(mesh_factory: MeshFactory) -> None:
    from meshlocal.manifest.model import ServiceType
    from meshlocal.proxy.app import PublicEndpoint

    lbws = ServiceType.LOAD_BALANCED_WEB_SERVICE
    mesh = await mesh_factory(
        service("front", 8080, type=lbws, http_path="/"),
        service("api", 8081, type=lbws, http_path="api"),
        service("apiv2", 8082, type=lbws, http_path="api/v2"),
    )
    for name in ("front", "front", "api", "apiv2"):
        await mesh.add(name)
    public = PublicEndpoint(mesh.naming, mesh.registry, "127.0.0.3", 0, engine=mesh.proxy.engine)
    await public.start()
    try:
        url = f"http://127.0.0.3:{public.bound}"
        async with aiohttp.ClientSession() as session:

            async def who(path: str) -> tuple[str, str]:
                async with session.get(url + path) as resp:
                    return await resp.text(), resp.headers["x-meshlocal-route"]

            assert await who("/api/v2/items") == ("apiv2-1", "public-endpoint")
            assert (await who("/api/v2"))[0] == "apiv2-1"
            assert (await who("/api/v1"))[0] == "api-1"
            assert (await who("/api"))[0] == "api-1"
            assert (await who("/apix"))[0].startswith("front-")  # not a path-segment match
            fronts = {(await who("/"))[0] for _ in range(4)}
            assert fronts == {"front-1", "front-2"}  # round robin as an ALB does
    finally:
        await public.stop()


async def test_idle_pooled_replica_connections_are_closed(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(settings=ProxySettings(idle_timeout_s=0.3), replicas=1)
    status, _ = await get(client, mesh.url())
    assert status == 200
    pool = mesh.proxy.engine.pool
    assert pool.idle_count("cid-api-1") == 1
    await until(lambda: pool.idle_count("cid-api-1") == 0, timeout=5)
    await until(lambda: mesh.proxy.metrics.snapshot()["api"]["ActiveConnectionCount"] == 0)
    # A later request opens a fresh connection and works.
    assert (await get(client, mesh.url()))[0] == 200
    assert mesh.proxy.metrics.snapshot()["api"]["NewConnectionCount"] == 2
