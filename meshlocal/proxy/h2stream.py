"""One proxied HTTP/2 stream: a client's stream and the replica stream it was given."""

from __future__ import annotations

import contextlib
import time
from collections import deque
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes
from h2.exceptions import ProtocolError
from hpack.struct import Header

from meshlocal.proxy import faultio, h2fault, h2util
from meshlocal.registry import Replica

if TYPE_CHECKING:
    from meshlocal.proxy.http2 import Downstream, Upstream


class Stream:
    """One client stream and its replica stream, if any."""

    draws: faultio.Draws | None = None  # its fault draws, if the table has faults

    def __init__(
        self, down: Downstream, sid: int, headers: list[tuple[bytes, bytes]], grpc: bool
    ) -> None:
        self.down = down
        self.proxy = down.proxy
        self.sid = sid
        self.grpc = grpc
        self.req_headers = headers
        self.req_buf: deque[bytes] = deque()
        self.req_trailers: list[tuple[bytes, bytes]] | None = None
        self.req_end = False  # the client ended its side
        self.req_sent_end = False  # ... and that went to the replica
        self.body_sent = 0
        self.resp_buf: deque[bytes] = deque()
        self.resp_trailers: list[tuple[bytes, bytes]] | None = None
        self.resp_end = False  # the replica (or we) ended the response
        self.resp_sent_end = False
        self.head_sent = False
        self.replica: Replica | None = None
        self.begun = False  # balancer.begin() called for self.replica
        self.up: Upstream | None = None
        self.up_id = 0  # 0: waiting for the connection
        self.tried: list[str] = []
        self.retries = 0
        self.started = 0.0
        self.opened = time.monotonic()  # the client's wait starts: faults' delays count
        self.failed: bool | None = None  # None until counted on the client's edge
        self.deadline = 0.0  # response head due by then (checked by the sweeper)
        self.done = False

    # -- replica selection -------------------------------------------------

    def select(self) -> None:
        proxy, down = self.proxy, self.down
        replica = proxy.balancer.pick(down.service, self.tried, down.client)
        if replica is None:
            if self.tried:
                why = (
                    f"no replica of service {down.service!r} accepted a connection "
                    f"(tried {len(self.tried)})"
                )
            else:
                why = proxy.balancer.why_unavailable(down.service)
            self.local_reply(503, why)
            return
        if proxy.faults.sc and h2fault.intercept(self, replica):
            return
        self.replica = replica
        self.begun = True
        proxy.balancer.begin(replica)
        self.requeue()

    def go(self, replica: Replica) -> None:
        """`select`'s end, for a stream the faults let through late."""
        self.replica = replica
        self.begun = True
        self.proxy.balancer.begin(replica)
        self.requeue()

    def requeue(self) -> None:
        """Onto a connection to self.replica with room for the stream."""
        assert self.replica is not None
        self.up = up = self.proxy.acquire(self.replica)
        if up.state == h2util.OPEN:
            up.open_stream(self)
        else:
            up.waiting.append(self)

    def attached(self, up: Upstream, up_id: int, ended: bool) -> None:
        self.up, self.up_id = up, up_id
        self.started = time.monotonic()
        self.req_sent_end = ended
        self.pump_req()

    def _detach(self) -> None:
        up, self.up = self.up, None
        if up is not None:
            if self.up_id:
                up.streams.pop(self.up_id, None)
                up.stream_done()
            elif self in up.waiting:
                up.waiting.remove(self)
        self.up_id = 0
        if self.begun and self.replica is not None:
            self.begun = False
            self.proxy.balancer.end(self.replica)

    def _retry(self, why: str = "") -> None:
        """Nothing reached the replica: try another (Envoy: connect-failure, refused-stream)."""
        assert self.replica is not None
        self._detach()
        self.tried.append(self.replica.container_id)
        self.retries += 1
        self.req_sent_end = False
        if self.retries > self.proxy.settings.max_retries:
            self.local_reply(
                503,
                why
                or f"no replica of service {self.down.service!r} accepted a connection "
                f"(tried {len(self.tried)})",
            )
        else:
            self.select()

    def connect_failed(self) -> None:
        if self.done or self.replica is None:
            return
        self.proxy.balancer.record(self.replica, True, self.down.client)
        self._retry()

    def fault_refused(self, replica: Replica) -> None:
        """A refuse or partition fault: a connect failure outlier detection never sees."""
        self.replica = replica
        down = self.down
        tried = [*self.tried, replica.container_id]
        if not faultio.others(self.proxy.balancer, down.service, down.client, tried):
            self.retries = self.proxy.settings.max_retries  # nowhere else: Envoy's reply now
        self._retry(faultio.CONNECT_FAILURE)

    def refused(self) -> None:
        """The replica will not process the stream (GOAWAY, REFUSED_STREAM, closed replica)."""
        if self.done:
            return
        if self.head_sent or self.body_sent:
            self.up_lost("closed the connection mid-request")
        else:
            self._retry()

    # -- client side events ------------------------------------------------

    def on_req_data(self, data: bytes, flow_len: int) -> None:
        if flow_len > len(data):  # padding: nothing to forward
            self.down.conn_ack(flow_len - len(data), self.sid)
        if self.req_sent_end or self.resp_end:
            self.down.conn_ack(len(data), self.sid)  # nobody will read it
            return
        if data:
            self.req_buf.append(data)
            self.pump_req()

    def on_req_end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        if trailers is not None:
            self.req_trailers = trailers
        if self.req_end:
            return
        self.req_end = True
        self.arm()
        self.pump_req()

    def arm(self) -> None:
        # Envoy arms the route timeout once the downstream request is complete.
        timeout = self.proxy.settings.request_timeout_s
        if timeout > 0 and not self.head_sent:
            self.deadline = time.monotonic() + timeout

    def client_reset(self) -> None:
        self._reset_up(ErrorCodes.CANCEL)
        self.finish()

    # -- replica side events -----------------------------------------------

    def on_response(self, headers: list[Header], ended: bool) -> None:
        status = h2util.status_of(headers)
        down, replica = self.down, self.replica
        assert replica is not None
        if 100 <= status < 200:
            down.send_headers(self.sid, h2util.response_headers(headers, replica.name.encode()))
            return
        self.deadline = 0.0
        self.head_sent = True
        m = down.m
        m.response(status, (time.monotonic() - self.started) * 1000)
        code = h2util.grpc_status(headers) if self.grpc else None
        if self.grpc:
            m.grpc_requests += 1
            if code is not None:
                m.grpc_status(code)
        failed = (h2util.grpc_to_http(code) if code is not None else status) >= 500
        self.proxy.balancer.record(replica, failed, down.client)
        self.counted(500 if failed else status)
        down.send_headers(
            self.sid, h2util.response_headers(headers, replica.name.encode()), end=ended
        )
        if ended:
            self.resp_end = self.resp_sent_end = True
            self._check_done()

    def on_resp_data(self, data: bytes, flow_len: int) -> None:
        up = self.up
        assert up is not None
        if flow_len > len(data):
            up.conn_ack(flow_len - len(data), self.up_id)
        if data:
            self.resp_buf.append(data)
            self.pump_resp()

    def on_resp_end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        if trailers is not None:
            self.resp_trailers = trailers
            if self.grpc and (code := h2util.grpc_status(trailers)) is not None:
                self.down.m.grpc_status(code)
                if h2util.grpc_to_http(code) >= 500 and self.failed is False:
                    self.failed = True
                    self.down.edge.errors += 1  # its call was counted with the head
        if not self.resp_end:
            self.resp_end = True
            self.pump_resp()

    def up_reset(self, code: int) -> None:
        if code == ErrorCodes.REFUSED_STREAM and not self.head_sent and not self.body_sent:
            self.up_id = 0  # already closed on the replica's side
            self._retry()
            return
        if self.resp_end:
            return  # a reset after the whole response: it only stops our request body
        self.up_lost(f"reset the stream (error code {code})", code=code)

    def up_lost(self, why: str, *, code: int = ErrorCodes.INTERNAL_ERROR) -> None:
        """The replica stream failed before the response ended."""
        if self.done or self.resp_end:
            return
        replica = self.replica
        assert replica is not None
        self.proxy.balancer.record(replica, True, self.down.client)
        self._detach()
        if self.head_sent:
            # Envoy resets the downstream stream once the response has started.
            self.down.reset_stream(self.sid, code)
            self.finish()
            return
        self.down.m.response(502, (time.monotonic() - self.started) * 1000)
        if self.grpc:
            self.down.m.grpc_requests += 1
            self.down.m.grpc_status(14)
        self.local_reply(502, f"replica {replica.name} {why}")

    def on_timeout(self) -> None:
        self.deadline = 0.0
        replica = self.replica
        if self.done or self.head_sent or replica is None:
            return
        self._reset_up(ErrorCodes.CANCEL)
        self.proxy.balancer.record(replica, True, self.down.client)
        self._detach()
        m = self.down.m
        m.response(504, (time.monotonic() - self.started) * 1000)
        if self.grpc:
            m.grpc_requests += 1
            m.grpc_status(14)
        # Envoy's body; its gRPC local reply maps 504 to UNAVAILABLE, not DEADLINE_EXCEEDED.
        self.local_reply(504, "upstream request timeout")

    # -- moving bytes ------------------------------------------------------

    def pump_req(self) -> None:
        """Client -> replica, as far as the replica's windows and socket allow."""
        up = self.up
        if up is None or not self.up_id or self.req_sent_end or up.write_paused or self.done:
            return
        conn, sid = up.conn, self.up_id
        try:
            while self.req_buf:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if room <= 0:
                    break
                part = _take(self.req_buf, room)
                last = not self.req_buf and self.req_end and self.req_trailers is None
                conn.send_data(sid, part, end_stream=last)
                self.req_sent_end = last
                self.body_sent += len(part)
                self.down.conn_ack(len(part), self.sid)
            if self.req_end and not self.req_buf and not self.req_sent_end:
                if self.req_trailers is not None:
                    conn.send_headers(sid, self.req_trailers, end_stream=True)
                else:
                    conn.end_stream(sid)
                self.req_sent_end = True
        except ProtocolError:
            self.up_lost("refused the request stream")
        up.flush()
        self.down.flush()

    def pump_resp(self) -> None:
        """Replica -> client, as far as the client's windows and socket allow."""
        down = self.down
        if down.write_paused or self.resp_sent_end or self.done:
            return
        conn, sid, up = down.conn, self.sid, self.up
        try:
            while self.resp_buf:
                room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if room <= 0:
                    break
                part = _take(self.resp_buf, room)
                last = not self.resp_buf and self.resp_end and self.resp_trailers is None
                conn.send_data(sid, part, end_stream=last)
                self.resp_sent_end = last
                if up is not None and self.up_id:
                    up.conn_ack(len(part), self.up_id)
            if self.resp_end and not self.resp_buf and not self.resp_sent_end:
                if self.resp_trailers is not None:
                    conn.send_headers(sid, self.resp_trailers, end_stream=True)
                else:
                    conn.end_stream(sid)
                self.resp_sent_end = True
        except ProtocolError:
            self.resp_sent_end = True  # the client's stream is gone (it reset it)
        down.flush()
        if up is not None:
            up.flush()
        self._check_done()

    def local_reply(self, status: int, message: str, grpc_code: int | None = None) -> None:
        if self.done:
            return
        self._reset_up(ErrorCodes.CANCEL)
        self._detach()
        headers, body = h2util.local_reply(status, message, grpc=self.grpc, grpc_code=grpc_code)
        if self.grpc:  # what the client reads is the grpc-status it carries
            code = grpc_code if grpc_code is not None else h2util.http_to_grpc(status)
            self.counted(500 if h2util.grpc_to_http(code) >= 500 else 200)
        else:
            self.counted(status)
        self.head_sent = True
        self.resp_buf.clear()
        self.resp_trailers = None
        self.resp_end = True
        if not self.down.send_headers(self.sid, headers, end=not body):
            self.finish()
        elif body:
            self.resp_buf.append(body)
            self.pump_resp()
        else:
            self.resp_sent_end = True
            self._check_done()

    def counted(self, status: int) -> None:
        """One call on the client's edge, once per stream."""
        if self.failed is None:
            self.failed = status >= 500
            self.down.edge.response(status, (time.monotonic() - self.opened) * 1000)

    # -- the end -----------------------------------------------------------

    def _check_done(self) -> None:
        if self.done or not self.resp_sent_end:
            return
        if not self.req_sent_end:
            # The response is complete while the request is not: as Envoy,
            # stop the replica's stream, and tell the client to stop sending.
            self._reset_up(ErrorCodes.CANCEL)
            if not self.req_end:
                self.down.reset_stream(self.sid, ErrorCodes.NO_ERROR)
        self.finish()

    def _reset_up(self, code: int) -> None:
        up = self.up
        if up is not None and self.up_id and up.state in (h2util.OPEN, h2util.DRAINING):
            with contextlib.suppress(ProtocolError):  # already closed
                up.conn.reset_stream(self.up_id, code)
            up.flush()

    def finish(self) -> None:
        """Forget the stream; hand back the window of whatever it still holds."""
        if self.done:
            return
        self.done = True
        self.deadline = 0.0
        down = self.down
        down.streams.pop(self.sid, None)
        for chunk in self.req_buf:
            down.conn_ack(len(chunk), self.sid)
        self.req_buf.clear()
        up = self.up
        if up is not None and self.up_id:
            for chunk in self.resp_buf:
                up.conn_ack(len(chunk), self.up_id)
            up.flush()
        self.resp_buf.clear()
        self._detach()
        down.flush()


def _take(buf: deque[bytes], room: int) -> bytes:
    chunk = buf[0]
    if len(chunk) <= room:
        return buf.popleft()
    buf[0] = chunk[room:]
    return chunk[:room]


class ShapedStream(Stream):
    """A stream a bandwidth or reset fault hit: its DATA goes through shapers.

    A hit stream is switched to this class (`shape`), so the plain `Stream`'s
    per-frame path has no fault test at all. Bytes held in a shaper are not
    acknowledged yet, so the peers' windows still bound them.
    """

    resp_shaper: faultio.Shaper
    req_shaper: faultio.Shaper | None

    @staticmethod
    def shape(st: Stream, plan: faultio.Plan) -> ShapedStream:
        st.__class__ = ShapedStream
        assert isinstance(st, ShapedStream)
        st.resp_shaper = faultio.Shaper(
            st._release_resp, rate=plan.rate, limit=plan.reset, on_limit=st._limit_reached
        )
        st.req_shaper = faultio.Shaper(st._release_req, rate=plan.rate) if plan.rate else None
        return st

    def _release_resp(self, part: bytes) -> None:
        if not self.done:
            self.resp_buf.append(part)
            self.pump_resp()

    def _release_req(self, part: bytes) -> None:
        Stream.on_req_data(self, part, len(part))

    def _limit_reached(self) -> None:
        """A reset fault: the client's stream is reset (RST_STREAM), not its connection."""
        if self.done:
            return
        self._reset_up(ErrorCodes.CANCEL)
        self.down.reset_stream(self.sid, ErrorCodes.INTERNAL_ERROR)
        self.finish()

    def on_resp_data(self, data: bytes, flow_len: int) -> None:
        up = self.up
        if up is not None and flow_len > len(data):
            up.conn_ack(flow_len - len(data), self.up_id)
        self.resp_shaper.write(data)

    def on_resp_end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.resp_shaper.then(lambda: Stream.on_resp_end(self, trailers))

    def on_req_data(self, data: bytes, flow_len: int) -> None:
        if self.req_shaper is None:
            Stream.on_req_data(self, data, flow_len)
            return
        if flow_len > len(data):
            self.down.conn_ack(flow_len - len(data), self.sid)
        self.req_shaper.write(data)

    def on_req_end(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        if self.req_shaper is None or self.req_shaper.empty:
            Stream.on_req_end(self, trailers)
        else:
            self.req_shaper.then(lambda: Stream.on_req_end(self, trailers))

    def finish(self) -> None:
        if self.done:
            return
        # What the shapers still hold goes back to the senders' windows.
        held_resp = self.resp_shaper.size
        self.resp_shaper.cancel()
        up = self.up
        if held_resp and up is not None and self.up_id:
            up.conn_ack(held_resp, self.up_id)
        if self.req_shaper is not None:
            if self.req_shaper.size:
                self.down.conn_ack(self.req_shaper.size, self.sid)
            self.req_shaper.cancel()
        super().finish()
