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
import fcntl
import socket
import struct
import termios
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

from meshlocal.faults import Active, FaultTable, Kind
from meshlocal.registry import ReplicaRegistry

if TYPE_CHECKING:
    from meshlocal.proxy.balancer import Balancer

SC_LABEL = b"service-connect"  # faults sit on Service Connect endpoints, not the public one
ABORT_TEXT = "fault filter abort"  # Envoy's fault filter body
# Envoy's local reply when its connect attempts fail.
CONNECT_FAILURE = (
    "upstream connect error or disconnect/reset before headers. reset reason: connection failure"
)
_LINGER_RESET = struct.pack("ii", 1, 0)


def reset(transport: asyncio.Transport) -> None:
    """Close with a TCP RST (SO_LINGER 0): a connection reset, as the client sees it."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


def unsent(transport: asyncio.BaseTransport) -> int:
    """Bytes in the socket's send queue the peer has not acknowledged (Linux's
    SIOCOUTQ); 0 where that can't be asked."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError):
        return 0
    return int(struct.unpack("i", raw)[0])


def reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b"Error"


@dataclass(slots=True)
class Plan:
    """What the faults that hit one connection, request or stream do to it."""

    partition: list[Active] = field(default_factory=list)
    refuse: list[Active] = field(default_factory=list)
    abort: Active | None = None
    delays: list[Active] = field(default_factory=list)
    rate: int = 0  # bytes/s each way; 0: unpaced
    rate_by: Active | None = None
    reset: int | None = None  # bytes to the client before a reset; None: no reset
    reset_by: Active | None = None

    def delay(self) -> float:
        return sum(a.delay_s() for a in self.delays)

    @property
    def shapes(self) -> bool:
        return bool(self.rate) or bool(self.reset)


class Draws:
    """One call's draws, over its attempts: a fault not scoped to a replica is drawn
    once per call (a retry on another replica keeps its outcome), a `--replica`
    one for the attempt on that replica; each fault's hit counts once, when applied."""

    __slots__ = ("counted", "drawn", "replay")

    def __init__(self) -> None:
        self.drawn: dict[int, bool] = {}
        self.counted: set[int] = set()
        self.replay = False  # HTTP/1: the request is sent again (a stale pooled connection)

    def count(self, active: Active | None) -> None:
        if active is not None and id(active) not in self.counted:
            self.counted.add(id(active))
            active.count()


def decide(
    faults: FaultTable,
    registry: ReplicaRegistry,
    service: str,
    client_ip: str,
    replica: int,
    draws: Draws,
) -> Plan | None:
    """The plan for a call from `client_ip` to replica `replica` (1-based) of `service`."""
    found = faults.sc.get(service)
    if not found:
        return None
    client = None
    if any(a.fault.source for a in found):
        member = registry.by_address(client_ip)
        client = member.service if member is not None else None
    hits = []
    drawn = draws.drawn
    for a in found:
        f = a.fault
        if f.source and f.source != client:
            continue
        if id(a) in draws.counted and acts_once(f.kind):
            continue  # a retry: a delay, abort or shaping already acted on this call
        if f.replica:
            if f.replica != replica:
                continue
            hit = a.draw()  # a retry never goes back to a replica already tried
        else:
            got = drawn.get(id(a))
            hit = drawn[id(a)] = a.draw() if got is None else got
        if hit:
            hits.append(a)
    return plan(hits) if hits else None


def acts_once(kind: Kind) -> bool:
    """Acts once per call (a connect fault acts on every attempt it hits)."""
    return kind is not Kind.REFUSE and kind is not Kind.PARTITION


def plan(hits: Iterable[Active]) -> Plan:
    out = Plan()
    for a in hits:
        f = a.fault
        k = f.kind
        if k is Kind.REFUSE:
            out.refuse.append(a)
        elif k is Kind.PARTITION:
            out.partition.append(a)
        elif k is Kind.ABORT:
            out.abort = out.abort or a
        elif k is Kind.LATENCY:
            out.delays.append(a)
        elif k is Kind.BANDWIDTH:
            if not out.rate or f.rate < out.rate:
                out.rate, out.rate_by = f.rate, a
        elif k is Kind.RESET and (out.reset is None or f.after_bytes < out.reset):
            out.reset, out.reset_by = f.after_bytes, a
    return out


def dispatch(
    p: Plan,
    draws: Draws,
    *,
    timeout: float,
    hold: Callable[[float, Callable[[], None]], None],
    refused: Callable[[], None],
    reset: Callable[[], None],
    go: Callable[[Plan], None],
    abort: Callable[[Active], None] | None = None,
    delay_first: bool = True,
) -> None:
    """Act out a plan, in the one order every path shares: partition (held for the
    connect timeout, then a connect failure), refuse, then (HTTP, HTTP/2: before
    routing, as Istio's delay) the delay, then abort, reset at once, or `go` with
    what shapes the exchange (TCP: the delay per chunk too; `go` counts those with
    `shaping` once applied). Only the faults acted out count a hit."""
    if p.partition:
        for a in p.partition:
            draws.count(a)
        hold(timeout, refused)
    elif p.refuse:
        for a in p.refuse:
            draws.count(a)
        refused()
    elif delay_first and p.delays:
        for a in p.delays:
            draws.count(a)
        hold(p.delay(), lambda: _act(p, draws, reset, go, abort))
    else:
        _act(p, draws, reset, go, abort)


def _act(
    p: Plan,
    draws: Draws,
    reset: Callable[[], None],
    go: Callable[[Plan], None],
    abort: Callable[[Active], None] | None,
) -> None:
    if abort is not None and p.abort is not None:
        draws.count(p.abort)
        abort(p.abort)
    elif p.reset == 0:
        draws.count(p.reset_by)
        reset()
    else:
        go(p)


def shaping(p: Plan, draws: Draws) -> None:
    """Count the faults that shape the exchange, once it is shaped."""
    for a in p.delays:
        draws.count(a)
    draws.count(p.rate_by)
    draws.count(p.reset_by)


def later(seconds: float, then: Callable[[], None], alive: Callable[[], bool]) -> None:
    """`then()` in `seconds`, if the call is still `alive()` by then (a fault's hold)."""

    def fire() -> None:
        if alive():
            then()

    asyncio.get_running_loop().call_later(seconds, fire)


def others(balancer: Balancer, service: str, client: str, tried: Iterable[str]) -> bool:
    """Whether a retry has a replica left (else a fault's refusal is the answer)."""
    skip = set(tried)
    return any(r.container_id not in skip for r in balancer.available(service, client))


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
        closed: Callable[[], bool] | None = None,
        drained: Callable[[], bool] | None = None,
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
        self.closed = closed  # the sink is gone: drop the rest instead of waiting
        self.drained = drained  # all the sink took has reached the peer
        self.poll = 0.005
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
        if self.closed is not None and self.closed():
            self.cancel()
            return
        # The bytes before the reset must have reached the peer, or the reset
        # (SO_LINGER 0) would drop them: poll, as no event tells.
        if self.drained is not None and not self.drained():
            self.queue.appendleft((self.loop.time(), self._limit))
            self.timer = self.loop.call_later(self.poll, self._pump)
            self.poll = min(0.1, self.poll * 2)  # a reader that stalls is polled less
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
            if self.closed is not None and self.closed():
                self.cancel()  # nobody to write to: no timer stays armed for it
                return
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
        self.shaper = Shaper(
            real.write, busy=self._busy, closed=real.is_closing, drained=self._drained, **shaper
        )
        self.closing = False

    def _busy(self) -> bool:
        return self.real.get_write_buffer_size() > self.shaper.high

    def _drained(self) -> bool:
        return not self.real.get_write_buffer_size() and not unsent(self.real)

    def cancel(self) -> None:
        """The peer is gone: drop what is queued (no timer left armed)."""
        self.shaper.cancel()

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
