"""The pure HTTP/1.1 head parser and chunked scanner."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlocal.proxy import http1
from meshlocal.proxy.chunked import ChunkedScanner
from meshlocal.proxy.http1 import HttpError


def test_request_head_fields() -> None:
    head = http1.parse_request_head(
        b"POST /a?b=1 HTTP/1.1\r\nHost: API:8080\r\nContent-Length: 12\r\n"
        b"Connection: keep-alive, X-A\r\nX-Forwarded-For: 1.1.1.1\r\n"
        b"X-Forwarded-For: 2.2.2.2\r\n\r\n"
    )
    assert (head.method, head.target, head.version) == (b"POST", b"/a?b=1", b"HTTP/1.1")
    assert head.host == b"api:8080"
    assert (head.framing, head.length) == (http1.LENGTH, 12)
    assert head.keep_alive
    assert head.connection_tokens == {b"keep-alive", b"x-a"}
    assert head.forwarded_for == b"1.1.1.1, 2.2.2.2"


def test_strip_request_fields_drops_named_and_hop_headers() -> None:
    head = http1.parse_request_head(
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: X-A\r\nx-a: 1\r\nTE: trailers\r\n"
        b"X-Forwarded-Proto: https\r\nX-B: 2\r\n\r\n"
    )
    assert head.fields == b"Host: a\r\nX-B: 2\r\n"


def test_response_framing_rules() -> None:
    r = http1.parse_response_head(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", b"GET")
    assert r.framing == http1.NONE
    r = http1.parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"HEAD")
    assert r.framing == http1.NONE
    r = http1.parse_response_head(b"HTTP/1.1 200 OK\r\n\r\n", b"GET")
    assert (r.framing, r.keep_alive) == (http1.UNTIL_CLOSE, False)
    r = http1.parse_response_head(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", b"GET")
    assert not r.keep_alive
    assert r.status_line == b"HTTP/1.1 200 OK\r\n"
    with pytest.raises(HttpError):
        http1.parse_response_head(b"HTTP/1.1 2000 OK\r\n\r\n", b"GET")


@given(st.binary(max_size=400))
def test_parse_request_head_only_raises_http_error(data: bytes) -> None:
    try:
        http1.parse_request_head(data + b"\r\n\r\n")
    except HttpError as exc:
        assert 400 <= exc.status < 600


@st.composite
def chunked_bodies(draw: st.DrawFn) -> bytes:
    sizes = draw(st.lists(st.integers(1, 300), max_size=6))
    parts = []
    for size in sizes:
        ext = draw(st.sampled_from([b"", b";a=b", b';q="x y"', b";flag"]))
        parts.append(b"%x%s\r\n" % (size, ext) + b"d" * size + b"\r\n")
    trailers = draw(st.sampled_from([b"", b"X-T: 1\r\n", b"A: 1\r\nB: 2\r\n"]))
    return b"".join(parts) + b"0\r\n" + trailers + b"\r\n"


@given(chunked_bodies(), st.binary(max_size=20), st.lists(st.integers(1, 50), max_size=30))
def test_chunked_scanner_finds_the_end_whatever_the_splits(
    body: bytes, after: bytes, cuts: list[int]
) -> None:
    data = body + after
    scanner = ChunkedScanner()
    consumed = 0
    pos = 0
    for cut in [*cuts, len(data)]:
        piece = data[pos : pos + cut]
        pos += len(piece)
        consumed += scanner.feed(piece)
        if scanner.done:
            break
    if not scanner.done and pos < len(data):
        consumed += scanner.feed(data[pos:])
    assert scanner.done
    assert consumed == len(body)


@pytest.mark.parametrize(
    "bad",
    [
        b"zz\r\n",
        b"5\r\nhelloXX\r\n",
        b"5\nhello\r\n",
        b"-1\r\n",
        b"f" * 20 + b"\r\n",
        # llhttp's strict mode: whitespace after a chunk size (parsers disagree on
        # it: a smuggling vector), malformed extensions and trailers.
        b"1 \r\nd\r\n0\r\n\r\n",
        b"1 ;a=b\r\nd\r\n0\r\n\r\n",
        b"1;a = b\r\nd\r\n0\r\n\r\n",
        b'1;a="b\r\nd\r\n0\r\n\r\n',
        b"1\r\nd\r\n0\r\nX-T : 1\r\n\r\n",
        b"1\r\nd\r\n0\r\nX-T: 1\r\n folded\r\n\r\n",
        b"0x1\r\nd\r\n0\r\n\r\n",
    ],
)
def test_chunked_scanner_rejects_malformed(bad: bytes) -> None:
    with pytest.raises(HttpError):
        ChunkedScanner().feed(bad)


@given(st.binary(max_size=400))
def test_parse_response_head_only_raises_http_error(data: bytes) -> None:
    try:
        http1.parse_response_head(data + b"\r\n\r\n", b"GET")
    except HttpError as exc:
        assert exc.status == 502


VALID_HEADS = [
    b"GET /a HTTP/1.1\r\nHost: api\r\nX-A: 1\r\n\r\n",
    b"POST /b HTTP/1.1\r\nHost: api\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n",
    b"PUT /c HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
]


@given(st.sampled_from(VALID_HEADS), st.integers(0, 200), st.binary(min_size=1, max_size=3))
def test_a_mutated_head_is_refused_cleanly_or_parsed_consistently(
    head: bytes, at: int, inserted: bytes
) -> None:
    at = min(at, len(head) - 4)
    data = head[:at] + inserted + head[at:]
    try:
        parsed = http1.parse_request_head(data)
    except HttpError as exc:
        assert exc.status in (400, 431, 501, 505)
        return
    # Accepted: the forwarded fields are lines of the input, and the framing
    # follows the (single) length header the input holds.
    assert data.startswith(parsed.request_line)
    for line in parsed.fields.split(b"\r\n")[:-1]:
        assert b"\r\n" + line + b"\r\n" in data
    lower = data.lower()
    if b"\r\ntransfer-encoding:" in lower:
        assert parsed.framing == http1.CHUNKED
    elif b"\r\ncontent-length:" in lower:
        assert parsed.framing == http1.LENGTH
    else:
        assert parsed.framing == http1.NONE


def test_pooled_parsers_carry_nothing_from_one_head_to_the_next() -> None:
    first = http1.parse_request_head(
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 9.9.9.9\r\nExpect: 100-continue\r\n"
        b"Upgrade: websocket\r\nConnection: upgrade\r\n\r\n"
    )
    assert (first.host, first.forwarded_for, first.expect_continue) == (b"a", b"9.9.9.9", True)
    second = http1.parse_request_head(b"GET /x HTTP/1.0\r\n\r\n")
    assert second.host is None
    assert second.forwarded_for is None
    assert not second.expect_continue
    assert second.upgrade is None
    assert second.connection_tokens == frozenset()
    with pytest.raises(HttpError):
        http1.parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
    third = http1.parse_request_head(b"GET /y HTTP/1.1\r\nHost: c\r\n\r\n")
    assert (third.target, third.host) == (b"/y", b"c")
    closing = http1.parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert not closing.keep_alive
    after = http1.parse_request_head(b"GET /z HTTP/1.1\r\nHost: d\r\n\r\n")
    assert (after.target, after.host, after.keep_alive) == (b"/z", b"d", True)
    # Responses: a parser pooled after a body-less or stand-in-ended message.
    r1 = http1.parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n", b"GET")
    r2 = http1.parse_response_head(b"HTTP/1.1 204 No Content\r\n\r\n", b"GET")
    r3 = http1.parse_response_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"GET")
    r4 = http1.parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b"GET")
    assert (r1.framing, r1.length) == (http1.LENGTH, 70000)
    assert (r2.status, r2.framing) == (204, http1.NONE)
    assert r3.framing == http1.CHUNKED
    assert (r4.framing, r4.length) == (http1.LENGTH, 5)


def test_connection_named_fields_and_hop_by_hop_are_cut_as_written() -> None:
    head = http1.parse_request_head(
        b"GET / HTTP/1.1\r\nhost: a\r\nKEEP-ALIVE: 5\r\nconnection: X-Secret, close\r\n"
        b"x-secret: 1\r\nX-Keep: connection: no\r\nTe: trailers\r\n\r\n"
    )
    assert head.fields == b"host: a\r\nX-Keep: connection: no\r\n"
    assert not head.keep_alive


# -- found by a differential review of the llhttp move --------------------------


@pytest.mark.parametrize(
    ("head", "status"),
    [
        # llhttp stops at an upgrade before checking Transfer-Encoding.
        (
            b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
            b"Transfer-Encoding: gzip\r\n\r\n",
            501,
        ),
        (b"CONNECT /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
        (b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nX-Hidden: 1\r\n\r\n", 400),
    ],
)
def test_heads_llhttp_lets_through_are_refused_on_top(head: bytes, status: int) -> None:
    with pytest.raises(HttpError) as err:
        http1.parse_request_head(head)
    assert err.value.status == status


def test_a_response_head_with_a_blank_line_inside_is_refused() -> None:
    # What a replica's `\n\r\n` becomes once bare LFs are made CRLF.
    with pytest.raises(HttpError) as err:
        http1.parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 40\r\n\r\n"
            b"X-Injected: 1\r\nContent-Length: 3\r\n\r\n",
            b"GET",
        )
    assert err.value.status == 502


def test_proxy_connection_close_does_not_spoil_the_next_parse() -> None:
    for _ in range(6):  # more than the pool holds
        http1.parse_request_head(b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Connection: close\r\n\r\n")
        http1.parse_response_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nProxy-Connection: close\r\n\r\n", b"GET"
        )
    assert http1.parse_request_head(b"GET /n HTTP/1.1\r\nHost: b\r\n\r\n").target == b"/n"
    assert http1.parse_response_head(b"HTTP/1.1 204 No\r\n\r\n", b"GET").status == 204


@pytest.mark.parametrize("name", [b"Content-Length", b"Transfer-Encoding", b"Host"])
def test_connection_cannot_strip_framing_or_routing_fields(name: bytes) -> None:
    body_field = (
        b"Transfer-Encoding: chunked\r\n"
        if name == b"Transfer-Encoding"
        else b"Content-Length: 5\r\n"
    )
    head = http1.parse_request_head(
        b"POST / HTTP/1.1\r\nHost: a\r\nConnection: "
        + name
        + b", x-drop\r\n"
        + body_field
        + b"X-Drop: 1\r\n\r\n"
    )
    assert head.fields == b"Host: a\r\n" + body_field
    resp = http1.parse_response_head(
        b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 2\r\n\r\n", b"GET"
    )
    assert resp.fields == b"Content-Length: 2\r\n"


def test_response_transfer_encoding_framing_follows_rfc_9112() -> None:
    twice = http1.parse_response_head(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"GET",
    )
    assert (twice.framing, twice.keep_alive) == (http1.UNTIL_CLOSE, False)
    comma = http1.parse_response_head(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked,\r\n\r\n", b"GET"
    )
    assert comma.framing == http1.CHUNKED  # an empty list element is no coding


def test_spaces_after_a_chunk_size_are_a_replicas_liberty_only() -> None:
    body = b"5 \r\nhello\r\n0 \r\n\r\n"
    from_replica = ChunkedScanner(response=True)
    assert from_replica.feed(body) == len(body)
    assert from_replica.done
    with pytest.raises(HttpError):
        ChunkedScanner().feed(body)
