"""Routing by the address dialled (never by Host), round robin, the debugging headers."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import aiohttp
import pytest

from meshlocal.proxy.settings import ProxySettings

from .helpers import Mesh, MeshFactory, naming, raw_exchange, service, status_of


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


async def test_any_host_header_reaches_the_endpoint_dialled(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    # ECS routes by address and port: an nginx or BFF that forwards its own
    # Host still reaches the service it dialled.
    mesh = await mesh_factory(service("api", alias="api.shop.local"), replicas=1)
    for host in ("api", "example.com", "api.shop.local", "other:1234"):
        async with client.get(mesh.url(), headers={"Host": host}) as resp:
            assert resp.status == 200, host
            assert await resp.text() == "api-1"


async def test_two_endpoints_on_one_port_each_reach_their_service() -> None:
    # Each endpoint has its own address (VIP) on the same port, as in an ECS task.
    model = naming(
        service("api", 18080),
        service("web", 18080),
        vips={"api": "127.0.1.1", "web": "127.0.1.2"},
    )
    mesh = Mesh(model, ProxySettings(), time.monotonic)
    await mesh.proxy.start()
    try:
        await mesh.add("api")
        await mesh.add("web")
        async with aiohttp.ClientSession() as client:
            for vip, want in (("127.0.1.1", "api-1"), ("127.0.1.2", "web-1")):
                for _ in range(3):
                    async with client.get(
                        f"http://{vip}:18080/", headers={"Host": "example.com"}
                    ) as resp:
                        assert resp.status == 200
                        assert await resp.text() == want
        # Another port on an endpoint's address is refused, as on ECS.
        with pytest.raises(OSError):
            _, writer = await asyncio.open_connection("127.0.1.1", 18081)
            writer.close()
    finally:
        await mesh.close()


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


async def test_update_moves_the_endpoint(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(service("api", alias="old"), replicas=1)
    old_port = mesh.proxy.bound("old")[1]
    out = await raw_exchange(
        "127.0.0.2", old_port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 3
    )
    assert status_of(out) == 200
    await mesh.proxy.update(naming(service("api", alias="new")))
    assert "old" not in mesh.proxy.servers
    with pytest.raises(OSError):
        _, writer = await asyncio.open_connection("127.0.0.2", old_port)
        writer.close()
    new_port = mesh.proxy.bound("new")[1]
    out = await raw_exchange(
        "127.0.0.2", new_port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 3
    )
    assert status_of(out) == 200


async def test_interleaved_clients_each_get_their_own_strict_rotation(
    mesh_factory: MeshFactory,
) -> None:
    # One Envoy per client task: client A's requests don't move client B's position.
    mesh = await mesh_factory(replicas=3)
    port = mesh.proxy.bound_port(8080)
    conns = {
        src: await asyncio.open_connection("127.0.0.2", port, local_addr=(src, 0))
        for src in ("127.0.0.7", "127.0.0.8")
    }
    seen: dict[str, list[str]] = {src: [] for src in conns}
    try:
        for i in range(12):
            src = "127.0.0.7" if i % 3 else "127.0.0.8"  # uneven interleaving
            reader, writer = conns[src]
            writer.write(b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            seen[src].append((await asyncio.wait_for(reader.readexactly(length), 5)).decode())
    finally:
        for _, writer in conns.values():
            writer.close()
    for src, replicas in seen.items():
        first = replicas[0]
        order = ["api-1", "api-2", "api-3"]
        start = order.index(first)
        expected = [order[(start + k) % 3] for k in range(len(replicas))]
        assert replicas == expected, src
    assert seen["127.0.0.8"][0] == "api-1" and seen["127.0.0.7"][0] == "api-1"


@pytest.mark.parametrize("protocol", [None, "http"])
async def test_an_endpoint_that_goes_away_closes_its_open_connections(
    mesh_factory: MeshFactory, protocol: str | None
) -> None:
    # tcp (None) and http: a long-lived client of the old name must not keep
    # reaching the service once the endpoint is gone.
    mesh = await mesh_factory(service("api", alias="old", app_protocol=protocol), replicas=1)
    reader, writer = await asyncio.open_connection("127.0.0.2", mesh.proxy.bound("old")[1])
    try:
        writer.write(b"GET / HTTP/1.1\r\nHost: old\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert await asyncio.wait_for(reader.readexactly(length), 5) == b"api-1"
        await mesh.proxy.update(naming(service("api", alias="new", app_protocol=protocol)))
        # The held connection ends (EOF or reset), it is not served any more.
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            writer.write(b"GET / HTTP/1.1\r\nHost: old\r\n\r\n")
            await asyncio.wait_for(reader.readexactly(1), 5)
    finally:
        writer.close()
