"""HTTP/1.1 message heads and body framing: pure code, no I/O.

The proxy forwards body bytes exactly as received (chunk framing,
compression and all), so it only needs to know where each message ends.
`parse_request_head` is strict on purpose: the request smuggling vectors
(Content-Length with Transfer-Encoding, conflicting lengths, duplicate
Host, obs-fold, bare LF) are refused instead of being guessed at.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

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

# The whole header section in one C-level match: token names, no obs-fold,
# no bare CR/LF or NUL in values. Values may hold obs-text (>= 0x80).
_FIELDS_RE = re.compile(rb"(?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[^\r\n\x00]*\r\n)*")


# The few headers that matter, found in one C-level scan of the lower-cased
# section. Hop-by-hop names are in it too: stripping (a regex substitution)
# only runs when one is present.
_HOP_ALTS = rb"keep-alive|proxy-connection|proxy-authenticate|proxy-authorization|te|trailer"
_REQUEST_INTEREST = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|host|upgrade|expect|x-forwarded-for"
    rb"|x-forwarded-proto|x-forwarded-host|" + _HOP_ALTS + rb"):[ \t]*([^\r]*)"
)
_RESPONSE_INTEREST = re.compile(
    rb"\r\n(content-length|transfer-encoding|connection|upgrade|" + _HOP_ALTS + rb")"
    rb":[ \t]*([^\r]*)"
)


def _strip_re(names: tuple[bytes, ...] | list[bytes]) -> re.Pattern[bytes]:
    alts = b"|".join(re.escape(n) for n in names)
    return re.compile(rb"(?im)^(?:" + alts + rb"):[^\r]*\r\n")


_STRIP_REQUEST_RE = _strip_re(HOP_BY_HOP + FORWARDED)
_STRIP_RESPONSE_RE = _strip_re(HOP_BY_HOP)
_TARGET_RE = re.compile(rb"/[\x21-\x7e\x80-\xff]*")
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
# A well-formed head in one C-level match; anything else takes the slow path,
# which says precisely what is wrong.
_REQUEST_FAST = re.compile(
    rb"(" + _TCHAR + rb"+) (/[\x21-\x7e\x80-\xff]*) (HTTP/1\.[01])\r\n"
    rb"((?:" + _TCHAR + rb"+:[^\r\n\x00]*\r\n)*)\r\n"
)
_RESPONSE_FAST = re.compile(
    rb"HTTP/1\.([01]) ([0-9]{3})(?: [^\r\n]*)?\r\n((?:[^\r\n \t][^\r\n]*\r\n)*)\r\n"
)
_REQUEST_DROP = frozenset(HOP_BY_HOP + FORWARDED)
_STANDARD_TOKENS = frozenset({b"close", b"keep-alive", b"upgrade"})
_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


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
    host: bytes | None
    framing: int
    length: int  # for LENGTH
    keep_alive: bool
    upgrade: bytes | None  # lower-cased Upgrade value when Connection names upgrade
    connection_tokens: frozenset[bytes]
    expect_continue: bool
    forwarded_for: bytes | None  # incoming X-Forwarded-For values, comma-joined
    strip: bool = True  # some header must be removed before forwarding

    def header_items(self) -> list[tuple[bytes, bytes]]:
        return split_fields(self.fields)


@dataclass(slots=True)
class ResponseHead:
    status_line: bytes  # with its CRLF
    status: int
    fields: bytes
    framing: int
    length: int
    keep_alive: bool
    connection_tokens: frozenset[bytes]
    strip: bool = True
    # The head as forwarded, per (replica, route, keep-alive, client version):
    # filled by the forwarder, worth it when identical heads are cached.
    rendered: dict[tuple[str, bytes, bool, bytes], bytes] = field(default_factory=dict)

    def header_items(self) -> list[tuple[bytes, bytes]]:
        return split_fields(self.fields)


def split_fields(fields: bytes) -> list[tuple[bytes, bytes]]:
    out = []
    for line in fields.split(b"\r\n"):
        if line:
            name, _, value = line.partition(b":")
            out.append((name, value.strip(b" \t")))
    return out


def _split_head(
    data: bytes, max_header_bytes: int, status: int, *, strict: bool
) -> tuple[bytes, bytes]:
    """(start line with CRLF, header fields) of a head ending in CRLFCRLF."""
    if len(data) > max_header_bytes:
        raise HttpError(status, "message head too large")
    end = data.find(b"\r\n")
    first = data[: end + 2]
    fields = data[end + 2 : -2]
    if b"\n" in first[:-2] or b"\r" in first[:-2]:
        raise HttpError(400, "bare CR or LF in start line")
    if strict:
        if _FIELDS_RE.fullmatch(fields) is None:
            raise HttpError(400, "malformed header section")
    elif fields.count(b"\n") != fields.count(b"\r\n") or b"\n " in fields or b"\n\t" in fields:
        raise HttpError(502, "malformed header section")
    return first, fields


def _length_framing(
    lengths: list[bytes] | None, encodings: list[bytes] | None, *, response: bool
) -> tuple[int, int]:
    bad = 502 if response else 400
    if encodings is not None:
        if lengths is not None:
            # RFC 9112 6.1: a classic smuggling vector; refuse it outright.
            raise HttpError(bad, "both Content-Length and Transfer-Encoding")
        codings = [t for v in encodings for t in _tokens(v)]
        if not codings or codings[-1] != b"chunked" or codings.count(b"chunked") != 1:
            if response:
                return UNTIL_CLOSE, 0
            raise HttpError(501, "unsupported Transfer-Encoding")
        return CHUNKED, 0
    if lengths is not None:
        if len(lengths) == 1 and lengths[0].isdigit() and len(lengths[0]) <= 18:
            return LENGTH, int(lengths[0])  # the common case, fast
        values = {p.strip(b" \t") for lv in lengths for p in lv.split(b",")}
        if len(values) != 1:
            raise HttpError(bad, "conflicting Content-Length")
        (only,) = values
        if not only.isdigit() or len(only) > 18:
            raise HttpError(bad, "invalid Content-Length")
        return LENGTH, int(only)
    return (UNTIL_CLOSE if response else NONE), 0


def _connection(values: list[bytes] | None) -> frozenset[bytes]:
    if values is None:
        return _NO_TOKENS
    if len(values) == 1 and b"," not in values[0]:
        return frozenset(values)
    return frozenset(t for v in values for t in _tokens(v))


_NO_TOKENS: frozenset[bytes] = frozenset()


def _tokens(value: bytes) -> list[bytes]:
    return [t.strip(b" \t") for t in value.split(b",") if t.strip(b" \t")]


def _cut(fields: bytes, starts: list[int]) -> bytes:
    """`fields` without the lines starting at `starts` (offsets from the interest scan)."""
    out = []
    pos = 0
    for start in starts:
        out.append(fields[pos:start])
        pos = fields.find(b"\r\n", start) + 2
    out.append(fields[pos:])
    return b"".join(out)


def _request_slow(data: bytes, max_header_bytes: int) -> tuple[bytes, bytes, bytes, bytes, bytes]:
    """Why a request head failed the fast match: raises HttpError (or parses it)."""
    line, fields = _split_head(data, max_header_bytes, 431, strict=True)
    parts = line[:-2].split(b" ")
    if len(parts) != 3:
        raise HttpError(400, "malformed request line")
    method, target, version = parts
    if _TOKEN_RE.fullmatch(method) is None:
        raise HttpError(400, "malformed method")
    if version != b"HTTP/1.1" and version != b"HTTP/1.0":
        raise HttpError(505, "HTTP version not supported")
    if _TARGET_RE.fullmatch(target) is None:
        # Absolute-form (`http://169.254.169.254/`), authority-form (CONNECT)
        # and asterisk-form: a mesh proxy is never a forward proxy.
        raise HttpError(400, "only origin-form request targets are accepted")
    return method, target, version, line, fields


def parse_request_head(data: bytes, max_header_bytes: int = 32768) -> RequestHead:
    """Parse a request head ending in CRLFCRLF; raise HttpError to refuse it."""
    if len(data) > max_header_bytes:
        raise HttpError(431, "request header too large")
    m = _REQUEST_FAST.fullmatch(data)
    if m is not None:
        method, target, version, fields = m.groups()
        line = data[: m.start(4)]
    else:
        method, target, version, line, fields = _request_slow(data, max_header_bytes)
    # One C-level scan for the few headers that matter; the rest pass through.
    lengths = encodings = connection = hosts = None
    upgrade = xff = None
    expect = strip = False
    drops: list[int] = []
    for match in _REQUEST_INTEREST.finditer(b"\r\n" + fields.lower()):
        name, value = match.groups()
        value = value.rstrip(b" \t")
        if name in _REQUEST_DROP:
            drops.append(match.start())
        if name == b"host":
            if hosts is not None:
                raise HttpError(400, "duplicate Host header")
            hosts = value
        elif name == b"content-length":
            lengths = [value] if lengths is None else [*lengths, value]
        elif name == b"transfer-encoding":
            encodings = [value] if encodings is None else [*encodings, value]
        elif name == b"connection":
            connection = [value] if connection is None else [*connection, value]
        elif name == b"expect":
            expect = expect or value == b"100-continue"
        elif name == b"x-forwarded-for":
            if value:
                xff = value if xff is None else xff + b", " + value
        elif name == b"upgrade":
            upgrade = value
    framing, length = _length_framing(lengths, encodings, response=False)
    ctokens = _connection(connection)
    if drops:
        fields, strip = _cut(fields, drops), bool(ctokens - _STANDARD_TOKENS)
    host = hosts
    if host is None and version == b"HTTP/1.1":
        raise HttpError(400, "missing Host header")
    keep_alive = b"close" not in ctokens if version == b"HTTP/1.1" else b"keep-alive" in ctokens
    return RequestHead(
        method=method,
        target=target,
        version=version,
        request_line=line,
        fields=fields,
        host=host,
        framing=framing,
        length=length,
        keep_alive=keep_alive,
        upgrade=upgrade if (upgrade and b"upgrade" in ctokens) else None,
        connection_tokens=ctokens,
        expect_continue=expect,
        forwarded_for=xff,
        strip=strip,
    )


def parse_response_head(
    data: bytes, request_method: bytes, max_header_bytes: int = 65536
) -> ResponseHead:
    if len(data) > max_header_bytes:
        raise HttpError(502, "response head too large")
    m = _RESPONSE_FAST.fullmatch(data)
    if m is None:
        raise HttpError(502, "malformed response head from upstream")
    minor, code, fields = m.groups()
    line = data[: m.start(3)]
    status = int(code)
    lengths = encodings = connection = None
    strip = False
    drops: list[int] = []
    for match in _RESPONSE_INTEREST.finditer(b"\r\n" + fields.lower()):
        name, value = match.groups()
        value = value.rstrip(b" \t")
        if name == b"content-length":
            lengths = [value] if lengths is None else [*lengths, value]
        elif name == b"transfer-encoding":
            encodings = [value] if encodings is None else [*encodings, value]
        else:  # hop-by-hop
            drops.append(match.start())
            if name == b"connection":
                connection = [value] if connection is None else [*connection, value]
    framing, length = _length_framing(lengths, encodings, response=True)
    ctokens = _connection(connection)
    if drops:
        fields, strip = _cut(fields, drops), bool(ctokens - _STANDARD_TOKENS)
    if request_method == b"HEAD" or status < 200 or status == 204 or status == 304:
        framing, length = NONE, 0
    keep_alive = b"close" not in ctokens if minor == b"1" else b"keep-alive" in ctokens
    if framing == UNTIL_CLOSE:
        keep_alive = False
    if minor != b"1":
        line = b"HTTP/1.1" + line[8:]
    return ResponseHead(line, status, fields, framing, length, keep_alive, ctokens, strip)


def strip_request_fields(fields: bytes, connection_tokens: frozenset[bytes]) -> bytes:
    """Drop hop-by-hop headers, those Connection names, and X-Forwarded-*."""
    out = _STRIP_REQUEST_RE.sub(b"", fields)
    extra = connection_tokens - _STANDARD_TOKENS
    return _strip_re(sorted(extra)).sub(b"", out) if extra else out


def strip_response_fields(fields: bytes, connection_tokens: frozenset[bytes]) -> bytes:
    out = _STRIP_RESPONSE_RE.sub(b"", fields)
    extra = connection_tokens - _STANDARD_TOKENS
    return _strip_re(sorted(extra)).sub(b"", out) if extra else out


def parse_chunk_size(line: bytes) -> int:
    """The size in a chunk-size line (`1a;ext=x\\r\\n`); HttpError when malformed."""
    if not line.endswith(b"\r\n"):
        raise HttpError(400, "chunk-size line without CRLF")
    size_text = line[:-2].split(b";", 1)[0].strip(b" \t")
    if not size_text or len(size_text) > 15 or any(c not in _HEX for c in size_text):
        raise HttpError(400, "malformed chunk size")
    return int(size_text, 16)


_HEX = frozenset(b"0123456789abcdefABCDEF")


class ChunkedScanner:
    """Finds where a chunked body ends, without changing its bytes.

    `feed(data)` returns how many bytes of `data` belong to the body; once
    `done` is true the rest belongs to the next message. Chunk data is
    skipped by count, so a large body costs no per-byte Python work.
    """

    __slots__ = ("_line", "_remaining", "_state", "done", "max_line")

    _SIZE = 0  # reading a chunk-size line
    _DATA = 1  # inside chunk data
    _DATA_END = 2  # the CRLF after chunk data
    _TRAILER = 3  # trailer lines until an empty one

    def __init__(self, max_line: int = 8192) -> None:
        self._state = self._SIZE
        self._remaining = 0
        self._line = b""
        self.done = False
        self.max_line = max_line

    def feed(self, data: bytes) -> int:
        pos = 0
        n = len(data)
        while pos < n and not self.done:
            if self._state == self._DATA:
                take = min(self._remaining, n - pos)
                pos += take
                self._remaining -= take
                if self._remaining == 0:
                    self._state = self._DATA_END
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                self._line += data[pos:]
                if len(self._line) > self.max_line:
                    raise HttpError(400, "chunk line too long")
                return n
            line = self._line + data[pos : end + 1]
            self._line = b""
            pos = end + 1
            if self._state == self._DATA_END:
                if line != b"\r\n":
                    raise HttpError(400, "chunk data longer than its size")
                self._state = self._SIZE
            elif self._state == self._TRAILER:
                if not line.endswith(b"\r\n"):
                    raise HttpError(400, "bare LF in chunked trailer")
                if line == b"\r\n":
                    self.done = True
            else:
                size = parse_chunk_size(line)
                if size == 0:
                    self._state = self._TRAILER
                else:
                    self._remaining = size
                    self._state = self._DATA
        return pos
