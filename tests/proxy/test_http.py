"""HTTP correctness: headers, framing and bodies pass through as they should."""

from __future__ import annotations

import asyncio

import aiohttp

from .helpers import (
    GZIPPED,
    MeshFactory,
    RawBackend,
    raw_exchange,
    register,
    split_response,
)


async def test_request_hop_by_hop_headers_are_stripped(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    out = await raw_exchange(
        "127.0.0.2",
        mesh.proxy.bound_port(8080),
        b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close, X-Secret\r\nX-Secret: s\r\n"
        b"Keep-Alive: timeout=5\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\n"
        b"Trailer: X-T\r\nProxy-Connection: keep-alive\r\nX-Keep: yes\r\n\r\n",
    )
    assert split_response(out)[0] == 200
    seen = mesh.backends["api-1"].seen_headers[0]
    assert seen["x-keep"] == "yes"
    for hop in (
        "x-secret",
        "keep-alive",
        "te",
        "proxy-authorization",
        "trailer",
        "proxy-connection",
    ):
        assert hop not in seen, hop
    # The client asked to close; that is not forwarded, the replica connection stays pooled.
    assert seen.get("connection", "keep-alive").lower() != "close"


async def test_response_hop_by_hop_headers_are_stripped(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory()
    backend = await RawBackend(
        "127.0.0.31",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Hop\r\n"
        b"X-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Stay: 1\r\n\r\nok",
    ).start()
    try:
        register(mesh, backend)
        out = await raw_exchange(
            "127.0.0.2",
            mesh.proxy.bound_port(8080),
            b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
        )
        status, headers, body = split_response(out)
        assert (status, body) == (200, b"ok")
        assert headers["x-stay"] == "1"
        assert "x-hop" not in headers
        assert "keep-alive" not in headers
        assert headers["x-meshlocal-replica"] == "api-1"
    finally:
        await backend.stop()


async def test_x_forwarded_headers(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    out = await raw_exchange(
        "127.0.0.2",
        mesh.proxy.bound_port(8080),
        b"GET / HTTP/1.1\r\nHost: api:8080\r\nX-Forwarded-For: 10.0.0.1\r\n"
        b"X-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\nConnection: close\r\n\r\n",
    )
    assert split_response(out)[0] == 200
    raw = mesh.backends["api-1"].raw_headers[0]
    names = [n.lower() for n, _ in raw]
    assert names.count("x-forwarded-for") == 1
    assert names.count("x-forwarded-proto") == 1
    seen = mesh.backends["api-1"].seen_headers[0]
    assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == "api:8080"


async def test_gzip_body_and_content_length_untouched(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=1)
    async with client.get(
        mesh.url("/gzip"), headers={"Host": "api", "Accept-Encoding": "gzip"}
    ) as resp:
        body = await resp.read()
        assert resp.headers["Content-Encoding"] == "gzip"
        assert resp.headers["Content-Length"] == str(len(GZIPPED))
    assert body == GZIPPED  # still compressed, byte for byte


async def test_chunked_response_framing_untouched(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory()
    chunked = b"5\r\nhello\r\n3;ext=1\r\nabc\r\n0\r\nX-Trailer: t\r\n\r\n"
    backend = await RawBackend(
        "127.0.0.32",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Type: text/plain\r\n\r\n"
        + chunked,
    ).start()
    try:
        register(mesh, backend)
        out = await raw_exchange(
            "127.0.0.2",
            mesh.proxy.bound_port(8080),
            b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
        )
        status, headers, body = split_response(out)
        assert status == 200
        assert headers["transfer-encoding"] == "chunked"
        assert "content-length" not in headers
        assert body == chunked  # chunk sizes, extensions and trailers as sent
    finally:
        await backend.stop()


async def test_chunked_request_body_reaches_replica_unchanged(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory()
    backend = await RawBackend(
        "127.0.0.33", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", until=b"0\r\n\r\n"
    ).start()
    try:
        register(mesh, backend)
        body = b"4\r\nwiki\r\n5\r\npedia\r\n0\r\n\r\n"
        out = await raw_exchange(
            "127.0.0.2",
            mesh.proxy.bound_port(8080),
            b"POST /up HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n" + body,
        )
        assert split_response(out)[0] == 200
        head, _, got = backend.received.partition(b"\r\n\r\n")
        assert b"Transfer-Encoding: chunked" in head
        assert b"Content-Length" not in head
        assert got == body
    finally:
        await backend.stop()


async def test_content_length_request_body(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=2)
    for size in (0, 1, 100_000, 1_000_000):
        payload = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
        async with client.post(mesh.url("/echo"), data=payload, headers={"Host": "api"}) as r:
            assert r.status == 200
            assert await r.read() == payload


async def test_head_request_has_no_body(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    port = mesh.proxy.bound_port(8080)
    out = await raw_exchange(
        "127.0.0.2",
        port,
        b"HEAD / HTTP/1.1\r\nHost: api\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
    )
    # Two responses on one connection: the HEAD's Content-Length announced no body bytes.
    assert out.count(b"HTTP/1.1 200 OK") == 2
    assert out.endswith(b"api-1")


async def test_expect_100_continue(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    reader, writer = await asyncio.open_connection("127.0.0.2", mesh.proxy.bound_port(8080))
    try:
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        async with asyncio.timeout(5):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100")
        writer.write(b"hello")
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(5) == b"hello"
    finally:
        writer.close()


async def test_websocket_passthrough(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=2)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(mesh.url("/ws"), headers={"Host": "api"}) as ws,
    ):
        await ws.send_str("ping")
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.type == aiohttp.WSMsgType.TEXT
        assert msg.data in ("api-1:ping", "api-2:ping")
        await ws.send_bytes(b"\x00\x01" * 40_000)
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.data == b"\x00\x01" * 40_000
        await ws.send_str("again")
        msg = await asyncio.wait_for(ws.receive(), 5)
        assert msg.data.endswith(":again")
    # The tunnel is not a request in flight: nothing keeps a replica from draining.
    assert all(mesh.proxy.balancer.in_flight(f"cid-api-{i}") == 0 for i in (1, 2))


async def test_half_closed_client_still_gets_its_answer(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=1)
    out = await raw_exchange(
        "127.0.0.2",
        mesh.proxy.bound_port(8080),
        b"GET /?delay=0.2 HTTP/1.1\r\nHost: api\r\n\r\n",
        half_close=True,
    )
    status, headers, body = split_response(out)
    assert (status, body) == (200, b"api-1")
    assert headers["connection"] == "close"


async def test_identical_heads_still_get_their_own_replica_and_client_address(
    mesh_factory: MeshFactory,
) -> None:
    # Byte-identical responses from two replicas, byte-identical requests from
    # two client addresses: the parsed-head cache must not mix them up.
    mesh = await mesh_factory()
    canned = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    one = await RawBackend("127.0.0.34", canned).start()
    two = await RawBackend("127.0.0.35", canned).start()
    try:
        register(mesh, one, 1)
        register(mesh, two, 2)
        port = mesh.proxy.bound_port(8080)
        seen = []
        for source in ("127.0.0.5", "127.0.0.6", "127.0.0.5", "127.0.0.6"):
            reader, writer = await asyncio.open_connection(
                "127.0.0.2", port, local_addr=(source, 0)
            )
            writer.write(b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
            out = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            seen.append(split_response(out)[1]["x-meshlocal-replica"])
        # Each client address has its own rotation (one Envoy per client task).
        assert seen == ["api-1", "api-1", "api-2", "api-2"]
        forwarded = [
            line
            for line in (one.received + two.received).split(b"\r\n")
            if line.startswith(b"X-Forwarded-For")
        ]
        assert (
            sorted(forwarded)
            == [b"X-Forwarded-For: 127.0.0.5"] * 2 + [b"X-Forwarded-For: 127.0.0.6"] * 2
        )
    finally:
        await one.stop()
        await two.stop()


async def test_without_head_cache(mesh_factory: MeshFactory) -> None:
    from meshlocal.proxy.settings import ProxySettings

    mesh = await mesh_factory(settings=ProxySettings(head_cache=0), replicas=2)
    port = mesh.proxy.bound_port(8080)
    req = b"GET / HTTP/1.1\r\nHost: api\r\n\r\n"
    out = await raw_exchange(
        "127.0.0.2", port, req * 3 + req.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    )
    assert out.count(b"x-meshlocal-replica: api-1") == 2
    assert out.count(b"x-meshlocal-replica: api-2") == 2
    assert not mesh.proxy.engine.forwarder.request_heads


async def test_response_head_with_bare_lf_is_accepted_and_sent_as_crlf(
    mesh_factory: MeshFactory,
) -> None:
    """busybox CGI scripts end header lines with "\\n"; clients still get CRLF."""
    mesh = await mesh_factory()
    backend = await RawBackend(
        "127.0.0.31", b"HTTP/1.1 200 OK\nContent-Length: 2\nX-Stay: 1\n\nok"
    ).start()
    try:
        register(mesh, backend)
        out = await raw_exchange(
            "127.0.0.2",
            mesh.proxy.bound_port(8080),
            b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
        )
        status, headers, body = split_response(out)
        assert (status, body) == (200, b"ok")
        assert headers["x-stay"] == "1"
        assert b"\n\n" not in out.split(b"\r\n\r\n")[0]
    finally:
        await backend.stop()
