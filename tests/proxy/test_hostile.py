"""Hostile input is refused, and nothing ever reaches an address outside the mesh table."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .helpers import Mesh, MeshFactory, raw_exchange, split_response, status_of


class Canary:
    """A listener outside the mesh table; it must never see a connection."""

    def __init__(self) -> None:
        self.connections = 0
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> Canary:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncanary")
            writer.close()

        self._server = await asyncio.start_server(handle, "127.0.0.99", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


@pytest.fixture
async def canary() -> AsyncIterator[Canary]:
    c = await Canary().start()
    yield c
    await c.stop()


async def send(mesh: Mesh, data: bytes) -> bytes:
    return await raw_exchange("127.0.0.2", mesh.proxy.bound_port(8080), data, timeout=3)


async def test_content_length_with_transfer_encoding_is_rejected(
    mesh_factory: MeshFactory,
) -> None:
    mesh = await mesh_factory(replicas=1)
    out = await send(
        mesh,
        b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n",
    )
    assert status_of(out) == 400
    assert out.count(b"HTTP/1.1") == 1  # nothing smuggled through
    assert mesh.backends["api-1"].hits == 0


async def test_conflicting_content_lengths_are_rejected(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    out = await send(
        mesh, b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcd"
    )
    assert status_of(out) == 400
    assert mesh.backends["api-1"].hits == 0


async def test_duplicate_host_is_rejected(mesh_factory: MeshFactory, canary: Canary) -> None:
    mesh = await mesh_factory(replicas=1)
    out = await send(
        mesh, b"GET / HTTP/1.1\r\nHost: api\r\nHost: 127.0.0.99:%d\r\n\r\n" % canary.port
    )
    assert status_of(out) == 400
    assert mesh.backends["api-1"].hits == 0
    assert canary.connections == 0


async def test_oversized_header_is_rejected(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    out = await send(mesh, b"GET / HTTP/1.1\r\nHost: api\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n")
    assert status_of(out) == 431
    # Also when the head never ends.
    out = await send(mesh, b"GET / HTTP/1.1\r\nHost: api\r\nX-Big: " + b"a" * 40_000)
    assert status_of(out) == 431
    assert mesh.backends["api-1"].hits == 0


async def test_absolute_form_target_outside_mesh_is_rejected(
    mesh_factory: MeshFactory, canary: Canary
) -> None:
    mesh = await mesh_factory(replicas=1)
    for target in (
        b"http://127.0.0.99:%d/latest/meta-data/" % canary.port,
        b"http://169.254.169.254/latest/meta-data/",
        b"http://api:8080/",  # even inside the mesh: never a forward proxy
    ):
        out = await send(mesh, b"GET " + target + b" HTTP/1.1\r\nHost: api\r\n\r\n")
        assert status_of(out) == 400, target
    out = await send(
        mesh, b"CONNECT 127.0.0.99:%d HTTP/1.1\r\nHost: 127.0.0.99\r\n\r\n" % canary.port
    )
    assert status_of(out) == 400
    assert canary.connections == 0
    assert mesh.backends["api-1"].hits == 0


async def test_host_outside_mesh_never_picks_the_destination(
    mesh_factory: MeshFactory, canary: Canary
) -> None:
    # The address dialled picks the service; Host is passed on, never followed.
    mesh = await mesh_factory(replicas=1)
    for host in (b"127.0.0.99:%d" % canary.port, b"127.0.0.99", b"169.254.169.254", b"localhost"):
        out = await send(
            mesh, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n"
        )
        assert status_of(out) == 200, host
        assert out.endswith(b"api-1"), host
    assert canary.connections == 0
    assert mesh.backends["api-1"].hits == 4


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: api\r\n folded: x\r\n\r\n",  # obs-fold
        b"GET / HTTP/1.1\r\nHost: api\nX: y\r\n\r\n",  # bare LF
        b"GET / HTTP/1.1\r\nHost : api\r\n\r\n",  # space before colon
        b"GET / HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: api\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/2.0\r\nHost: api\r\n\r\n",
        b"GET /\x00 HTTP/1.1\r\nHost: api\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",  # no Host
    ],
)
async def test_malformed_heads_are_rejected(mesh_factory: MeshFactory, head: bytes) -> None:
    mesh = await mesh_factory(replicas=1)
    out = await send(mesh, head)
    assert 400 <= status_of(out) < 600 and status_of(out) != 200
    assert mesh.backends["api-1"].hits == 0


async def test_malformed_chunked_body_does_not_desync(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    out = await send(
        mesh,
        b"POST /echo HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nGET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n",
    )
    assert b"/smuggled" not in out
    assert all("smuggled" not in str(h) for h in mesh.backends["api-1"].seen_headers)
    assert out == b"" or split_response(out)[0] >= 400


_junk = st.binary(max_size=300) | st.builds(
    lambda m, t, h: m + b" " + t + b" HTTP/1.1\r\n" + h + b"\r\n\r\n",
    st.sampled_from([b"GET", b"POST", b"CONNECT", b"OPTIONS"]),
    st.sampled_from([b"/", b"*", b"http://127.0.0.99/", b"127.0.0.99:80", b"//127.0.0.99/"]),
    st.lists(
        st.sampled_from(
            [
                b"Host: 127.0.0.99",
                b"Host: api",
                b"Host: api.evil",
                b"Content-Length: 3",
                b"Transfer-Encoding: chunked",
                b"Connection: upgrade",
                b"Upgrade: websocket",
                b"X-Forwarded-Host: 127.0.0.99",
            ]
        ),
        max_size=4,
    ).map(b"\r\n".join),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=_junk)
async def test_no_input_reaches_outside_the_mesh_table(
    mesh_factory: MeshFactory, canary: Canary, data: bytes
) -> None:
    mesh = await mesh_factory(replicas=1)
    await raw_exchange("127.0.0.2", mesh.proxy.bound_port(8080), data, 3, half_close=True)
    # Whatever arrived, only the mesh's own replica may have been dialled.
    assert canary.connections == 0
