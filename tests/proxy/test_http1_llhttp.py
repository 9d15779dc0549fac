"""llhttp-specific HTTP/1 cases, end to end through the real proxy (HTTP mode).

Real sockets both ways: a raw client, the proxy, and real replicas (aiohttp,
or byte-exact ones that record what reached them). Each case checks what the
client got and, where it matters, what the replica saw.
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from meshlocal.registry import Replica

from .helpers import (
    Backend,
    Mesh,
    MeshFactory,
    RawBackend,
    raw_exchange,
    register,
    split_response,
    status_of,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
TIMEOUT = 3.0


def port_of(mesh: Mesh) -> int:
    return mesh.proxy.bound_port(8080)


async def send(mesh: Mesh, data: bytes) -> bytes:
    return await raw_exchange("127.0.0.2", port_of(mesh), data, timeout=TIMEOUT)


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Split a stream of Content-Length-framed responses (what aiohttp replicas send)."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, raw[:200]
        status, headers, _ = split_response(head + sep)
        length = int(headers["content-length"])
        assert len(rest) >= length, (len(rest), length)
        out.append((status, headers, rest[:length]))
        raw = rest[length:]
    return out


@pytest.fixture
async def raw_backends() -> AsyncIterator[Callable[..., Awaitable[RawBackend]]]:
    made: list[RawBackend] = []

    async def make(host: str, response: bytes, until: bytes = b"\r\n\r\n") -> RawBackend:
        backend = await RawBackend(host, response, until).start()
        made.append(backend)
        return backend

    yield make
    for b in made:
        await b.stop()


async def one_replica(
    mesh_factory: MeshFactory,
    raw_backends: Callable[..., Awaitable[RawBackend]],
    host: str,
    response: bytes,
    until: bytes = b"\r\n\r\n",
) -> tuple[Mesh, RawBackend]:
    """A mesh whose api has one raw replica answering `response`."""
    mesh = await mesh_factory()
    backend = await raw_backends(host, response, until=until)
    register(mesh, backend)
    return mesh, backend


@dataclass
class PathBackend(Backend):
    """An aiohttp replica that also records each request's target."""

    paths: list[str] = field(default_factory=list)

    def _record(self, request: web.Request) -> None:
        super()._record(request)
        self.paths.append(request.path_qs)


async def path_backend(mesh: Mesh, host: str, index: int = 1) -> PathBackend:
    backend = await PathBackend(f"api-{index}", host).start()
    mesh.backends[f"api-{index}"] = backend  # stopped with the mesh
    mesh.registry.upsert(Replica("api", index, f"cid-api-{index}", backend.host, backend.port))
    return backend


def attach(mesh: Mesh, backend: ScriptedBackend) -> None:
    mesh.registry.upsert(Replica("api", 1, "cid-scripted-1", backend.host, backend.port))


class ScriptedBackend:
    """A replica run by a script per connection; `received` is every byte it read."""

    def __init__(
        self,
        host: str,
        script: Callable[[ScriptedBackend, asyncio.StreamReader, asyncio.StreamWriter], Awaitable],
    ) -> None:
        self.host = host
        self.script = script
        self.received = b""
        self.done = asyncio.Event()  # a connection's handler returned
        self.saw_eof = False  # ... because the proxy closed it (not a timeout)
        self.port = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> ScriptedBackend:
        self._server = await asyncio.start_server(self._handle, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(TIMEOUT):
                await self.script(self, reader, writer)
                # Then record whatever else arrives until the proxy closes.
                while chunk := await reader.read(65536):
                    self.received += chunk
                self.saw_eof = True
        except ConnectionError:
            self.saw_eof = True
        except TimeoutError:
            pass
        finally:
            writer.close()
            self.done.set()

    async def until(self, reader: asyncio.StreamReader, marker: bytes) -> bytes:
        data = await reader.readuntil(marker)
        self.received += data
        return data

    async def exactly(self, reader: asyncio.StreamReader, n: int) -> bytes:
        data = await reader.readexactly(n)
        self.received += data
        return data

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


@pytest.fixture
async def scripted() -> AsyncIterator[Callable[..., Awaitable[ScriptedBackend]]]:
    made: list[ScriptedBackend] = []

    async def make(host: str, script: Callable[..., Awaitable]) -> ScriptedBackend:
        backend = await ScriptedBackend(host, script).start()
        made.append(backend)
        return backend

    yield make
    for b in made:
        await b.stop()


# -- 1. pipelining ---------------------------------------------------------------


async def test_three_pipelined_requests_in_one_send(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory(replicas=2)
    out = await send(
        mesh,
        b"GET /one?delay=0.1 HTTP/1.1\r\nHost: api\r\n\r\n"
        b"POST /echo HTTP/1.1\r\nHost: api\r\nContent-Length: 11\r\n\r\nhello world"
        b"GET /three HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
    )
    got = responses(out)
    assert [status for status, _, _ in got] == [200, 200, 200]
    first, second, third = got
    # In order: the echo (second) between two replica names.
    assert first[2] == first[1]["x-meshlocal-replica"].encode()
    assert second[2] == b"hello world"
    assert second[1]["x-backend"] == second[1]["x-meshlocal-replica"]
    assert third[2] == third[1]["x-meshlocal-replica"].encode()
    assert {h["x-meshlocal-replica"] for _, h, _ in got} <= {"api-1", "api-2"}
    assert mesh.backends["api-1"].hits + mesh.backends["api-2"].hits == 3


async def test_pipelined_request_after_chunked_body(mesh_factory: MeshFactory) -> None:
    mesh = await mesh_factory()
    backend = await path_backend(mesh, "127.0.0.51")
    # The first chunk's data looks like a body end and a request: skipped by count.
    inner = b"0\r\n\r\nGET /inner HTTP/1.1\r\nHost: api\r\n\r\n"
    body = b"%x\r\n%s\r\n5;ext=1\r\npedia\r\n0\r\n\r\n" % (len(inner), inner)
    out = await send(
        mesh,
        b"POST /echo HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
        + body
        + b"GET /after HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
    )
    got = responses(out)
    assert [(s, b) for s, _, b in got] == [(200, inner + b"pedia"), (200, b"api-1")]
    assert backend.paths == ["/echo", "/after"]


async def test_pipelined_request_after_chunked_body_split_across_sends(
    mesh_factory: MeshFactory,
) -> None:
    mesh = await mesh_factory()
    backend = await path_backend(mesh, "127.0.0.52")
    reader, writer = await asyncio.open_connection("127.0.0.2", port_of(mesh))
    try:
        parts = [
            b"POST /echo HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwi",
            b"ki\r\n0\r",
            b"\n\r",
            b"\nGET /after HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
        ]
        for part in parts:
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.05)
        async with asyncio.timeout(TIMEOUT):
            out = await reader.read(-1)
    finally:
        writer.close()
    got = responses(out)
    assert [(s, b) for s, _, b in got] == [(200, b"wiki"), (200, b"api-1")]
    assert backend.paths == ["/echo", "/after"]


# -- 2. chunk extensions -----------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"5;name=value\r\nhello\r\n0\r\n\r\n",
        b'5;q="a b"\r\nhello\r\n0\r\n\r\n',
        b"5;flag\r\nhello\r\n3;a=1;b\r\nabc\r\n0;last=yes\r\n\r\n",
    ],
)
async def test_valid_chunk_extensions_reach_the_replica_byte_for_byte(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]], body: bytes
) -> None:
    mesh = await mesh_factory()
    backend = await raw_backends("127.0.0.53", OK, until=b"0\r\n\r\n")
    if b"last=yes" in body:
        backend.until = b"0;last=yes\r\n\r\n"
    register(mesh, backend)
    out = await send(
        mesh,
        b"POST /up HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + body,
    )
    assert split_response(out)[0::2] == (200, b"ok")
    head, _, got = backend.received.partition(b"\r\n\r\n")
    assert b"\r\nTransfer-Encoding: chunked\r\n" in head + b"\r\n"
    assert got == body


@pytest.mark.parametrize(
    "body",
    [
        b"5 ;a=b\r\nhello\r\n0\r\n\r\n",  # whitespace before the extension
        b"5;a = b\r\nhello\r\n0\r\n\r\n",  # whitespace around `=`
        b'5;q="a b\r\nhello\r\n0\r\n\r\n',  # unterminated quoted value
        b"5 \r\nhello\r\n0\r\n\r\n",  # whitespace after the size
    ],
)
async def test_invalid_chunk_extensions_get_400_and_never_reach_the_replica(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]], body: bytes
) -> None:
    mesh, backend = await one_replica(
        mesh_factory, raw_backends, "127.0.0.54", OK, until=b"0\r\n\r\n"
    )
    out = await send(
        mesh,
        b"POST /up HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
        + body
        + b"GET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n",
    )
    assert status_of(out) == 400
    assert out.count(b"HTTP/1.1 ") == 1
    assert b"malformed chunk" in out
    # The replica was dialled with the head, then dropped: not one body byte.
    head, _, got = backend.received.partition(b"\r\n\r\n")
    assert head.startswith(b"POST /up HTTP/1.1\r\n") or backend.received == b""
    assert got == b""
    assert b"smuggled" not in backend.received


async def test_invalid_chunk_extension_mid_exchange_drops_the_replica_connection(
    mesh_factory: MeshFactory, scripted: Callable[..., Awaitable[ScriptedBackend]]
) -> None:
    mesh = await mesh_factory()
    got_first_chunk = asyncio.Event()

    async def script(
        b: ScriptedBackend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await b.until(reader, b"\r\n\r\n")
        await b.until(reader, b"hello\r\n")
        got_first_chunk.set()

    backend = await scripted("127.0.0.55", script)
    attach(mesh, backend)
    reader, writer = await asyncio.open_connection("127.0.0.2", port_of(mesh))
    try:
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        )
        async with asyncio.timeout(TIMEOUT):
            await got_first_chunk.wait()
        writer.write(b"3;a = b\r\nabc\r\n0\r\n\r\n")
        async with asyncio.timeout(TIMEOUT):
            out = await reader.read(-1)
            await backend.done.wait()
    finally:
        writer.close()
    assert status_of(out) == 400
    assert b"malformed chunked body" in out
    assert backend.saw_eof
    # The replica saw the head and the good chunk, then its connection was closed:
    # never the bad chunk nor a last-chunk that would complete the request.
    _, _, body = backend.received.partition(b"\r\n\r\n")
    assert body == b"5\r\nhello\r\n"


# -- 3. trailers -------------------------------------------------------------------


async def test_request_trailers_reach_the_replica_untouched(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]]
) -> None:
    mesh, backend = await one_replica(
        mesh_factory, raw_backends, "127.0.0.56", OK, until=b"X-U: two\r\n\r\n"
    )
    body = b"5\r\nhello\r\n0\r\nX-T: 1\r\nX-Checksum: sha-256=:abc=:\r\nX-U: two\r\n\r\n"
    out = await send(
        mesh,
        b"POST /up HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n"
        b"Connection: close\r\n\r\n" + body,
    )
    assert split_response(out)[0::2] == (200, b"ok")
    assert backend.received.partition(b"\r\n\r\n")[2] == body


async def test_response_trailers_reach_the_client_untouched(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]]
) -> None:
    mesh = await mesh_factory()
    chunked = b"5\r\nhello\r\n0\r\nX-T: 1\r\nServer-Timing: db;dur=53\r\nX-U: two\r\n\r\n"
    backend = await raw_backends(
        "127.0.0.57",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n" + chunked,
    )
    register(mesh, backend)
    # Two requests: the second proves the first response's end was found exactly.
    out = await send(
        mesh,
        b"GET /a HTTP/1.1\r\nHost: api\r\n\r\n"
        b"GET /b HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n",
    )
    first, sep, second = out.partition(chunked)
    assert sep == chunked
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\ntransfer-encoding: chunked\r\n" in first.lower()
    assert first.endswith(b"\r\n\r\n")
    assert second.startswith(b"HTTP/1.1 200 OK\r\n")
    assert second.endswith(b"\r\n\r\n" + chunked)
    assert backend.connections == 1  # the replica connection was reused


@pytest.mark.parametrize(
    "trailer",
    [b"X-T : 1\r\n", b"X-T: 1\r\n folded\r\n", b"X-T: 1\r\n\tfolded\r\n"],
)
async def test_malformed_request_trailers_are_refused(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]], trailer: bytes
) -> None:
    mesh, backend = await one_replica(mesh_factory, raw_backends, "127.0.0.58", OK, until=b"0\r\n")
    out = await send(
        mesh,
        b"POST /up HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n" + trailer + b"\r\n",
    )
    assert status_of(out) == 400
    assert b"malformed chunked body" in out
    assert backend.received.partition(b"\r\n\r\n")[2] == b""
    assert b"X-T" not in backend.received


@pytest.mark.parametrize("trailer", [b"X-T : 1\r\n", b"X-T: 1\r\n folded\r\n"])
async def test_malformed_response_trailers_are_not_passed_on(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]], trailer: bytes
) -> None:
    mesh, _ = await one_replica(
        mesh_factory,
        raw_backends,
        "127.0.0.59",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
        + trailer
        + b"\r\n",
    )
    try:
        out = await send(mesh, b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
    except ConnectionResetError:
        out = b""  # aborted mid-response, as Envoy would
    # Refused before a byte of the body is passed on (the head too, when it came
    # in the same read as the body): never the trailer, never a complete message.
    assert out.partition(b"\r\n\r\n")[2] == b""
    assert b"X-T" not in out


# -- 4. Expect: 100-continue -------------------------------------------------------


async def test_expect_100_continue_interim_then_final(
    mesh_factory: MeshFactory, scripted: Callable[..., Awaitable[ScriptedBackend]]
) -> None:
    mesh = await mesh_factory()
    heads: list[bytes] = []

    async def script(
        b: ScriptedBackend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        heads.append(await b.until(reader, b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await b.exactly(reader, 5)
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\n" + body[::-1])

    backend = await scripted("127.0.0.60", script)
    attach(mesh, backend)
    reader, writer = await asyncio.open_connection("127.0.0.2", port_of(mesh))
    try:
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        async with asyncio.timeout(TIMEOUT):
            interim = await reader.readuntil(b"\r\n\r\n")
        assert interim.startswith(b"HTTP/1.1 100 Continue\r\n")
        assert backend.received == heads[0]  # the replica has no body byte yet
        writer.write(b"hello")
        async with asyncio.timeout(TIMEOUT):
            final = await reader.readuntil(b"\r\n\r\n")
            assert await reader.readexactly(5) == b"olleh"
    finally:
        writer.close()
    assert final.startswith(b"HTTP/1.1 201 Created\r\n")
    assert b"\r\nExpect: 100-continue\r\n" in heads[0]
    assert backend.received == heads[0] + b"hello"


@pytest.mark.parametrize(
    "final",
    [
        b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nsure",
    ],
)
async def test_expect_100_continue_answered_without_interim(
    mesh_factory: MeshFactory,
    scripted: Callable[..., Awaitable[ScriptedBackend]],
    final: bytes,
) -> None:
    mesh = await mesh_factory()

    async def script(
        b: ScriptedBackend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await b.until(reader, b"\r\n\r\n")
        writer.write(final)

    backend = await scripted("127.0.0.61", script)
    attach(mesh, backend)
    reader, writer = await asyncio.open_connection("127.0.0.2", port_of(mesh))
    try:
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        # The client never sends the body; the final response still arrives, and
        # then the connection ends (the request body's end can't be found any more).
        async with asyncio.timeout(TIMEOUT):
            out = await reader.read(-1)
    finally:
        writer.close()
    status, headers, body = split_response(out)
    assert b"100 Continue" not in out
    assert status == status_of(final)
    assert body == final.partition(b"\r\n\r\n")[2]
    assert headers["x-meshlocal-replica"] == "api-1"
    # The proxy closes after an answer that came before the body: it says so
    # (RFC 9110 10.1.1).
    assert headers["connection"] == "close"
    assert backend.received.endswith(b"\r\n\r\n")
    assert backend.received.count(b"\r\n\r\n") == 1


# -- 5. long header values --------------------------------------------------------


def request_of_size(size: int) -> bytes:
    """A request head of exactly `size` bytes, mostly one header value."""
    start = b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\nX-Big: "
    end = b"\r\n\r\n"
    return start + b"v" * (size - len(start) - len(end)) + end


async def test_30000_byte_header_value_is_forwarded_intact(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]]
) -> None:
    mesh, backend = await one_replica(mesh_factory, raw_backends, "127.0.0.62", OK)
    value = bytes(ord("a") + i % 26 for i in range(30_000))
    request = b"GET / HTTP/1.1\r\nHost: api\r\nX-Big: " + value + b"\r\nConnection: close\r\n\r\n"
    assert len(request) < mesh.settings.max_header_bytes
    out = await send(mesh, request)
    assert split_response(out)[0::2] == (200, b"ok")
    assert b"\r\nX-Big: " + value + b"\r\n" in backend.received


async def test_request_head_limit_boundary(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]]
) -> None:
    mesh, backend = await one_replica(mesh_factory, raw_backends, "127.0.0.63", OK)
    limit = mesh.settings.max_header_bytes
    assert limit == 32768
    out = await send(mesh, request_of_size(limit))
    assert status_of(out) == 200
    assert backend.connections == 1
    for size in (limit + 1, 40_000):
        out = await send(mesh, request_of_size(size))
        assert status_of(out) == 431, size
        assert out.count(b"HTTP/1.1 ") == 1
    assert backend.connections == 1  # nothing more reached the replica
    assert backend.received.count(b"GET / HTTP/1.1") == 1


@pytest.mark.parametrize("value_size", [60_000, 65_536 - 47])
async def test_large_response_head_is_forwarded_intact(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]], value_size: int
) -> None:
    mesh = await mesh_factory()
    value = bytes(ord("A") + i % 26 for i in range(value_size))
    response = b"HTTP/1.1 200 OK\r\nX-Big: " + value + b"\r\nContent-Length: 2\r\n\r\nok"
    head_size = response.index(b"\r\n\r\n") + 4
    assert head_size == value_size + 47  # the second case is exactly at the 64 KiB limit
    backend = await raw_backends("127.0.0.64", response)
    register(mesh, backend)
    out = await send(mesh, b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
    status, headers, body = split_response(out)
    assert (status, body) == (200, b"ok")
    assert headers["x-big"].encode() == value
    assert head_size <= 65536
    assert backend.received.startswith(b"GET / HTTP/1.1\r\n")


@pytest.mark.parametrize("extra", [1, 10_000])
async def test_response_head_over_the_limit_gives_502(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]], extra: int
) -> None:
    mesh = await mesh_factory()
    start = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Big: "
    end = b"\r\n\r\n"
    head = start + b"x" * (65536 + extra - len(start) - len(end)) + end
    assert len(head) == 65536 + extra
    backend = await raw_backends("127.0.0.65", head + b"ok")
    register(mesh, backend)
    out = await send(mesh, b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
    status, headers, body = split_response(out)
    assert status == 502
    assert b"response head too large" in body
    assert "x-big" not in headers


# -- 6. request-smuggling-adjacent behaviours ---------------------------------------

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: api\r\n\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "expected"),
    [
        (
            b"POST /echo HTTP/1.1\r\nHost: api\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"
            b"hello",
            400,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"
            b"0\r\n\r\n",
            501,
        ),
        (
            b"POST /echo HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
        (b"FOO / HTTP/1.1\r\nHost: api\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: api\r\n\r\n", 400),
        (b"GET /  HTTP/1.1\r\nHost: api\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: api\r\n\r\n", 505),
        (b"GET / HTTP/0.9\r\nHost: api\r\n\r\n", 505),
    ],
    ids=[
        "duplicate-identical-content-length",
        "te-chunked-chunked",
        "te-chunked-twice",
        "unknown-method",
        "two-spaces-before-target",
        "two-spaces-after-target",
        "http-2.0",
        "http-0.9",
    ],
)
async def test_refused_requests_never_reach_the_replica(
    mesh_factory: MeshFactory, request_bytes: bytes, expected: int
) -> None:
    mesh = await mesh_factory(replicas=1)
    out = await send(mesh, request_bytes + SMUGGLED)
    assert status_of(out) == expected
    assert out.count(b"HTTP/1.1 ") == 1  # one answer; the connection is closed
    assert split_response(out)[1]["connection"] == "close"
    assert mesh.backends["api-1"].hits == 0


async def test_transfer_encoding_gzip_chunked_is_forwarded(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]]
) -> None:
    mesh, backend = await one_replica(
        mesh_factory, raw_backends, "127.0.0.66", OK, until=b"\r\n0\r\n\r\n"
    )
    payload = gzip.compress(b"compressed " * 50, mtime=0)
    body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
    out = await send(
        mesh,
        b"POST /up HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: gzip, chunked\r\n"
        b"Connection: close\r\n\r\n" + body,
    )
    assert split_response(out)[0::2] == (200, b"ok")
    head, _, got = backend.received.partition(b"\r\n\r\n")
    assert b"\r\nTransfer-Encoding: gzip, chunked\r\n" in head + b"\r\n"
    assert b"Content-Length" not in head
    assert got == body


async def test_response_status_099_gives_502(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]]
) -> None:
    mesh, backend = await one_replica(
        mesh_factory, raw_backends, "127.0.0.67", b"HTTP/1.1 099 Odd\r\nContent-Length: 2\r\n\r\nok"
    )
    out = await send(mesh, b"GET / HTTP/1.1\r\nHost: api\r\n\r\n")
    status, _, body = split_response(out)
    assert status == 502
    assert b"invalid status" in body
    assert b"099" not in out
    assert backend.received.startswith(b"GET / HTTP/1.1\r\n")


# -- 7. found by the differential review ---------------------------------------------


async def test_a_replica_head_hiding_a_second_blank_line_gets_502(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]]
) -> None:
    # Bare LFs become CRLF before llhttp reads the head; `\n\r\n` would then
    # be a blank line inside it, and the rest would reach the client as body.
    mesh, _ = await one_replica(
        mesh_factory,
        raw_backends,
        "127.0.0.68",
        b"HTTP/1.1 200 OK\nContent-Length: 40\n\r\nX-Injected: 1\nContent-Length: 3\n\nabc",
    )
    out = await send(mesh, b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
    status, _, _ = split_response(out)
    assert status == 502
    assert b"X-Injected" not in out


async def test_connection_cannot_hide_content_length_from_the_replica(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]]
) -> None:
    mesh, backend = await one_replica(
        mesh_factory, raw_backends, "127.0.0.69", OK, until=b"GET /smuggled"
    )
    await send(
        mesh,
        b"POST / HTTP/1.1\r\nHost: api\r\nConnection: content-length, close\r\n"
        b"Content-Length: 26\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
    )
    head, _, body = backend.received.partition(b"\r\n\r\n")
    assert b"\r\nContent-Length: 26" in head
    assert body == b"GET /smuggled HTTP/1.1\r\n\r\n"  # a body, not a second request


# -- 8. found by trying it as a new user ------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\nHost: api\n\n",  # every line ends in a bare LF
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # TLS ClientHello to a plain port
    ],
)
async def test_a_head_that_can_never_be_valid_is_refused_at_once(
    mesh_factory: MeshFactory, data: bytes
) -> None:
    mesh = await mesh_factory()
    loop = asyncio.get_running_loop()
    started = loop.time()
    out = await send(mesh, data)  # the proxy answers without waiting for CRLFCRLF
    assert loop.time() - started < 2.0
    status, headers, body = split_response(out)
    assert status == 400
    assert headers["connection"] == "close"
    assert body


async def test_empty_lines_before_a_request_line_are_ignored(
    mesh_factory: MeshFactory, raw_backends: Callable[..., Awaitable[RawBackend]]
) -> None:
    mesh, backend = await one_replica(mesh_factory, raw_backends, "127.0.0.70", OK)
    out = await send(mesh, b"\r\n\r\nGET /x HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
    status, _, body = split_response(out)
    assert (status, body) == (200, b"ok")
    assert backend.received.startswith(b"GET /x HTTP/1.1\r\n")


async def test_an_answer_before_the_body_says_close_however_it_arrives(
    mesh_factory: MeshFactory,
    scripted: Callable[..., Awaitable[ScriptedBackend]],
) -> None:
    # The replica's head and body in two writes: the client still learns the
    # connection will close (it did only when both came in one packet).
    mesh = await mesh_factory()

    async def script(
        b: ScriptedBackend, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await b.until(reader, b"\r\n\r\n")
        writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"too big\n")

    backend = await scripted("127.0.0.71", script)
    attach(mesh, backend)
    reader, writer = await asyncio.open_connection("127.0.0.2", port_of(mesh))
    try:
        writer.write(
            b"POST /up HTTP/1.1\r\nHost: api\r\nContent-Length: 100000\r\n\r\n" + b"x" * 10
        )
        async with asyncio.timeout(TIMEOUT):
            out = await reader.read(-1)
    finally:
        writer.close()
    status, headers, body = split_response(out)
    assert (status, body) == (413, b"too big\n")
    assert headers["connection"] == "close"
