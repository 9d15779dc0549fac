"""HTTP/1.1 message heads and body framing: llhttp (via httptools), no I/O.

Heads are parsed by llhttp, Node.js's parser, in its strict mode (no
leniency flag is set): it refuses Content-Length with Transfer-Encoding,
duplicate or malformed Content-Length, Transfer-Encoding that is repeated or
does not end in chunked (requests), obs-fold, bare CR or LF, control
characters in values, malformed targets, unknown methods, and malformed
chunk sizes, extensions and trailers.

What llhttp can't express stays here as a small check on top, each with its
reason:

- duplicate Host: llhttp lets any field repeat; two Hosts make routing
  ambiguous (a smuggling vector between proxies);
- missing Host on HTTP/1.1 (RFC 9112 3.2): llhttp doesn't require it;
- versions: llhttp also takes HTTP/0.9 and HTTP/2.0 request lines;
- one space between the request line's parts: llhttp skips extra spaces;
- origin-form targets only, and no CONNECT: llhttp takes absolute-form,
  CONNECT's authority form and `*`; a mesh proxy is never a forward proxy
  (SSRF);
- Transfer-Encoding must end in chunked, once: llhttp skips that check on
  an upgrade request;
- one blank line per head: a replica's bare-LF head made CRLF could hold two;
- Connection may not name Content-Length, Transfer-Encoding or Host: their
  removal would change the message's framing or routing for the replica;
- status codes below 100: llhttp takes `099`;
- the size limit (431): llhttp has none of its own;
- trailing whitespace of field values, which llhttp keeps;
- HEAD responses carry no body: httptools can't tell llhttp which request
  a response answers, so framing by the request method is decided here;
- where a chunked body ends inside a buffer: `chunked.ChunkedScanner`.

The proxy forwards body bytes exactly as received (chunk framing,
compression and all), so it only needs to know where each message ends.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import httptools

# RFC 9110 7.6.1 plus the de-facto ones every proxy drops. Transfer-Encoding
# is hop-by-hop in theory, but bodies are forwarded with their framing
# untouched, so that header travels with them.
HOP_BY_HOP = (
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"upgrade",
)
# The proxy sets these itself (X-Forwarded-For is appended to).
FORWARDED = (b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host")

_STANDARD_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade"})
_NO_TOKENS: frozenset[bytes] = frozenset()
_OWS = b" \t"


class HttpError(Exception):
    """A message the proxy refuses; status is what the client gets."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# Body framing kinds.
NONE = 0
LENGTH = 1
CHUNKED = 2
UNTIL_CLOSE = 3


@dataclass(slots=True)
class RequestHead:
    method: bytes
    target: bytes
    version: bytes  # b"HTTP/1.1" or b"HTTP/1.0"
    request_line: bytes  # with its CRLF
    fields: bytes  # header lines with CRLFs, minus hop-by-hop and X-Forwarded-* lines
    host: bytes | None  # lower-cased
    framing: int
    length: int  # for LENGTH
    keep_alive: bool
    upgrade: bytes | None  # lower-cased Upgrade value when Connection names upgrade
    connection_tokens: frozenset[bytes]
    expect_continue: bool
    forwarded_for: bytes | None  # incoming X-Forwarded-For values, comma-joined


@dataclass(slots=True)
class ResponseHead:
    status_line: bytes  # with its CRLF, always HTTP/1.1
    status: int
    fields: bytes  # minus hop-by-hop lines
    framing: int
    length: int
    keep_alive: bool
    connection_tokens: frozenset[bytes]
    upgrade: bytes | None = None  # the Upgrade value of a 101
    # The head as forwarded, per (replica, route, keep-alive, client version):
    # filled by the forwarder when heads are cached (shared), else left None.
    rendered: dict[tuple[str, bytes, bool, bytes], bytes] | None = None


# What a field means to the proxy, by name. The usual spellings are listed as
# written (Title-Case, lower-case) so most fields skip `.lower()`; -1: none.
_HOST, _LENGTH, _TE, _CONNECTION, _UPGRADE, _EXPECT, _XFF, _DROP, _PROXY_CONNECTION = range(9)
_IGNORED = -1
_COMMON = (
    b"accept",
    b"accept-encoding",
    b"accept-language",
    b"authorization",
    b"cache-control",
    b"content-type",
    b"cookie",
    b"date",
    b"etag",
    b"last-modified",
    b"location",
    b"server",
    b"set-cookie",
    b"traceparent",
    b"user-agent",
    b"vary",
    b"x-amzn-trace-id",
    b"x-request-id",
)


def _kinds(named: dict[bytes, int]) -> dict[bytes, int]:
    out: dict[bytes, int] = {}
    for name, kind in [*((n, _IGNORED) for n in _COMMON), *named.items()]:
        for spelling in (name, name.title(), name.upper()):
            out[spelling] = kind
    return out


_REQUEST_NAMED = {
    b"host": _HOST,
    b"content-length": _LENGTH,
    b"transfer-encoding": _TE,
    b"expect": _EXPECT,
    **{n: _DROP for n in HOP_BY_HOP + FORWARDED},
    b"connection": _CONNECTION,
    b"proxy-connection": _PROXY_CONNECTION,
    b"upgrade": _UPGRADE,
    b"x-forwarded-for": _XFF,
}
_RESPONSE_NAMED = {
    b"content-length": _LENGTH,
    b"transfer-encoding": _TE,
    **{n: _DROP for n in HOP_BY_HOP},
    b"connection": _CONNECTION,
    b"proxy-connection": _PROXY_CONNECTION,
    b"upgrade": _UPGRADE,
}
_REQUEST_KINDS = _kinds(_REQUEST_NAMED)
_RESPONSE_KINDS = _kinds(_RESPONSE_NAMED)


class _Fields:
    """httptools' protocol object: keeps the few fields the proxy acts on.

    llhttp hands each field over once the head is whole (it is fed one
    complete head), so nothing here concatenates partial spans. Unset
    attributes read the class defaults, so a reset is `__dict__.clear()`.
    """

    kinds: dict[bytes, int] = _REQUEST_KINDS
    named: dict[bytes, int] = _REQUEST_NAMED
    url = b""
    hosts: list[bytes] | None = None
    length: bytes | None = None
    encodings: list[bytes] | None = None
    connection: list[bytes] | None = None
    upgrade: bytes | None = None
    expect = False
    xff: bytes | None = None
    drops: list[bytes] | None = None  # names as written, to cut from the head
    complete = False
    # llhttp reads Proxy-Connection as Connection: its `close` ends the parser's
    # use (the proxy itself ignores the header, a hop-by-hop one it drops).
    spent = False

    def on_url(self, url: bytes) -> None:
        self.url = url

    def on_message_complete(self) -> None:
        self.complete = True

    def on_header(self, name: bytes, value: bytes) -> None:
        kind = self.kinds.get(name)
        if kind is None:
            kind = self.named.get(name.lower(), _IGNORED)
        if kind == _IGNORED:
            return
        value = value.rstrip(_OWS)
        if kind == _HOST:
            self.hosts = [value] if self.hosts is None else [*self.hosts, value]
            return
        if kind == _LENGTH:
            self.length = value  # llhttp refuses a second one
            return
        if kind == _TE:
            self.encodings = [value] if self.encodings is None else [*self.encodings, value]
            return
        if kind == _EXPECT:
            self.expect = self.expect or value.lower() == b"100-continue"
            return
        self.drops = [name] if self.drops is None else [*self.drops, name]
        if kind == _CONNECTION:
            self.connection = [value] if self.connection is None else [*self.connection, value]
        elif kind == _UPGRADE:
            self.upgrade = value.lower()
        elif kind == _XFF and value:
            self.xff = value if self.xff is None else self.xff + b", " + value
        elif kind == _PROXY_CONNECTION:
            self.spent = True


class _ResponseFields(_Fields):
    kinds = _RESPONSE_KINDS
    named = _RESPONSE_NAMED


# llhttp's reasons, said so that a client's author can act on them.
_PLAIN = {
    "Invalid header token": "malformed field name (no space may precede the colon)",
    "Invalid method encountered": "unknown request method",
    "Invalid header value char": "control character in a field value",
    "Unexpected whitespace after header value": "obs-fold (a field line starting with whitespace)",
    "Expected CRLF after version": "lines must end in CRLF, not a bare LF",
    "Missing expected CR after header value": "lines must end in CRLF, not a bare LF",
    "Missing expected LF after header value": "lines must end in CRLF, not a bare CR",
    "Duplicate Content-Length": "repeated Content-Length",
    "Invalid character in Content-Length": "Content-Length is not a number",
    "Invalid char in url path": "invalid character in the request target (percent-encode it)",
}


def _llhttp_error(exc: httptools.HttpParserError, response: bool) -> HttpError:
    raw = str(exc) or type(exc).__name__
    plain = _PLAIN.get(raw)
    reason = f"{plain} (llhttp: {raw})" if plain else raw
    if response:
        return HttpError(502, f"malformed response head: {reason}")
    if "Transfer-Encoding" in raw and "invalid" in raw.lower():
        return HttpError(501, "unsupported Transfer-Encoding")
    if raw == "Invalid HTTP version":
        return HttpError(505, "HTTP version not supported")
    return HttpError(400, reason)


def _list(values: list[bytes]) -> list[bytes]:
    """The lower-cased elements of comma-separated field values (RFC 9110 5.6.1)."""
    return [t.strip(_OWS).lower() for v in values for t in v.split(b",") if t.strip(_OWS)]


_TOKEN_MEMO: dict[bytes, frozenset[bytes]] = {}


def _tokens(values: list[bytes] | None) -> frozenset[bytes]:
    if values is None:
        return _NO_TOKENS
    if len(values) == 1:
        known = _TOKEN_MEMO.get(values[0])
        if known is not None:
            return known
    out = frozenset(_list(values))
    if len(values) == 1 and len(values[0]) <= 64:
        if len(_TOKEN_MEMO) >= 256:
            _TOKEN_MEMO.clear()
        _TOKEN_MEMO[values[0]] = out
    return out


def _without(fields: bytes, names: list[bytes]) -> bytes:
    """`fields` minus every line whose name is written as one of `names`.

    llhttp has checked the head: no value holds CR or LF, so a CRLF followed
    by `name:` can only start a field line."""
    text = b"\r\n" + fields
    for name in names:
        key = b"\r\n" + name + b":"
        start = text.find(key)
        while start >= 0:
            text = text[:start] + text[text.find(b"\r\n", start + 2) :]
            start = text.find(key, start)
    return text[2:]


# Never dropped when Connection names them: the message's framing and routing
# would change between the proxy and the replica (`Connection: content-length`
# smuggles the body as a second request).
_KEPT = frozenset({b"content-length", b"transfer-encoding", b"host"})


def _strip_named(fields: bytes, tokens: frozenset[bytes]) -> bytes:
    """Drop the fields a Connection header names (RFC 9110 7.6.1)."""
    if tokens <= _STANDARD_TOKENS:
        return fields
    named = tokens - _STANDARD_TOKENS - _KEPT
    if not named:
        return fields
    alts = b"|".join(re.escape(n) for n in sorted(named))
    return re.sub(rb"(?im)^(?:" + alts + rb"):[^\r]*\r\n", b"", fields)


# Parsers whose last message ended cleanly, ready for the next head: making
# one costs as much as parsing a small head. list.pop/append are atomic, so
# proxies on several threads never share one.
_IDLE_REQUEST: list[tuple[httptools.HttpRequestParser, _Fields]] = []
_IDLE_RESPONSE: list[tuple[httptools.HttpResponseParser, _ResponseFields]] = []
_IDLE_MAX = 4
# A stand-in body: bodies are forwarded by count and never given to llhttp
# here, so a response parser is fed this many bytes of it to end its message.
_STAND_IN = memoryview(bytes(16384))
_LAST_CHUNK = b"0\r\n\r\n"


_P = TypeVar("_P", httptools.HttpRequestParser, httptools.HttpResponseParser)
_S = TypeVar("_S", bound=_Fields)


def _feed(
    data: bytes, idle: list[tuple[_P, _S]], make: Callable[[], tuple[_P, _S]], response: bool
) -> tuple[_P, _S]:
    """llhttp's verdict on one whole head, from a pooled parser or a new one."""
    if data.find(b"\r\n\r\n") != len(data) - 4:
        # One head, one blank line: a second would hide fields from llhttp.
        raise HttpError(502 if response else 400, "malformed head: a blank line inside it")
    try:
        parser, sink = idle.pop()
        sink.__dict__.clear()
        pooled = True
    except IndexError:
        parser, sink = make()
        pooled = False
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass  # Upgrade, CONNECT, a 101: the head is whole
    except httptools.HttpParserError as exc:
        if pooled:  # never let a pooled parser's state refuse a head: ask a new one
            return _feed(data, [], make, response)
        raise _llhttp_error(exc, response) from None
    return parser, sink


def _new_request_parser() -> tuple[httptools.HttpRequestParser, _Fields]:
    sink = _Fields()
    return httptools.HttpRequestParser(sink), sink


def _new_response_parser() -> tuple[httptools.HttpResponseParser, _ResponseFields]:
    sink = _ResponseFields()
    return httptools.HttpResponseParser(sink), sink


def _chunked_last(encodings: list[bytes]) -> bool:
    """Transfer-Encoding ends in chunked, which appears once (RFC 9112 6.1)."""
    codings = _list(encodings)
    return bool(codings) and codings[-1] == b"chunked" and codings.count(b"chunked") == 1


class PartialHead:
    """llhttp's verdict on a request head still arriving, fed as it comes.

    The proxy waits for CRLFCRLF before parsing; a head that can never be
    valid (lines ending in a bare LF, TLS sent to a plain port) would
    otherwise wait for the idle timeout instead of getting its 400 now."""

    __slots__ = ("_parser", "fed")

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(_NO_CALLBACKS)
        self.fed = 0  # bytes of the buffer already given to llhttp

    def feed(self, buf: bytes) -> None:
        """Give llhttp what `buf` holds past `fed`; HttpError if it refuses."""
        new, self.fed = buf[self.fed :], len(buf)
        try:
            self._parser.feed_data(new)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as exc:
            raise _llhttp_error(exc, response=False) from None


_NO_CALLBACKS = object()


def parse_request_head(data: bytes, max_header_bytes: int = 32768) -> RequestHead:
    """Parse a request head ending in CRLFCRLF; raise HttpError to refuse it."""
    if len(data) > max_header_bytes:
        raise HttpError(431, "request header too large")
    parser, sink = _feed(data, _IDLE_REQUEST, _new_request_parser, False)
    end = data.find(b"\r\n") + 2
    line = data[:end]
    version = line[-10:-2]
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        raise HttpError(505, "HTTP version not supported")
    method = parser.get_method()
    target = sink.url
    if len(line) != len(method) + len(target) + 12:
        raise HttpError(400, "malformed request line")
    if target[:1] != b"/" or method == b"CONNECT":
        # Absolute-form (`http://169.254.169.254/`), authority-form (CONNECT)
        # and asterisk-form: a mesh proxy is never a forward proxy.
        raise HttpError(400, "only origin-form request targets are accepted")
    hosts = sink.hosts
    if hosts is None:
        if version == b"HTTP/1.1":
            raise HttpError(400, "missing Host header")
    elif len(hosts) > 1:
        raise HttpError(400, "duplicate Host header")
    if sink.encodings is not None:
        # llhttp checks this too, except on an upgrade, where it stops early.
        if not _chunked_last(sink.encodings):
            raise HttpError(501, "unsupported Transfer-Encoding")
        framing, length = CHUNKED, 0
    elif sink.length is not None:
        framing, length = LENGTH, int(sink.length)
    else:
        framing, length = NONE, 0
    ctokens = _tokens(sink.connection)
    fields = data[end:-2]
    if sink.drops is not None:
        fields = _strip_named(_without(fields, sink.drops), ctokens)
    keep_alive = b"close" not in ctokens if version == b"HTTP/1.1" else b"keep-alive" in ctokens
    if sink.complete and keep_alive and not sink.spent and len(_IDLE_REQUEST) < _IDLE_MAX:
        _IDLE_REQUEST.append((parser, sink))
    upgrade = sink.upgrade
    return RequestHead(
        method,
        target,
        version,
        line,
        fields,
        hosts[0].lower() if hosts is not None else None,
        framing,
        length,
        keep_alive,
        upgrade if (upgrade and b"upgrade" in ctokens) else None,
        ctokens,
        sink.expect,
        sink.xff,
    )


def parse_response_head(
    data: bytes, request_method: bytes, max_header_bytes: int = 65536
) -> ResponseHead:
    """Parse a response head ending in CRLFCRLF; HttpError(502) to refuse it."""
    if len(data) > max_header_bytes:
        raise HttpError(502, "response head too large")
    parser, sink = _feed(data, _IDLE_RESPONSE, _new_response_parser, True)
    end = data.find(b"\r\n") + 2
    line = data[:end]
    version = line[:8]
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        raise HttpError(502, "malformed response head: HTTP version not supported")
    status = parser.get_status_code()
    if status < 100:
        raise HttpError(502, "malformed response head: invalid status")
    if sink.encodings is not None:
        framing, length = (CHUNKED if _chunked_last(sink.encodings) else UNTIL_CLOSE), 0
    elif sink.length is not None:
        framing, length = LENGTH, int(sink.length)
    else:
        framing, length = UNTIL_CLOSE, 0
    ctokens = _tokens(sink.connection)
    keep_alive = b"close" not in ctokens if version == b"HTTP/1.1" else b"keep-alive" in ctokens
    if keep_alive and not sink.spent and len(_IDLE_RESPONSE) < _IDLE_MAX:
        _recycle(parser, sink, framing, length)
    if request_method == b"HEAD" or status < 200 or status == 204 or status == 304:
        framing, length = NONE, 0
    fields = data[end:-2]
    if sink.drops is not None:
        fields = _strip_named(_without(fields, sink.drops), ctokens)
    if framing == UNTIL_CLOSE:
        keep_alive = False
    if version != b"HTTP/1.1":
        line = b"HTTP/1.1" + line[8:]
    return ResponseHead(line, status, fields, framing, length, keep_alive, ctokens, sink.upgrade)


def _recycle(
    parser: httptools.HttpResponseParser, sink: _ResponseFields, framing: int, length: int
) -> None:
    """Keep a response parser for the next head once its message is ended."""
    try:
        if not sink.complete:
            if framing == LENGTH and length <= len(_STAND_IN):
                parser.feed_data(_STAND_IN[:length])
            elif framing == CHUNKED:
                parser.feed_data(_LAST_CHUNK)
    except httptools.HttpParserError:
        return
    if sink.complete:
        _IDLE_RESPONSE.append((parser, sink))


def forwarded_head(req: RequestHead, client_ip: bytes) -> bytes:
    """The head as sent to a replica: hop-by-hop fields gone, X-Forwarded-* set."""
    xff = client_ip if req.forwarded_for is None else req.forwarded_for + b", " + client_ip
    parts = [
        req.request_line,
        req.fields,
        b"X-Forwarded-For: ",
        xff,
        b"\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: ",
        req.host or b"",
        b"\r\n",
    ]
    if req.upgrade is not None:
        parts += (b"Connection: Upgrade\r\nUpgrade: ", req.upgrade, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)
