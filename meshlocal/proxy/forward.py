"""The forwarding engine: one client connection in, pooled replica connections out.

Shared by the Service Connect listeners and the public (ALB-like) endpoint;
they differ only in how a request picks its service (`Router`).

Plain protocol callbacks, no task per request: a request whose replica has
a pooled connection goes from `data_received` to the replica's socket, and
the answer back, without a single await. Bodies are passed through as they
arrive, with their framing (Content-Length, chunked, gzip) unchanged;
back-pressure pauses the reading side whenever the writing side's buffer
is full, so memory stays bounded whatever the body size.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from meshlocal.faults import FaultTable
from meshlocal.proxy import faultio, http1, http1fault
from meshlocal.proxy.balancer import Balancer
from meshlocal.proxy.chunked import ChunkedScanner
from meshlocal.proxy.http1 import HttpError, RequestHead, ResponseHead
from meshlocal.proxy.metrics import UNCOUNTED, EdgeMetrics, Metrics, ServiceMetrics
from meshlocal.proxy.respond import (
    CLOSED,
    CONNECTING,
    DRAIN,
    EXCHANGE,
    IDLE,
    TUNNEL,
    ResponseSide,
    error_response,
)
from meshlocal.proxy.settings import ProxySettings
from meshlocal.proxy.upstream import UpstreamConn, UpstreamPool
from meshlocal.registry import Replica

# The balancer key of traffic from outside the mesh (the public endpoint).
PUBLIC_CLIENT = "public"
_EMPTY_LINE = (b"\r", b"\n")


@dataclass(frozen=True, slots=True)
class Route:
    service: str
    route: bytes  # value of x-meshlocal-route


# A router maps (request, listener's endpoint port) to a Route, or raises HttpError.
Router = Callable[[RequestHead, int], Route]


class Forwarder:
    """Creates downstream protocols; holds what they share."""

    def __init__(
        self,
        balancer: Balancer,
        pool: UpstreamPool,
        metrics: Metrics,
        settings: ProxySettings,
        faults: FaultTable | None = None,
    ) -> None:
        self.balancer = balancer
        self.pool = pool
        self.metrics = metrics
        self.settings = settings
        self.faults = faults if faults is not None else FaultTable()
        self.connections: set[Downstream] = set()
        # (container id, route) -> the debugging response headers, built once.
        self.debug_headers: dict[tuple[str, bytes], bytes] = {}
        # Parsed heads by their exact bytes: a service's clients mostly send the
        # same few heads and get the same few back, and parsing is most of a
        # small request's CPU time. Parsing is a pure function of the bytes.
        self.request_heads: dict[bytes, RequestHead] = {}
        self.response_heads: dict[bytes, ResponseHead] = {}

    def factory(self, router: Router, endpoint_port: int, label: bytes) -> Callable[[], Downstream]:
        return lambda: Downstream(self, router, endpoint_port, label)

    def sweep(self, now: float) -> None:
        """Time out late responses; close connections idle (no byte either way) too long.

        One periodic pass instead of a timer per request: arming and
        cancelling a timer handle for every request costs more than the rest
        of a small request's bookkeeping.
        """
        limit = self.settings.idle_timeout_s
        for conn in list(self.connections):
            if conn.deadline and now >= conn.deadline:
                conn.on_timeout()
            elif now - conn.last_activity > limit:
                conn.abort()


class Downstream(ResponseSide, asyncio.Protocol):
    """One client connection: parses requests, forwards each to a replica (the
    response side's reading and rendering: `respond.ResponseSide`)."""

    draws: faultio.Draws | None = None  # the current request's fault draws, if any

    def __init__(self, fwd: Forwarder, router: Router, endpoint_port: int, label: bytes) -> None:
        self.fwd = fwd
        self.settings = fwd.settings
        self.router = router
        self.endpoint_port = endpoint_port
        self.label = label
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.client_ip = b"unknown"
        # Whose balancer state this connection uses: one Envoy per client task,
        # so the caller's address; the public endpoint (the ALB) has its own.
        self.client = PUBLIC_CLIENT if label == b"public-endpoint" else ""
        self.buf = b""  # client bytes not forwarded yet
        self.state = IDLE
        self.last_activity = time.monotonic()
        self.reading_paused = False
        self.up_write_paused = False
        self.client_eof = False
        self.partial: http1.PartialHead | None = None  # a head still arriving
        # The last request head seen and its forwarded form (depends on client IP).
        self._memo_req: RequestHead | None = None
        self._memo_out = b""
        # This client's edge to the last service it called: found once, not per request.
        self._edge_to = ""
        self._edge = UNCOUNTED
        self._reset()

    def _reset(self) -> None:
        self.req: RequestHead | None = None
        self.route: Route | None = None
        self.m: ServiceMetrics | None = None
        self.edge: EdgeMetrics | None = None  # set once routed: what this client sees
        self.out_head = b""
        self.has_body = False
        self.req_done = True
        self.req_left = 0
        self.req_scanner: ChunkedScanner | None = None
        self.replica: Replica | None = None
        self.up: UpstreamConn | None = None
        self.tried: list[str] = []
        self.retries = 0
        self.resp: ResponseHead | None = None
        self.ubuf = b""
        self.resp_left = 0
        self.resp_scanner: ChunkedScanner | None = None
        self.up_dirty = False  # the replica sent bytes past the response
        self.keep = True
        self.started = 0.0
        self.processed = 0
        self.deadline = 0.0  # response head due by then (checked by the sweeper)

    # -- asyncio.Protocol (client side) ----------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        if peer:
            self.client_ip = str(peer[0]).encode()
            if self.client != PUBLIC_CLIENT:
                self.client = str(peer[0])
        self.fwd.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        state = self.state
        if state == EXCHANGE and not self.req_done:
            self._request_body(data)
            return
        if state == TUNNEL:
            if self.up is not None:
                self.up.write(data)
            return
        if state == CLOSED:
            return
        self.buf = self.buf + data if self.buf else data
        if state == IDLE:
            self._next_request()
        elif state == DRAIN:
            http1fault.drain(self)
        else:
            self._update_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.fwd.connections.discard(self)
        prev = self.state
        self.state = CLOSED
        self.deadline = 0.0
        up = self.up
        if up is not None:
            self.up = None
            up.abort()
            if prev == EXCHANGE and self.replica is not None:
                self.fwd.balancer.end(self.replica)

    def eof_received(self) -> bool | None:
        # A half-closed client still gets the answer to what it sent.
        self.client_eof = True
        if self.state == TUNNEL and self.up is not None and self.up.transport is not None:
            if self.up.transport.can_write_eof():
                self.up.transport.write_eof()
            return True
        return True if self.state in (CONNECTING, EXCHANGE) else None

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading(True)

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.pause_reading(False)

    # -- flow control ------------------------------------------------------

    def _update_reading(self) -> None:
        if not (self.reading_paused or self.up_write_paused or self.buf):
            return  # the common case: nothing paused, nothing buffered
        pause = self.up_write_paused or (
            self.state != IDLE and len(self.buf) > self.settings.read_chunk
        )
        if pause != self.reading_paused and self.transport is not None and self.state != CLOSED:
            self.reading_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def upstream_paused(self, paused: bool) -> None:
        self.up_write_paused = paused
        self._update_reading()

    # -- requests ------------------------------------------------------------

    def _next_request(self) -> None:
        buf = self.buf
        if buf[:1] in _EMPTY_LINE:
            # RFC 9112 2.2: empty lines before a request line are ignored (some
            # clients send a CRLF after a POST body).
            buf = self.buf = buf.lstrip(b"\r\n")
        idx = buf.find(b"\r\n\r\n")
        if idx < 0:
            if len(buf) > self.settings.max_header_bytes:
                self._fail(431, "request header too large")
            elif buf:
                if self.partial is None:
                    self.partial = http1.PartialHead()
                try:
                    self.partial.feed(buf)
                except HttpError as exc:
                    self._fail(exc.status, exc.reason)
            return
        self.partial = None
        end = idx + 4
        head = buf[:end] if end != len(buf) else buf
        self.buf = buf[end:] if end != len(buf) else b""
        fwd = self.fwd
        try:
            req = fwd.request_heads.get(head)
            if req is None:
                req = http1.parse_request_head(head, self.settings.max_header_bytes)
                limit = self.settings.head_cache
                if limit and len(head) <= 2048:
                    if len(fwd.request_heads) >= limit:
                        fwd.request_heads.clear()
                    fwd.request_heads[head] = req
            route = self.router(req, self.endpoint_port)
        except HttpError as exc:
            self._fail(exc.status, exc.reason)
            return
        self.req = req
        self.route = route
        self.m = fwd.metrics.service(route.service)
        if route.service != self._edge_to:
            self._edge_to = route.service
            self._edge = fwd.metrics.edge(route.service, self.client)
        self.edge = self._edge
        self.begun = time.monotonic()  # the client's wait starts: faults' delays count
        if req is self._memo_req:
            self.out_head = self._memo_out
        else:
            self.out_head = self._memo_out = http1.forwarded_head(req, self.client_ip)
            self._memo_req = req
        framing = req.framing
        if framing == http1.LENGTH and req.length > 0:
            self.has_body, self.req_done, self.req_left = True, False, req.length
        elif framing == http1.CHUNKED:
            self.has_body, self.req_done = True, False
            self.req_scanner = ChunkedScanner()
        self._select()

    def _select(self) -> None:
        route = self.route
        assert route is not None
        fwd = self.fwd
        replica = fwd.balancer.pick(route.service, self.tried, self.client)
        if replica is None:
            if self.tried:
                reason = (
                    f"no replica of service {route.service!r} accepted a connection "
                    f"(tried {len(self.tried)})"
                )
            else:
                reason = fwd.balancer.why_unavailable(route.service)
            self._fail(503, reason)
            return
        if fwd.faults.sc and self.label == faultio.SC_LABEL and http1fault.intercept(self, replica):
            return
        up = fwd.pool.take(replica)
        if up is not None:
            self._attach(replica, up)
            return
        self.state = CONNECTING
        self._update_reading()
        self.loop.create_task(self._connect(replica))

    def dial(self, replica: Replica) -> None:
        """`_select`'s end, for a request the faults let through late."""
        fwd = self.fwd
        up = fwd.pool.take(replica)
        if up is not None:
            self._attach(replica, up)
            return
        self.state = CONNECTING
        self._update_reading()
        self.loop.create_task(self._connect(replica))

    async def _connect(self, replica: Replica) -> None:
        fwd = self.fwd
        try:
            up = await fwd.pool.connect(replica)
        except (OSError, TimeoutError):
            if self.state != CLOSED:
                self.connect_failed(replica)
            return
        if self.state == CLOSED:
            fwd.pool.release(up)
            return
        self._attach(replica, up)

    def connect_failed(self, replica: Replica, *, fault: bool = False) -> None:
        """Nothing was sent: safe to retry on another replica (Envoy: connect-failure).

        A fault's refusal is not seen by outlier detection (Istio's fault filter
        sits before the router)."""
        if not fault:
            self.fwd.balancer.record(replica, True, self.client)
        self.tried.append(replica.container_id)
        self.retries += 1
        assert self.route is not None
        if self.retries > self.settings.max_retries or (
            fault
            and not faultio.others(self.fwd.balancer, self.route.service, self.client, self.tried)
        ):
            self._fail(
                503,
                faultio.CONNECT_FAILURE
                if fault
                else f"no replica of service {self.route.service!r} accepted a connection "
                f"(tried {len(self.tried)})",
            )
            return
        self._select()

    def _attach(self, replica: Replica, up: UpstreamConn) -> None:
        self.state = EXCHANGE
        self.replica = replica
        self.up = up
        up.owner = self
        self.fwd.balancer.begin(replica)
        now = time.monotonic()
        self.started = now
        self.deadline = now + self.settings.request_timeout_s
        self.processed = len(self.out_head)
        self.resp = None
        self.ubuf = b""
        buf = self.buf
        if not self.has_body:
            up.write(self.out_head)
        elif self.req_scanner is None and len(buf) >= self.req_left:
            # Whole (Content-Length) body already here: one write.
            left = self.req_left
            self.buf = buf[left:]
            self.req_left = 0
            self.req_done = True
            self.processed += left
            up.write(self.out_head + buf[:left])
        else:
            up.write(self.out_head)
            if buf:
                self.buf = b""
                self._request_body(buf)
        self._update_reading()

    def _request_body(self, data: bytes) -> None:
        up = self.up
        assert up is not None
        if self.req_scanner is None:
            take = min(self.req_left, len(data))
            self.req_left -= take
            done = self.req_left == 0
        else:
            try:
                take = self.req_scanner.feed(data)
            except HttpError as exc:
                self._abandon(exc.status, exc.reason)
                return
            done = self.req_scanner.done
        up.write(data if take == len(data) else data[:take])
        self.processed += take
        if done:
            self.req_done = True
            if take < len(data):
                self.buf = self.buf + data[take:]
            if self.resp is not None and self._response_complete():
                self._finish()
            else:
                self._update_reading()

    # -- replica side ----------------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        transport = self.transport
        if transport is None or self.state == CLOSED:
            return
        if self.state == TUNNEL:
            transport.write(data)
            return
        resp = self.resp
        if resp is None:
            self.ubuf = self.ubuf + data if self.ubuf else data
            self._response_head()
            return
        self._response_body(data, b"")

    def _finish(self) -> None:
        """The response is complete: release the replica, go on with the client."""
        req, resp, up, replica = self.req, self.resp, self.up, self.replica
        assert req is not None and resp is not None and replica is not None
        fwd = self.fwd
        fwd.balancer.end(replica)
        if self.m is not None:
            self.m.processed_bytes += self.processed
        if up is not None:
            self.up = None
            if (
                resp.keep_alive
                and req.version == b"HTTP/1.1"
                and self.req_done
                and not self.up_dirty
            ):
                fwd.pool.release(up)
            else:
                up.abort()
        keep = self.keep and self.req_done and not self.client_eof
        buf = self.buf
        self._reset()
        self.up_write_paused = False
        if not keep:
            self._close()
            return
        self.state = IDLE
        self._update_reading()
        if buf:
            self._next_request()

    def upstream_lost(self) -> None:
        """The replica closed its connection (or it was reset)."""
        if self.state == TUNNEL:
            self.up = None
            self._close()
            return
        resp = self.resp
        if resp is None:
            self._upstream_failed(False, "closed the connection before responding", lost=True)
        elif resp.framing == http1.UNTIL_CLOSE:
            self.up = None
            self.keep = False
            self._finish()
        else:
            self._upstream_failed(True, "closed the connection mid-response", lost=True)

    def _upstream_failed(self, mid_response: bool, why: str, *, lost: bool = False) -> None:
        up, replica = self.up, self.replica
        assert replica is not None
        fwd = self.fwd
        self.up = None
        if up is not None:
            up.abort()
        self.deadline = 0.0
        fwd.balancer.end(replica)
        if (
            lost
            and not mid_response
            and up is not None
            and up.reused
            and not self.has_body
            and not self.ubuf
        ):
            # A pooled connection the replica had already closed: replay on another.
            self.state = CONNECTING
            if self.draws is not None:
                self.draws.replay = True  # the same request: its faults stay drawn
            self._select()
            return
        fwd.balancer.record(replica, True, self.client)
        if mid_response:
            self.abort()  # the client sees a truncated response, as from Envoy
        else:
            if self.m is not None:
                self.m.response(502, (time.monotonic() - self.started) * 1000)
            self._fail(502, f"replica {replica.name} {why}")

    def on_timeout(self) -> None:
        self.deadline = 0.0
        replica, m = self.replica, self.m
        if self.resp is not None or replica is None or self.state != EXCHANGE:
            return
        up = self.up
        self.up = None
        if up is not None:
            up.abort()
        self.fwd.balancer.end(replica)
        self.fwd.balancer.record(replica, True, self.client)
        if m is not None:
            m.response(504, (time.monotonic() - self.started) * 1000)
        self._fail(
            504,
            f"replica {replica.name} sent no response within {self.settings.request_timeout_s:g} s",
        )

    # -- endings -------------------------------------------------------------

    def _abandon(self, status: int, reason: str) -> None:
        """A broken request body mid-exchange: drop the replica connection too."""
        up, replica = self.up, self.replica
        self.up = None
        if up is not None:
            up.abort()
        if replica is not None:
            self.fwd.balancer.end(replica)
        self.deadline = 0.0
        if self.resp is None:
            self._fail(status, reason)
        else:
            self.abort()

    def _fail(self, status: int, reason: str) -> None:
        self.answered(status)
        if self.transport is not None and self.state != CLOSED:
            self.transport.write(error_response(status, reason, route=self.label))
        self._close()

    def _close(self) -> None:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        if self.transport is not None:
            self.transport.close()  # flushes what is buffered

    def abort(self) -> None:
        up = self.up
        if up is not None:
            self.up = None
            up.abort()
            if self.state == EXCHANGE and self.replica is not None:
                self.fwd.balancer.end(self.replica)
        self.state = CLOSED
        if self.transport is not None:
            self.transport.abort()


class ShapedDownstream(Downstream):
    """A connection whose (last) exchange a bandwidth or reset fault shapes; a
    connection is switched to it (`http1fault`), so the plain one tests nothing."""

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(self.transport, faultio.ShapedTransport):
            self.transport.cancel()  # nobody to write to: no timer left armed
        super().connection_lost(exc)
