"""Where a chunked body ends, checked by llhttp: pure code, no I/O.

httptools reports no offset for a message's end inside a buffer (only for
an upgrade), and the proxy forwards body bytes untouched, so a pipelined
request after a chunked body, or bytes a replica sends past its response,
need that offset from somewhere. `ChunkedScanner` counts its way through
the chunks to find it, and an llhttp parser is fed exactly the same bytes,
so llhttp's strict rules (chunk sizes, extensions, trailers) apply, and the
two must end the body at the same byte or the exchange is refused.
"""

from __future__ import annotations

import httptools

from meshlocal.proxy.http1 import HttpError


class _Done:
    __slots__ = ("done",)

    def __init__(self) -> None:
        self.done = False

    def on_message_complete(self) -> None:
        self.done = True


# What llhttp is told before a chunked body's bytes, so it checks them.
_CHUNKED_REQUEST = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
_CHUNKED_RESPONSE = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


class ChunkedScanner:
    """Finds where a chunked body ends, without changing its bytes.

    `feed(data)` returns how many bytes of `data` belong to the body; once
    `done` is true the rest belongs to the next message. Chunk data is
    skipped by count, so a large body costs no per-byte Python work. llhttp
    parses the same bytes (chunk sizes, extensions, trailers) and must end
    the message exactly where this does.
    """

    __slots__ = (
        "_check",
        "_line",
        "_llhttp",
        "_remaining",
        "_state",
        "_trusted",
        "done",
        "max_line",
    )

    _SIZE = 0  # reading a chunk-size line
    _DATA = 1  # inside chunk data
    _DATA_END = 2  # the CRLF after chunk data
    _TRAILER = 3  # trailer lines until an empty one

    def __init__(self, max_line: int = 8192, *, response: bool = False) -> None:
        self._state = self._SIZE
        self._remaining = 0
        self._line = b""
        self.done = False
        self.max_line = max_line
        self._llhttp = _Done()
        # A replica's body may put spaces after a chunk size (older servers do),
        # as its head may end lines in bare LFs: replicas are trusted, clients not.
        self._trusted = response
        if response:
            self._check: httptools.HttpRequestParser | httptools.HttpResponseParser = (
                httptools.HttpResponseParser(self._llhttp)
            )
            self._check.set_dangerous_leniencies(lenient_spaces_after_chunk_size=True)
            self._check.feed_data(_CHUNKED_RESPONSE)
        else:
            self._check = httptools.HttpRequestParser(self._llhttp)
            self._check.feed_data(_CHUNKED_REQUEST)

    def feed(self, data: bytes) -> int:
        taken = self._scan(data)
        try:
            self._check.feed_data(data if taken == len(data) else data[:taken])
        except httptools.HttpParserError as exc:
            raise HttpError(400, f"malformed chunked body: {exc}") from None
        if self._llhttp.done != self.done:
            raise HttpError(400, "malformed chunked body: its end is ambiguous")
        return taken

    def _scan(self, data: bytes) -> int:
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
                size = _chunk_size(line, self._trusted)
                if size == 0:
                    self._state = self._TRAILER
                else:
                    self._remaining = size
                    self._state = self._DATA
        return pos


def _chunk_size(line: bytes, trusted: bool = False) -> int:
    """The size in a chunk-size line (`1a;ext=x\\r\\n`); llhttp checks the rest."""
    if not line.endswith(b"\r\n"):
        raise HttpError(400, "chunk-size line without CRLF")
    size_text = line[:-2].split(b";", 1)[0]
    if trusted:
        size_text = size_text.rstrip(b" \t")
    if not size_text or len(size_text) > 15 or any(c not in _HEX for c in size_text):
        raise HttpError(400, "malformed chunk size")
    return int(size_text, 16)


_HEX = frozenset(b"0123456789abcdefABCDEF")
