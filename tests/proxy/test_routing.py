"""Routing by Host header, round robin, the debugging headers, 404s."""

from __future__ import annotations

from collections import Counter

import aiohttp

from .helpers import MeshFactory, raw_exchange, service, status_of


async def test_round_robin_spreads_evenly_and_names_the_replica(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=3)
    answered: Counter[str] = Counter()
    for _ in range(31):
        async with client.get(mesh.url(), headers={"Host": "api:8080"}) as resp:
            body = await resp.text()
            assert resp.status == 200
            # The debugging header names the replica that really answered.
            assert resp.headers["x-meshlocal-replica"] == body
            assert resp.headers["x-meshlocal-route"] == "service-connect"
            answered[body] += 1
    assert set(answered) == {"api-1", "api-2", "api-3"}
    assert max(answered.values()) - min(answered.values()) <= 1


async def test_strict_rotation_order(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=2)
    seen = []
    for _ in range(6):
        async with client.get(mesh.url(), headers={"Host": "api"}) as resp:
            seen.append(await resp.text())
    assert seen[0] != seen[1]
    assert seen == [seen[0], seen[1]] * 3


async def test_alias_and_name_route_to_same_service(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(service("api", alias="api.shop.local"), replicas=1)
    for host in ("api", "API", "api.shop.local", "api.shop.local.:8080"):
        async with client.get(mesh.url(), headers={"Host": host}) as resp:
            assert resp.status == 200, host
            assert await resp.text() == "api-1"


async def test_routes_by_listener_port(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(service("api", 8080), service("web", 3000))
    await mesh.add("api")
    await mesh.add("web")
    async with aiohttp.ClientSession() as client:
        async with client.get(mesh.url("/", 3000), headers={"Host": "web"}) as resp:
            assert await resp.text() == "web-1"
        # `api` exists, but not on the web listener's port.
        async with client.get(mesh.url("/", 3000), headers={"Host": "api"}) as resp:
            assert resp.status == 404


async def test_unknown_host_gets_404_listing_endpoints(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(service("api", alias="backend"), replicas=1)
    async with client.get(mesh.url(), headers={"Host": "nope"}) as resp:
        assert resp.status == 404
        text = await resp.text()
    assert "nope:8080" in text
    assert "http://api:8080" in text
    assert "http://backend:8080" in text
    assert mesh.backends["api-1"].hits == 0


async def test_host_port_must_match_listener(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    port = mesh.proxy.bound_port(8080)
    out = await raw_exchange("127.0.0.2", port, b"GET / HTTP/1.1\r\nHost: api:9999\r\n\r\n")
    assert status_of(out) == 404


async def test_keep_alive_client_connection_serves_many_requests(
    mesh_factory: MeshFactory,
) -> None:
    mesh = await mesh_factory(replicas=2)
    port = mesh.proxy.bound_port(8080)
    # Three pipelined requests on one connection; the last asks to close.
    req = b"GET / HTTP/1.1\r\nHost: api\r\n\r\n"
    out = await raw_exchange(
        "127.0.0.2", port, req + req + b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n"
    )
    assert out.count(b"HTTP/1.1 200 OK") == 3
    assert out.count(b"x-meshlocal-replica: api-1") == 2
    assert out.count(b"x-meshlocal-replica: api-2") == 1


async def test_one_pooled_upstream_connection_for_sequential_requests(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=1)
    for _ in range(20):
        async with client.get(mesh.url(), headers={"Host": "api"}) as resp:
            await resp.read()
    snap = mesh.proxy.metrics.snapshot()["api"]
    assert snap["RequestCount"] == 20
    assert snap["NewConnectionCount"] == 1  # keep-alive pooling, not a connection per request
    assert snap["ActiveConnectionCount"] == 1


async def test_http10_client(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    port = mesh.proxy.bound_port(8080)
    out = await raw_exchange("127.0.0.2", port, b"GET / HTTP/1.0\r\nHost: api\r\n\r\n")
    assert status_of(out) == 200
    assert out.endswith(b"api-1")


async def test_update_naming_drops_cached_routes(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    from .helpers import naming

    mesh = await mesh_factory(service("api", alias="old"), replicas=1)
    async with client.get(mesh.url(), headers={"Host": "old"}) as resp:
        assert resp.status == 200  # now cached
    await mesh.proxy.update(naming(service("api", alias="new")))
    async with client.get(mesh.url(), headers={"Host": "old"}) as resp:
        assert resp.status == 404
    async with client.get(mesh.url(), headers={"Host": "new"}) as resp:
        assert resp.status == 200
