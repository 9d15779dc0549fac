"""Fixtures for the mesh DNS tests: a populated mesh, a live server, a fake upstream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from dnsmesh import PROXY, FakeUpstream, Mesh, populated_mesh, start_upstream

from meshlocal.dns import _mmsg
from meshlocal.dns.resolver import MeshResolver
from meshlocal.dns.server import DnsServer


@pytest.fixture
def mesh() -> Mesh:
    return populated_mesh()


@pytest.fixture
def resolver(mesh: Mesh) -> MeshResolver:
    return MeshResolver(mesh.naming, mesh.registry, PROXY)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[FakeUpstream, int]]:
    proto, server, port = await start_upstream()
    yield proto, port
    assert proto.transport is not None
    proto.transport.close()
    server.close()
    await server.wait_closed()


@pytest.fixture(params=[True, False], ids=["mmsg", "protocol"])
async def server(
    request: pytest.FixtureRequest, resolver: MeshResolver, upstream: tuple[FakeUpstream, int]
) -> AsyncIterator[DnsServer]:
    """The live server, once with batched UDP (recvmmsg) and once with a DatagramProtocol."""
    if request.param and not _mmsg.available():
        pytest.skip("recvmmsg/sendmmsg need Linux")
    srv = DnsServer(
        resolver,
        "127.0.0.1",
        0,
        upstreams=[("127.0.0.5", upstream[1])],
        forward_timeout=1.0,
        tcp_idle_timeout=1.0,
        udp_batching=request.param,
    )
    await srv.start()
    yield srv
    await srv.stop()
    await asyncio.sleep(0)
