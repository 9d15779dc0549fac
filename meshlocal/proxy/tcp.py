"""TCP mode: what Service Connect does for a port mapping without AppProtocol.

Copilot sets no AppProtocol, so ECS's Envoy runs its TCP proxy: it picks a
replica once per client connection (round robin, per client task) and then
passes bytes both ways untouched, whatever the protocol (Redis, Postgres,
gRPC over h2c). No request timeout, no HTTP metrics: only connection counts
and bytes. Half-close is honoured in both directions; a connection with no
byte either way for `tcp_idle_timeout_s` (ECS default for TCP: 1 hour) is
closed.

Connect failures: Envoy's tcp_proxy makes `max_connect_attempts` attempts,
"If the parameter is not specified, 1 connection attempt will be made"
(envoyproxy/envoy api/envoy/extensions/filters/network/tcp_proxy/v3/tcp_proxy.proto).
Nothing shows ECS setting it: the retries ECS documents are HTTP route
retries ("automatic retries for 503 errors", the ECS Service Connect launch
post; "SC will retry twice on connection failure or 503 responses",
github.com/aws/containers-roadmap/issues/1963), and App Mesh, which runs the
same Envoy agent (aws/amazon-ecs-service-connect-agent README), sets its
default retry policy "for all HTTP, HTTP/2, and gRPC requests" only
(docs.aws.amazon.com/app-mesh/latest/userguide/envoy-defaults.html). So one
attempt by default (`tcp_connect_attempts`); a failed one resets the client
and feeds outlier detection.

Plain protocol callbacks, no task per byte: one short task per connection
only while it connects.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from functools import partial
from typing import cast

from meshlocal.faults import FaultTable
from meshlocal.proxy import faultio
from meshlocal.proxy.balancer import Balancer
from meshlocal.proxy.metrics import EdgeMetrics, Metrics, ServiceMetrics
from meshlocal.proxy.settings import ProxySettings
from meshlocal.registry import Replica

# Close with a TCP RST: what a client of Envoy sees when no upstream answers.
_reset = faultio.reset


class TcpProxy:
    """Creates one `TcpConnection` per accepted client connection; holds what they share."""

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
        self.connections: set[TcpConnection] = set()

    def factory(self, service: str, endpoint: str = "") -> Callable[[], asyncio.Protocol]:
        return lambda: TcpConnection(self, service, endpoint)

    def close_endpoint(self, endpoint: str) -> None:
        """An endpoint went away or changed: its clients must not reach the old service."""
        for conn in list(self.connections):
            if conn.endpoint == endpoint:
                conn.abort()

    def sweep(self, now: float) -> None:
        """Close connections with no byte either way for `tcp_idle_timeout_s` (0: never)."""
        limit = self.settings.tcp_idle_timeout_s
        if limit <= 0:
            return
        for conn in list(self.connections):
            if now - conn.last_activity > limit:
                conn.abort()

    def close_replica(self, container_id: str) -> None:
        """Abort every connection pinned to (or connecting to) that replica."""
        for conn in list(self.connections):
            if conn.replica is not None and conn.replica.container_id == container_id:
                conn.abort()

    def close_all(self) -> None:
        for conn in list(self.connections):
            conn.abort()


class _Upstream(asyncio.Protocol):
    """The replica side of one proxied connection."""

    def __init__(self, conn: TcpConnection, replica: Replica) -> None:
        self.conn = conn
        self.replica = replica
        self.transport: asyncio.Transport | None = None
        self.eof = False
        self.lost = False
        self.paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        # Counted from here to connection_lost, whatever the client does meanwhile.
        self.conn.proxy.balancer.begin(self.replica)
        self.conn.m.new_connections += 1
        self.conn.m.active_connections += 1
        self.conn.upstream_made(self)

    def data_received(self, data: bytes) -> None:
        self.conn.upstream_data(data)

    def eof_received(self) -> bool:
        self.eof = True
        self.conn.upstream_eof()
        return True  # half-close: the client may still be sending

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.conn.proxy.balancer.end(self.replica)
        self.conn.m.active_connections -= 1
        self.conn.upstream_lost()

    def pause_writing(self) -> None:
        self.conn.upstream_full(True)

    def resume_writing(self) -> None:
        self.conn.upstream_full(False)

    def pause(self, paused: bool) -> None:
        # After EOF the transport has stopped reading: resuming would report EOF again.
        if self.transport is None or self.eof or self.lost or paused == self.paused:
            return
        self.paused = paused
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()


class _ShapedUpstream(_Upstream):
    """The replica side of a connection a latency, bandwidth or reset fault hit."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(self.conn.shape(self, cast(asyncio.Transport, transport)))


class TcpConnection(asyncio.Protocol):
    """One client connection and the replica connection it is pinned to."""

    # Set on the instance only when a latency, bandwidth or reset fault hit it.
    plan: faultio.Plan | None = None
    upstream: type[_Upstream] = _Upstream
    draws: faultio.Draws | None = None  # the faults drawn for this connection

    def __init__(self, proxy: TcpProxy, service: str, endpoint: str = "") -> None:
        self.proxy = proxy
        self.service = service
        self.endpoint = endpoint  # the listener's endpoint name, for close_endpoint
        self.m: ServiceMetrics = proxy.metrics.service(service)
        self.transport: asyncio.Transport | None = None
        self.client = ""  # balancer key: the client task's address
        self.replica: Replica | None = None
        self.up: _Upstream | None = None
        self.tried: list[str] = []
        self.task: asyncio.Task[None] | None = None
        self.pending: list[bytes] = []  # client bytes that arrived before the replica answered
        self.pending_size = 0
        self.last_activity = self.accepted = time.monotonic()
        self.edge: EdgeMetrics | None = None  # this client's view of the service
        self.first_byte = True  # the replica's first byte is still to come
        self.client_eof = False
        self.client_lost = False
        self.reading_paused = False
        self.pending_full = False
        self.up_full = False

    # -- client side -------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client = str(peer[0])
        self.edge = edge = self.proxy.metrics.edge(self.service, self.client)
        edge.calls += 1
        # The replica is picked on accept, so connections rotate in arrival order.
        replica = self.proxy.balancer.pick(self.service, (), self.client)
        if replica is None:
            edge.errors += 1
            self.client_lost = True
            _reset(self.transport)  # Envoy: no healthy upstream, the connection is reset
            return
        self.replica = replica
        self.proxy.connections.add(self)
        self.task = asyncio.get_running_loop().create_task(self._connect(replica))

    def data_received(self, data: bytes) -> None:
        self.last_activity = time.monotonic()
        up = self.up
        if up is not None and up.transport is not None:
            if not up.lost:
                self.m.processed_bytes += len(data)
                up.transport.write(data)
            return
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size >= self.proxy.settings.read_chunk:
            self.pending_full = True
            self._sync_reading()

    def eof_received(self) -> bool:
        self.client_eof = True
        up = self.up
        if up is not None and up.transport is not None and not up.lost:
            up.transport.write_eof()
            self._maybe_done()
        return True  # half-close: keep sending the reply

    def connection_lost(self, exc: Exception | None) -> None:
        self.client_lost = True
        if self.task is not None:
            self.task.cancel()
        up = self.up
        if up is not None and up.transport is not None and not up.lost:
            up.transport.close()  # as Envoy: flush what the client sent, then FIN
        self._forget()

    def pause_writing(self) -> None:
        if self.up is not None:
            self.up.pause(True)

    def resume_writing(self) -> None:
        if self.up is not None:
            self.up.pause(False)

    # -- connecting ----------------------------------------------------------

    async def _connect(self, replica: Replica) -> None:
        proxy = self.proxy
        loop = asyncio.get_running_loop()
        while True:
            assert replica.port is not None
            if proxy.faults.sc and await self._fault_fails(replica):
                if self.client_lost:
                    return
            else:
                try:
                    async with asyncio.timeout(proxy.settings.connect_timeout_s):
                        await loop.create_connection(
                            partial(self.upstream, self, replica), replica.address, replica.port
                        )
                    return
                except (OSError, TimeoutError):
                    if self.client_lost or self.up is not None:
                        return
                    proxy.balancer.record(replica, True, self.client)
            self.tried.append(replica.container_id)
            nxt = None
            if len(self.tried) < proxy.settings.tcp_connect_attempts:
                nxt = proxy.balancer.pick(self.service, self.tried, self.client)
            if nxt is None:
                self.task = None
                self.pending.clear()
                if self.edge is not None:
                    self.edge.errors += 1
                if self.transport is not None:
                    _reset(self.transport)
                return
            replica = self.replica = nxt

    async def _fault_fails(self, replica: Replica) -> bool:
        """Faults on this attempt: True when it fails (refuse, partition; never
        counted by outlier detection); shaping faults are kept for `upstream_made`."""
        proxy = self.proxy
        # Each attempt starts plain: the previous replica's shaping is not this one's.
        self.__dict__.pop("plan", None)
        self.__dict__.pop("upstream", None)
        if self.draws is None:
            self.draws = faultio.Draws()
        plan = faultio.decide(
            proxy.faults,
            proxy.balancer.registry,
            self.service,
            self.client,
            replica.index,
            self.draws,
        )
        if plan is None:
            return False
        held: list[float] = []
        failed = False

        def fail() -> None:
            nonlocal failed
            failed = True

        def reset() -> None:
            fail()
            self.abort_reset()

        def hold(seconds: float, then: Callable[[], None]) -> None:
            held.append(seconds)
            then()  # the verdict now; the wait below

        def go(p: faultio.Plan) -> None:
            if p.delays or p.shapes:
                self.plan = p
                self.upstream = _ShapedUpstream

        faultio.dispatch(
            plan,
            self.draws,
            timeout=proxy.settings.connect_timeout_s,
            hold=hold,
            refused=fail,
            reset=reset,
            go=go,
            delay_first=False,  # a TCP delay is per chunk, in the shaper
        )
        if held:
            # A partition: nothing reaches the replica; the client's bytes are
            # swallowed until the connect timeout, which then acts as a real one.
            self._swallow()
            await asyncio.sleep(held[0])
            self._swallow()
        return failed

    def _swallow(self) -> None:
        self.pending.clear()
        self.pending_size = 0
        if self.pending_full:
            self.pending_full = False
            self._sync_reading()

    def shape(self, up: _Upstream, transport: asyncio.Transport) -> asyncio.Transport:
        """Put the plan's shapers in front of both sides; the replica side's transport."""
        plan = self.plan
        assert plan is not None and self.transport is not None
        self.__class__ = _ShapedConnection
        if self.draws is not None:
            faultio.shaping(plan, self.draws)  # applied now the replica answered
        delay = plan.delay if plan.delays else None
        high = self.proxy.settings.read_chunk
        self.transport = faultio.ShapedTransport(
            self.transport,
            throttle=up.pause,
            delay=delay,
            rate=plan.rate,
            limit=plan.reset,
            on_limit=self.abort_reset,
            high=high,
        )
        if plan.rate:
            return faultio.ShapedTransport(
                transport, throttle=self.upstream_full, rate=plan.rate, high=high
            )
        return transport

    def abort_reset(self) -> None:
        """A reset fault: RST to the client, the replica side closed at once."""
        if self.edge is not None:
            self.edge.errors += 1
        if self.transport is not None and not self.client_lost:
            _reset(self.transport)
        self.abort()

    def upstream_made(self, up: _Upstream) -> None:
        assert up.transport is not None
        if self.client_lost or self.up is not None:
            up.transport.abort()
            return
        self.up = up
        self.replica = up.replica
        self.task = None
        self.proxy.balancer.record(up.replica, False, self.client)
        self.last_activity = time.monotonic()
        if self.pending:
            self.m.processed_bytes += self.pending_size
            up.transport.writelines(self.pending)
            self.pending = []
            self.pending_size = 0
        self.pending_full = False
        self._sync_reading()
        if self.client_eof:
            up.transport.write_eof()

    # -- replica side ----------------------------------------------------------

    def upstream_data(self, data: bytes) -> None:
        self.last_activity = now = time.monotonic()
        if self.first_byte:
            self.first_byte = False
            if self.edge is not None:
                self.edge.latency((now - self.accepted + self._held()) * 1000)
        transport = self.transport
        if transport is not None and not self.client_lost and not transport.is_closing():
            self.m.processed_bytes += len(data)
            transport.write(data)

    def upstream_eof(self) -> None:
        transport = self.transport
        if transport is not None and not self.client_lost and not transport.is_closing():
            transport.write_eof()
        self._maybe_done()

    def upstream_lost(self) -> None:
        transport = self.transport
        if transport is not None and not self.client_lost:
            transport.close()  # as Envoy: flush what the replica sent, then FIN
        self._forget()

    def upstream_full(self, full: bool) -> None:
        self.up_full = full
        self._sync_reading()

    # -- flow control and endings ------------------------------------------

    def _sync_reading(self) -> None:
        pause = self.pending_full or self.up_full
        transport = self.transport
        if transport is None or self.client_eof or self.client_lost or pause == self.reading_paused:
            return
        self.reading_paused = pause
        if pause:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def _maybe_done(self) -> None:
        """Both directions have ended: close both sides (pending writes are flushed)."""
        up = self.up
        if not (self.client_eof and up is not None and up.eof):
            return
        if up.transport is not None and not up.lost:
            up.transport.close()
        if self.transport is not None and not self.client_lost:
            self.transport.close()

    def _held(self) -> float:
        return 0.0  # no fault delays what the client gets

    def _forget(self) -> None:
        # Tracked until both sides are gone, so a stuck flush is still swept. A
        # connect still under way was cancelled: it closes its own socket.
        up = self.up
        if self.client_lost and (up is None or up.lost):
            self.proxy.connections.discard(self)

    def abort(self) -> None:
        """Close both sides now, unflushed (idle timeout, replica gone, shutdown)."""
        if self.task is not None:
            self.task.cancel()
            self.task = None
        self.pending.clear()
        up = self.up
        if up is not None and up.transport is not None and not up.lost:
            up.transport.abort()
        if self.transport is not None and not self.client_lost:
            self.transport.abort()
        self.client_lost = True
        self._forget()


class _ShapedConnection(TcpConnection):
    """A connection a latency, bandwidth or reset fault shapes (switched to in
    `shape`, so the plain class tests nothing): its shaper goes with the client."""

    def _held(self) -> float:
        # What the client waits on top: the delay faults' latency (not their jitter,
        # whose seeded draws are the shaper's).
        plan = self.plan
        return sum(a.fault.latency_ms for a in plan.delays) / 1000 if plan else 0.0

    def connection_lost(self, exc: Exception | None) -> None:
        if isinstance(self.transport, faultio.ShapedTransport):
            self.transport.cancel()  # nobody to write to: no timer left armed
        super().connection_lost(exc)
