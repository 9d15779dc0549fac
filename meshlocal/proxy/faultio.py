"""What the three data paths share to act out injected faults (`meshlocal.faults`).

`plan` turns the faults that hit one connection, request or stream into
what to do; `Shaper` writes late (a delay per chunk, a rate, a reset after
N bytes) and `ShapedTransport` puts one in front of a real transport, so a
path that writes to `self.transport` needs no other change. Nothing here
runs unless `FaultTable.sc` is non-empty: the hot paths test that dict only.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from meshlocal.faults import Active, FaultTable, Kind
from meshlocal.registry import ReplicaRegistry

SC_LABEL = b"service-connect"  # faults sit on Service Connect endpoints, not the public one
ABORT_TEXT = "fault filter abort"  # Envoy's fault filter body
# Envoy's local reply when its connect attempts fail.
CONNECT_FAILURE = (
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
)
_CONNECT_KINDS = frozenset({Kind.REFUSE, Kind.PARTITION})
_LINGER_RESET = struct.pack("ii", 1, 0)


def reset(transport: asyncio.Transport) -> None:
    """Close with a TCP RST (SO_LINGER 0): a connection reset, as the client sees it."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


def reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Error"


@dataclass(slots=True)
class Plan:
    """What the faults that hit one connection, request or stream do to it."""

    refuse: bool = False
    partition: bool = False
    abort: Active | None = None
    delays: list[Active] = field(default_factory=list)
    rate: int = 0  # bytes/s each way; 0: unpaced
    reset: int | None = None  # bytes to the client before a reset; None: no reset

    def delay(self) -> float:
        return sum(a.delay_s() for a in self.delays)

    @property
    def shapes(self) -> bool:
        return bool(self.rate) or bool(self.reset)


def decide(
    faults: FaultTable,
    registry: ReplicaRegistry,
    service: str,
    client_ip: str,
    replica: int,
    *,
    retry: bool = False,
) -> Plan | None:
    """The plan for a call from `client_ip` to replica `replica` (1-based) of `service`.

    A retry (another replica after a connect failure) is asked only about
    connect faults: Istio's delay and abort act once per request, before routing.
    """
    member = registry.by_address(client_ip)
    candidates = faults.for_client(service, member.service if member is not None else None)
    if retry:
        candidates = tuple(a for a in candidates if a.fault.kind in _CONNECT_KINDS)
    if not candidates:
        return None
    hits = FaultTable.hit(candidates, replica)
    return plan(hits) if hits else None


def plan(hits: Iterable[Active]) -> Plan:
    out = Plan()
    for a in hits:
        f = a.fault
        k = f.kind
        if k is Kind.REFUSE:
            out.refuse = True
        elif k is Kind.PARTITION:
            out.partition = True
        elif k is Kind.ABORT:
            out.abort = out.abort or a
        elif k is Kind.LATENCY:
            out.delays.append(a)
        elif k is Kind.BANDWIDTH:
            out.rate = min(out.rate, f.rate) if out.rate else f.rate
        elif k is Kind.RESET:
            out.reset = f.after_bytes if out.reset is None else min(out.reset, f.after_bytes)
    return out


class Bucket:
    """Pacing to `rate` bytes/s, a quantum at a time: a token bucket one quantum deep,
    so a late timer is made up for but an idle spell saves no more than that."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self.quantum = max(1, min(16384, rate // 20))  # 50 ms worth: smooth enough
        self.slack = self.quantum / rate
        self.next = 0.0  # loop time the next byte may go

    def spend(self, n: int, now: float) -> None:
        self.next = max(self.next, now - self.slack) + n / self.rate


_Item = bytes | Callable[[], None]


class Shaper:
    """Bytes to `sink`, late: each chunk `delay()` later (order kept), paced to `rate`,
    and after `limit` bytes `on_limit()` instead of more. `then(fn)` runs fn once
    everything before it went. Over `high` bytes queued, `throttle(True)` asks the
    source to stop reading; `throttle(False)` once half of it went.
    """

    def __init__(
        self,
        sink: Callable[[bytes], None],
        throttle: Callable[[bool], None] | None = None,
        *,
        delay: Callable[[], float] | None = None,
        rate: int = 0,
        limit: int | None = None,
        on_limit: Callable[[], None] | None = None,
        high: int = 65536,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.sink = sink
        self.throttle = throttle
        self.delay = delay
        self.bucket = Bucket(rate) if rate else None
        self.left = limit
        self.on_limit = on_limit
        self.high = high
        self.busy = busy  # the sink can't take more now (a full transport buffer)
        self.queue: deque[tuple[float, _Item]] = deque()
        self.size = 0
        self.last = 0.0  # release time of the last item queued
        self.timer: asyncio.TimerHandle | None = None
        self.throttled = False
        self.ended = False  # the limit was reached or cancel(): nothing more goes

    def write(self, data: bytes) -> None:
        if self.ended or not data:
            return
        if self.left is not None:
            if len(data) >= self.left:
                data = data[: self.left]
                self.left = 0
                self._push(data)
                self._push(self._limit)
                self.ended = True
                return
            self.left -= len(data)
        self._push(data)

    def then(self, action: Callable[[], None]) -> None:
        if not self.ended:
            self._push(action)

    @property
    def empty(self) -> bool:
        return not self.queue

    def cancel(self) -> None:
        self.ended = True
        self.queue.clear()
        self.size = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _push(self, item: _Item) -> None:
        now = self.loop.time()
        at = now
        if self.delay is not None and isinstance(item, bytes) and item:
            at += self.delay()
        at = self.last = max(at, self.last)
        if isinstance(item, bytes):
            if not item:
                return
            self.size += len(item)
        self.queue.append((at, item))
        if self.size > self.high and self.throttle is not None:
            self.throttled = True
            self.throttle(True)  # every time: the sink's own signals may have resumed it
        if self.timer is None:
            self._pump()

    def _limit(self) -> None:
        # The bytes before the reset must have left, or the reset would drop them.
        if self.busy is not None and self.busy():
            self.queue.appendleft((self.loop.time(), self._limit))
            self.timer = self.loop.call_later(0.005, self._pump)
            return
        if self.on_limit is not None:
            # Not from inside the caller's write: it may go on with its own bookkeeping.
            self.loop.call_soon(self.on_limit)

    def _pump(self) -> None:
        self.timer = None
        now = self.loop.time()
        wake = 0.0
        while self.queue:
            at, item = self.queue[0]
            if at > now:
                wake = at
                break
            if not isinstance(item, bytes):
                self.queue.popleft()
                item()
                if self.timer is not None:
                    return  # the action re-armed (it waits for the sink)
                continue
            if self.busy is not None and self.busy():
                wake = now + 0.01
                break
            bucket = self.bucket
            if bucket is not None:
                if bucket.next > now:
                    wake = bucket.next
                    break
                part = item[: bucket.quantum]
                if len(part) < len(item):
                    self.queue[0] = (at, item[len(part) :])
                else:
                    self.queue.popleft()
                bucket.spend(len(part), now)
            else:
                self.queue.popleft()
                part = item
            self.size -= len(part)
            self.sink(part)
        if self.throttled and self.size <= self.high // 2 and self.throttle is not None:
            self.throttled = False
            self.throttle(False)
        if wake and self.queue:
            self.timer = self.loop.call_at(wake, self._pump)


class ShapedTransport(asyncio.Transport):
    """A transport that writes through a `Shaper`; closing waits for what is queued."""

    def __init__(self, real: asyncio.Transport, **shaper: Any) -> None:
        super().__init__()
        self.real = real
        self.shaper = Shaper(real.write, busy=self._busy, **shaper)
        self.closing = False

    def _busy(self) -> bool:
        return self.real.is_closing() or self.real.get_write_buffer_size() > self.shaper.high

    def write(self, data: bytes | bytearray | memoryview[Any]) -> None:
        if not self.closing:
            self.shaper.write(bytes(data))

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview[Any]]) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        self.shaper.then(self.real.write_eof)

    def can_write_eof(self) -> bool:
        return self.real.can_write_eof()

    def close(self) -> None:
        if not self.closing:
            self.closing = True
            if self.shaper.empty:
                self.real.close()
            else:
                self.shaper.then(self.real.close)

    def abort(self) -> None:
        self.closing = True
        self.shaper.cancel()
        self.real.abort()

    def is_closing(self) -> bool:
        return self.closing or self.real.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.real.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.real.pause_reading()

    def resume_reading(self) -> None:
        self.real.resume_reading()

    def is_reading(self) -> bool:
        return self.real.is_reading()

    def get_write_buffer_size(self) -> int:
        return self.shaper.size + self.real.get_write_buffer_size()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.real.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.real.get_protocol()
