"""The response side of `forward.Downstream`: a replica's response head read,
checked and rendered for the client, its body passed through with its framing.

A mixin, so the forwarder's hot path stays plain method calls on one object.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import TYPE_CHECKING

from meshlocal.proxy import faultio, http1
from meshlocal.proxy.chunked import ChunkedScanner
from meshlocal.proxy.http1 import HttpError, RequestHead, ResponseHead
from meshlocal.proxy.metrics import EdgeMetrics, ServiceMetrics
from meshlocal.proxy.settings import ProxySettings
from meshlocal.proxy.upstream import UpstreamConn
from meshlocal.registry import Replica

if TYPE_CHECKING:
    from meshlocal.proxy.forward import Forwarder, Route

# Downstream states
IDLE = 0  # waiting for a request head
CONNECTING = 1  # waiting for a replica connection
EXCHANGE = 2  # attached to a replica
TUNNEL = 3  # after 101 Switching Protocols
CLOSED = 4
DRAIN = 5  # an aborted request's body being skipped

_BARE_LF = re.compile(rb"\r?\n")  # upstream response heads only


_REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
}


def error_response(
    status: int,
    body: str,
    *,
    route: bytes = b"service-connect",
    close: bool = True,
    head: bool = False,
) -> bytes:
    data = body.encode() + b"\n"
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"x-meshlocal-route: %s\r\n%s\r\n%s"
        % (
            status,
            _REASONS.get(status) or faultio.reason(status),
            len(data),
            route,
            b"connection: close\r\n" if close else b"",
            b"" if head else data,
        )
    )


class ResponseSide:
    """What `Downstream` does with a replica's response (see forward.py for the state)."""

    fwd: Forwarder
    client: str
    settings: ProxySettings
    transport: asyncio.Transport | None
    state: int
    buf: bytes
    client_eof: bool
    req: RequestHead | None
    route: Route | None
    m: ServiceMetrics | None
    edge: EdgeMetrics | None
    begun: float
    req_done: bool
    replica: Replica | None
    up: UpstreamConn | None
    resp: ResponseHead | None
    ubuf: bytes
    resp_left: int
    resp_scanner: ChunkedScanner | None
    up_dirty: bool
    keep: bool
    started: float
    processed: int
    deadline: float

    if TYPE_CHECKING:

        def _finish(self) -> None: ...
        def _update_reading(self) -> None: ...
        def _upstream_failed(self, mid_response: bool, why: str, *, lost: bool = False) -> None: ...

    def _response_head(self) -> None:
        req, replica, m = self.req, self.replica, self.m
        assert req is not None and replica is not None and m is not None
        transport = self.transport
        assert transport is not None
        while True:
            ubuf = self.ubuf
            idx = ubuf.find(b"\r\n\r\n")
            lf = ubuf.find(b"\n\n", 0, idx if idx >= 0 else len(ubuf))
            if lf >= 0:
                # A head ended by bare LFs (busybox CGI scripts write them). RFC
                # 9112 lets a recipient accept them; replicas are trusted, and
                # the client gets the head in CRLF form either way.
                end = lf + 2
                head, rest = _BARE_LF.sub(b"\r\n", ubuf[:end]), ubuf[end:]
            elif idx < 0:
                if len(ubuf) > 65536:
                    self._upstream_failed(False, "response head too large")
                return
            else:
                end = idx + 4
                head, rest = (ubuf, b"") if end == len(ubuf) else (ubuf[:end], ubuf[end:])
            cacheable = req.method != b"HEAD" and len(head) <= 2048
            cache = self.fwd.response_heads
            resp = cache.get(head) if cacheable else None
            if resp is None:
                try:
                    resp = http1.parse_response_head(head, req.method)
                except HttpError as exc:
                    self._upstream_failed(False, f"invalid response: {exc.reason}")
                    return
                limit = self.settings.head_cache
                if cacheable and limit:
                    if len(cache) >= limit:
                        cache.clear()
                    cache[head] = resp
            self.processed += len(head)
            if resp.status < 200 and resp.status != 101:
                # Interim (100 Continue, 103 Early Hints): pass on, wait for the final one.
                transport.write(self._head_bytes(resp, True))
                self.ubuf = rest
                if not rest:
                    return
                continue
            break
        self.ubuf = b""
        self.deadline = 0.0
        now = time.monotonic()
        m.response(resp.status, (now - self.started) * 1000)
        edge = self.edge
        if edge is not None:
            self.edge = None  # one call per request, whatever follows
            edge.response(resp.status, (now - self.begun) * 1000)
        self.fwd.balancer.record(replica, resp.status >= 500, self.client)
        self.resp = resp
        if resp.status == 101 and req.upgrade is not None:
            upgrade = resp.upgrade or req.upgrade
            transport.write(self._head_bytes(resp, True, upgrade=upgrade) + rest)
            # A tunnel is no longer a request in flight: draining need not wait for it.
            self.fwd.balancer.end(replica)
            self.state = TUNNEL
            self.req_done = True
            buf, self.buf = self.buf, b""
            if buf and self.up is not None:
                self.up.write(buf)
            self._update_reading()
            return
        self.keep = req.keep_alive and resp.framing != http1.UNTIL_CLOSE and not self.client_eof
        if not self.req_done:
            # Answered before the request body ended (417, an early 200, 413):
            # the body's end may never be found, so the connection closes after
            # this answer, and RFC 9110 10.1.1 asks to say so in it.
            self.keep = False
        framing = resp.framing
        if framing == http1.LENGTH:
            self.resp_left = resp.length
        elif framing == http1.CHUNKED:
            self.resp_scanner = ChunkedScanner(response=True)
        self._response_body(rest, self._head_bytes(resp, self.keep))

    def _response_body(self, data: bytes, head: bytes) -> None:
        resp = self.resp
        transport = self.transport
        assert resp is not None and transport is not None
        framing = resp.framing
        done = False
        if framing == http1.LENGTH:
            take = min(self.resp_left, len(data))
            self.resp_left -= take
            done = self.resp_left == 0
        elif framing == http1.CHUNKED:
            assert self.resp_scanner is not None
            try:
                take = self.resp_scanner.feed(data)
            except HttpError as exc:
                self._upstream_failed(True, f"invalid chunked body: {exc.reason}")
                return
            done = self.resp_scanner.done
        elif framing == http1.NONE:
            take = 0
            done = True
        else:  # until close
            take = len(data)
        if take < len(data):
            self.up_dirty = True  # bytes past the message: never reuse this connection
            data = data[:take]
        if head:
            if len(data) < 16384:
                transport.write(head + data)
            else:
                transport.writelines((head, data))
        elif data:
            transport.write(data)
        self.processed += take
        if done and self.req_done:
            self._finish()
        elif done:
            # The replica answered before the request body ended: the body's
            # end can't be found safely any more, so neither side is reused.
            self.keep = False
            self.up_dirty = True
            self._finish()

    def _response_complete(self) -> bool:
        resp = self.resp
        if resp is None:
            return False
        if resp.framing == http1.LENGTH:
            return self.resp_left == 0
        if resp.framing == http1.CHUNKED:
            return self.resp_scanner is not None and self.resp_scanner.done
        return resp.framing == http1.NONE

    def answered(self, status: int) -> None:
        """The proxy itself answered the request (an error, an abort fault): one
        call on the client's edge, timed from routing, as the client waited."""
        edge = self.edge
        if edge is not None:
            self.edge = None
            edge.response(status, (time.monotonic() - self.begun) * 1000)

    def _head_bytes(
        self, resp: ResponseHead, keep_alive: bool, *, upgrade: bytes | None = None
    ) -> bytes:
        assert self.replica is not None and self.route is not None and self.req is not None
        memo_key = (self.replica.container_id, self.route.route, keep_alive, self.req.version)
        rendered = resp.rendered
        if rendered is not None and upgrade is None:
            done = rendered.get(memo_key)
            if done is not None:
                return done
        key = (self.replica.container_id, self.route.route)
        tail = self.fwd.debug_headers.get(key)
        if tail is None:
            tail = b"x-meshlocal-replica: %s\r\nx-meshlocal-route: %s\r\n" % (
                self.replica.name.encode(),
                self.route.route,
            )
            if len(self.fwd.debug_headers) > 4096:
                self.fwd.debug_headers.clear()
            self.fwd.debug_headers[key] = tail
        if upgrade is not None:
            tail += b"Connection: Upgrade\r\nUpgrade: %s\r\n" % upgrade
        elif not keep_alive:
            tail += b"Connection: close\r\n"
        elif self.req.version == b"HTTP/1.0":
            tail += b"Connection: keep-alive\r\n"
        out = resp.status_line + resp.fields + tail + b"\r\n"
        if upgrade is None and self.settings.head_cache:
            if rendered is None:
                rendered = resp.rendered = {}
            elif len(rendered) >= 64:
                rendered.clear()
            rendered[memo_key] = out
        return out
