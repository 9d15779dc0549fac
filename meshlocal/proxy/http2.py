"""The http2 and grpc modes of Service Connect: per-stream balancing over h2c.

What Envoy does when the port mapping's appProtocol is http2 or grpc:
every stream (request) picks the next replica in the client's strict round
robin, whatever connection it arrived on; replica connections are pooled
and multiplexed. Clients speak h2c with prior knowledge, as gRPC insecure
channels do.

Flow control is end to end: DATA from one side is acknowledged to it
(WINDOW_UPDATE) only once handed to the other side's h2 connection, which
only takes what the other side's window allows, and nothing is handed to
a transport whose write buffer is full. So the bytes held per stream are
bounded by our receive window and a slow peer stalls only its own sender.

Outlier detection counts what Envoy's router counts (router.cc,
onUpstreamHeaders): the response's :status, except that a grpc-status in
the response *headers* (a trailers-only response) is mapped to HTTP
(UNAVAILABLE -> 503, INTERNAL/UNKNOWN -> 500, ...); a grpc-status in
trailers is not seen by outlier detection. Connect failures, resets and
timeouts count as failures, as they do without split_external_local_origin_errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import cast

from h2 import events as ev
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.exceptions import NoAvailableStreamIDError, ProtocolError, TooManyStreamsError

from meshlocal.faults import FaultTable
from meshlocal.proxy import h2util
from meshlocal.proxy.balancer import Balancer
from meshlocal.proxy.h2stream import Stream
from meshlocal.proxy.metrics import UNCOUNTED, Metrics, ServiceMetrics
from meshlocal.proxy.settings import ProxySettings
from meshlocal.registry import Replica


class H2Proxy:
    """Creates the downstream protocols; owns the replica connection pool."""

    def __init__(
        self,
        balancer: Balancer,
        metrics: Metrics,
        settings: ProxySettings,
        faults: FaultTable | None = None,
    ) -> None:
        self.balancer = balancer
        self.metrics = metrics
        self.settings = settings
        self.faults = faults if faults is not None else FaultTable()
        self.connections: set[Downstream] = set()
        self.upstreams: dict[str, list[Upstream]] = {}  # container id -> connections
        # container id -> the replica's SETTINGS_MAX_CONCURRENT_STREAMS, once seen:
        # how many streams a new connection takes before its own SETTINGS arrive.
        self.limits: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def factory(
        self, service: str, *, grpc: bool, endpoint: str = ""
    ) -> Callable[[], asyncio.Protocol]:
        return lambda: Downstream(self, service, grpc, endpoint)

    def close_endpoint(self, endpoint: str) -> None:
        """An endpoint went away or changed: its clients must not reach the old service."""
        for conn in list(self.connections):
            if conn.endpoint == endpoint:
                conn.abort()

    def sweep(self, now: float) -> None:
        """Request timeouts and idle timeouts (no byte either way), one pass for all.

        A timeout of 0 is disabled, as in ECS.
        """
        idle = self.settings.idle_timeout_s or float("inf")
        for conn in list(self.connections):
            conn.sweep(now, idle)
        for ups in list(self.upstreams.values()):
            for up in list(ups):
                if not up.streams and not up.waiting and now - up.last_activity > idle:
                    up.close()

    def close_replica(self, container_id: str) -> None:
        self.limits.pop(container_id, None)
        for up in self.upstreams.pop(container_id, []):
            up.abort()

    def close_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for conn in list(self.connections):
            conn.abort()
        for cid in list(self.upstreams):
            self.close_replica(cid)

    def acquire(self, replica: Replica) -> Upstream:
        """A connection to `replica` with room for one more stream (maybe still connecting)."""
        conns = self.upstreams.setdefault(replica.container_id, [])
        for up in conns:
            if up.has_room():
                return up
        up = Upstream(self, replica)
        conns.append(up)
        task = asyncio.get_running_loop().create_task(up.connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return up

    def forget(self, up: Upstream) -> None:
        conns = self.upstreams.get(up.replica.container_id)
        if conns is not None and up in conns:
            conns.remove(up)
            if not conns:
                del self.upstreams[up.replica.container_id]


class _Conn(asyncio.Protocol):
    """What both sides share: an h2 connection on a transport, written when it has bytes."""

    conn: H2Connection
    transport: asyncio.Transport | None = None

    def __init__(self) -> None:
        self.write_paused = False
        self.last_activity = time.monotonic()

    def flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        data = self.conn.data_to_send()
        if data:
            self.last_activity = time.monotonic()
            self.wrote(len(data))
            transport.write(data)

    def wrote(self, n: int) -> None:
        pass

    def conn_ack(self, n: int, sid: int) -> None:
        if n and self.transport is not None:
            with contextlib.suppress(ProtocolError):  # the connection is closing
                self.conn.acknowledge_received_data(n, sid)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self.pumped()

    def pumped(self) -> None:
        raise NotImplementedError


class Downstream(_Conn):
    """One client connection; each of its streams goes to a replica of its own."""

    def __init__(self, proxy: H2Proxy, service: str, grpc: bool, endpoint: str = "") -> None:
        super().__init__()
        self.proxy = proxy
        self.service = service
        self.endpoint = endpoint
        self.grpc = grpc
        self.m: ServiceMetrics = proxy.metrics.service(service)
        self.client = ""  # the caller's IP: whose round robin and outlier view (one Envoy each)
        self.client_ip = b"unknown"
        self.edge = UNCOUNTED  # this client's, once connected
        self.streams: dict[int, Stream] = {}
        self.head = b""  # first bytes, until they prove to be the HTTP/2 preface
        self.ready = False  # the preface was seen; until then nothing is sent
        self.conn = h2util.new_connection(client_side=False)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = self.transport.get_extra_info("peername")
        if peer:
            self.client = str(peer[0])
            self.client_ip = self.client.encode()
        self.edge = self.proxy.metrics.edge(self.service, self.client)
        self.proxy.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if not self.ready:
            data = self.head + data
            n = min(len(data), len(h2util.PREFACE))
            if data[:n] != h2util.PREFACE[:n]:
                # HTTP/1 (or junk): one plain error, then close.
                transport.write(h2util.HTTP1_REFUSAL)
                transport.close()
                return
            if n < len(h2util.PREFACE):
                self.head = data
                return
            self.head = b""
            self.ready = True
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self.close()
            return
        for event in events:
            self._event(event)
        self.flush()

    def _event(self, event: ev.Event) -> None:
        if isinstance(event, ev.RequestReceived):
            self._request(event)
        elif isinstance(event, ev.DataReceived):
            st = self.streams.get(event.stream_id)
            if st is None:
                self.conn_ack(event.flow_controlled_length, event.stream_id)
            else:
                st.on_req_data(event.data, event.flow_controlled_length)
        elif isinstance(event, ev.TrailersReceived):
            if (st := self.streams.get(event.stream_id)) is not None:
                st.on_req_end(h2util.trailers(event.headers))
        elif isinstance(event, ev.StreamEnded):
            if (st := self.streams.get(event.stream_id)) is not None:
                st.on_req_end()
        elif isinstance(event, ev.StreamReset):
            if (st := self.streams.get(event.stream_id)) is not None:
                st.client_reset()
        elif isinstance(event, ev.WindowUpdated):
            if event.stream_id:
                if (st := self.streams.get(event.stream_id)) is not None:
                    st.pump_resp()
            else:
                self.pumped()
        elif isinstance(event, ev.RemoteSettingsChanged):
            self.pumped()
        elif isinstance(event, ev.ConnectionTerminated):
            self.close()  # h2 sends nothing after a GOAWAY

    def _request(self, event: ev.RequestReceived) -> None:
        headers = event.headers
        grpc = self.grpc or h2util.is_grpc(headers)
        st = Stream(self, event.stream_id, h2util.request_headers(headers, self.client_ip), grpc)
        self.streams[event.stream_id] = st
        if event.stream_ended is not None:
            st.req_end = True  # lets the request head carry END_STREAM
            st.arm()
        st.select()

    def pumped(self) -> None:
        for st in list(self.streams.values()):
            st.pump_resp()

    def send_headers(
        self, sid: int, headers: list[tuple[bytes, bytes]], *, end: bool = False
    ) -> bool:
        try:
            self.conn.send_headers(sid, headers, end_stream=end)
        except ProtocolError:
            return False  # the client reset the stream meanwhile
        self.flush()
        return True

    def reset_stream(self, sid: int, code: int) -> None:
        try:
            self.conn.reset_stream(sid, code)
        except ProtocolError:
            return
        self.flush()

    def sweep(self, now: float, idle: float) -> None:
        for st in list(self.streams.values()):
            if st.deadline and now >= st.deadline:
                st.on_timeout()
        if now - self.last_activity > idle:
            self.close()

    def close(self) -> None:
        """GOAWAY, then close once written; a client that never drains it is aborted."""
        if self.transport is not None and self.transport.is_closing():
            self.abort()  # closed before and still not flushed: a stuck client
            return
        if self.ready and self.transport is not None:
            with contextlib.suppress(ProtocolError):
                self.conn.close_connection()
            self.flush()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        # Streams end now, not at connection_lost: none may be retried elsewhere.
        for st in list(self.streams.values()):
            st.client_reset()
        if self.transport is not None:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.connections.discard(self)
        self.transport = None
        for st in list(self.streams.values()):
            st.client_reset()


class Upstream(_Conn):
    """One h2c connection to a replica, multiplexing streams of any client."""

    def __init__(self, proxy: H2Proxy, replica: Replica) -> None:
        super().__init__()
        self.proxy = proxy
        self.replica = replica
        self.m = proxy.metrics.service(replica.service)
        self.state = h2util.CONNECTING
        self.streams: dict[int, Stream] = {}
        self.waiting: list[Stream] = []  # streams that came while connecting
        self.counted = False
        self.known = False  # the replica's SETTINGS arrived
        self.conn = h2util.new_connection(client_side=True)

    def has_room(self) -> bool:
        conn = self.conn
        if self.known:
            limit = conn.remote_settings.max_concurrent_streams
        else:
            limit = self.proxy.limits.get(self.replica.container_id, h2util.ASSUMED_STREAMS)
        if self.state == h2util.CONNECTING:
            return len(self.waiting) < limit
        return self.state == h2util.OPEN and conn.open_outbound_streams < limit

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.replica.address, self.replica.port or 0
        try:
            await asyncio.wait_for(
                loop.create_connection(lambda: self, host, port),
                self.proxy.settings.connect_timeout_s,
            )
        except (OSError, TimeoutError):
            self.state = h2util.CLOSED
            self.proxy.forget(self)
            waiting, self.waiting = self.waiting, []
            for st in waiting:
                st.up = None
                st.connect_failed()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.m.new_connections += 1
        self.m.active_connections += 1
        self.counted = True
        if self.state == h2util.CLOSED:  # dropped while connecting
            self.transport.abort()
            return
        self.state = h2util.OPEN
        self.flush()
        waiting, self.waiting = self.waiting, []
        for st in waiting:
            if not st.done:
                self.open_stream(st)

    def open_stream(self, st: Stream) -> None:
        conn = self.conn
        ended = st.req_end and not st.req_buf and st.req_trailers is None
        try:
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, st.req_headers, end_stream=ended)
        except (TooManyStreamsError, NoAvailableStreamIDError) as exc:
            # Fewer streams than assumed, or ids used up: another connection.
            if isinstance(exc, NoAvailableStreamIDError):
                self.state = h2util.DRAINING
                self.stream_done()
            st.requeue()
            return
        self.streams[sid] = st
        self.last_activity = time.monotonic()
        st.attached(self, sid, ended)
        self.flush()

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        self.m.processed_bytes += len(data)
        try:
            events = self.conn.receive_data(data)
        except ProtocolError:
            self.flush()
            self.abort()
            return
        for event in events:
            self._event(event)
        self.flush()

    def wrote(self, n: int) -> None:
        self.m.processed_bytes += n

    def _event(self, event: ev.Event) -> None:
        if isinstance(event, ev.ResponseReceived | ev.InformationalResponseReceived):
            if (st := self.streams.get(event.stream_id)) is not None:
                ended = isinstance(event, ev.ResponseReceived) and event.stream_ended is not None
                st.on_response(event.headers, ended)
        elif isinstance(event, ev.DataReceived):
            st = self.streams.get(event.stream_id)
            if st is None or st.done:
                self.conn_ack(event.flow_controlled_length, event.stream_id)
            else:
                st.on_resp_data(event.data, event.flow_controlled_length)
        elif isinstance(event, ev.TrailersReceived):
            if (st := self.streams.get(event.stream_id)) is not None:
                st.on_resp_end(h2util.trailers(event.headers))
        elif isinstance(event, ev.StreamEnded):
            if (st := self.streams.get(event.stream_id)) is not None:
                st.on_resp_end()
        elif isinstance(event, ev.StreamReset):
            if (st := self.streams.pop(event.stream_id, None)) is not None:
                st.up_reset(event.error_code)
                self.stream_done()
        elif isinstance(event, ev.WindowUpdated):
            if event.stream_id:
                if (st := self.streams.get(event.stream_id)) is not None:
                    st.pump_req()
            else:
                self.pumped()
        elif isinstance(event, ev.RemoteSettingsChanged):
            self.known = True
            limit = self.conn.remote_settings.max_concurrent_streams
            self.proxy.limits[self.replica.container_id] = limit
            self.pumped()
        elif isinstance(event, ev.ConnectionTerminated):
            self._goaway(event.last_stream_id or 0, event.error_code == ErrorCodes.NO_ERROR)

    def _goaway(self, last_id: int, graceful: bool) -> None:
        """Streams above `last_id` were never processed: they go elsewhere."""
        self.state = h2util.DRAINING
        for sid in [s for s in self.streams if s > last_id]:
            st = self.streams.pop(sid)
            st.up_id = 0
            st.refused()
        if not graceful:
            self.abort()
            return
        self.stream_done()  # the others finish first (see h2util._ReplicaConnection)

    def pumped(self) -> None:
        for st in list(self.streams.values()):
            st.pump_req()

    def stream_done(self) -> None:
        self.last_activity = time.monotonic()
        if self.state == h2util.DRAINING and not self.streams:
            self.close()

    def close(self) -> None:
        self.proxy.forget(self)
        if self.transport is not None:
            self.transport.close()
        else:
            self.state = h2util.CLOSED

    def abort(self) -> None:
        self.proxy.forget(self)
        if self.transport is not None:
            self.transport.abort()
            return
        # Still connecting: nothing was sent, so its streams can go elsewhere.
        self.state = h2util.CLOSED
        waiting, self.waiting = self.waiting, []
        for st in waiting:
            st.up = None
            st.refused()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state = h2util.CLOSED
        self.transport = None
        self.proxy.forget(self)
        if self.counted:
            self.counted = False
            self.m.active_connections -= 1
        streams, self.streams = self.streams, {}
        for st in streams.values():
            st.up_lost("closed the connection")
