"""One shared keep-alive connection pool to replicas, on asyncio protocols.

aiohttp's ClientSession spends most of a proxied request's CPU time on
things a proxy throws away (URL objects, header multidicts, decompression,
cookie jars), and even asyncio streams cost a future and a task wake-up per
read; so the hot path is plain protocol callbacks. Pooling is per replica
(container id), LIFO so the warmest connection is reused and idle ones age
out at the bottom.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol, cast

from meshlocal.proxy.metrics import Metrics
from meshlocal.proxy.settings import ProxySettings
from meshlocal.registry import Replica


class UpstreamOwner(Protocol):
    """The downstream connection an upstream connection currently serves."""

    def upstream_data(self, data: bytes) -> None: ...
    def upstream_lost(self) -> None: ...
    def upstream_paused(self, paused: bool) -> None: ...


class UpstreamConn(asyncio.Protocol):
    def __init__(self, pool: UpstreamPool, replica: Replica) -> None:
        self.pool = pool
        self.replica = replica
        self.transport: asyncio.Transport | None = None
        self.owner: UpstreamOwner | None = None
        self.closed = False
        self.reused = False
        self.read_paused = False
        self.idle_since = 0.0
        self._counted = False

    # -- asyncio.Protocol ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        m = self.pool.metrics.service(self.replica.service)
        m.new_connections += 1
        m.active_connections += 1
        self._counted = True

    def data_received(self, data: bytes) -> None:
        owner = self.owner
        if owner is not None:
            owner.upstream_data(data)
        elif self.transport is not None:
            self.transport.abort()  # bytes on an idle connection: never reuse it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._uncount()
        owner = self.owner
        if owner is not None:
            self.owner = None
            owner.upstream_lost()

    def pause_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_paused(True)

    def resume_writing(self) -> None:
        if self.owner is not None:
            self.owner.upstream_paused(False)

    # -- helpers ---------------------------------------------------------

    @property
    def usable(self) -> bool:
        return not self.closed and self.transport is not None and not self.transport.is_closing()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    def pause_reading(self, paused: bool) -> None:
        if self.transport is None or paused == self.read_paused or self.closed:
            return
        self.read_paused = paused
        if paused:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self.pool.metrics.service(self.replica.service).active_connections -= 1

    def abort(self) -> None:
        self.owner = None
        if self.transport is not None and not self.closed:
            self.transport.abort()
        self.closed = True
        self._uncount()


class UpstreamPool:
    def __init__(self, settings: ProxySettings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self._idle: dict[str, list[UpstreamConn]] = {}
        self.closed = False

    def take(self, replica: Replica) -> UpstreamConn | None:
        """A pooled keep-alive connection to `replica`, if one is still open."""
        idle = self._idle.get(replica.container_id)
        while idle:
            conn = idle.pop()
            if conn.usable:
                conn.reused = True
                return conn
            conn.abort()
        return None

    async def connect(self, replica: Replica) -> UpstreamConn:
        """A new connection; raises OSError or TimeoutError on connect failure."""
        assert replica.port is not None
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self.settings.connect_timeout_s):
            _, conn = await loop.create_connection(
                lambda: UpstreamConn(self, replica), replica.address, replica.port
            )
        return conn

    def release(self, conn: UpstreamConn) -> None:
        """Back to the pool after a complete keep-alive exchange."""
        conn.owner = None
        if conn.read_paused:
            conn.pause_reading(False)
        if self.closed or not conn.usable:
            conn.abort()
            return
        idle = self._idle.setdefault(conn.replica.container_id, [])
        if len(idle) >= self.settings.max_idle_per_replica:
            conn.abort()
            return
        conn.idle_since = time.monotonic()
        idle.append(conn)

    def discard(self, conn: UpstreamConn) -> None:
        conn.abort()

    def drop_replica(self, container_id: str) -> None:
        for conn in self._idle.pop(container_id, []):
            conn.abort()

    def sweep(self, now: float | None = None) -> None:
        """Close connections idle for longer than the idle timeout."""
        now = time.monotonic() if now is None else now
        limit = self.settings.idle_timeout_s
        for cid, idle in list(self._idle.items()):
            keep = []
            for conn in idle:
                if now - conn.idle_since > limit or not conn.usable:
                    conn.abort()
                else:
                    keep.append(conn)
            if keep:
                self._idle[cid] = keep
            else:
                del self._idle[cid]

    def idle_count(self, container_id: str | None = None) -> int:
        if container_id is not None:
            return len(self._idle.get(container_id, ()))
        return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        self.closed = True
        for cid in list(self._idle):
            self.drop_replica(cid)
