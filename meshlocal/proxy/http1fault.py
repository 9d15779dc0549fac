"""Faults on HTTP/1 Service Connect endpoints: per request, as Istio's fault filter.

Called by `forward.Downstream._select` once a replica is picked, only when
the fault table has a Service Connect fault. A delay holds the request
before it is forwarded (it does not count toward the request timeout); an
abort answers at once; refuse and partition act as a connect failure and a
connect timeout of the picked replica (retried elsewhere, never seen by
outlier detection); bandwidth and reset shape the exchange, which is then
the connection's last. An abort keeps the connection (its request's body
is skipped), unless a large body or `100-continue` is still to come.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from meshlocal.proxy import faultio
from meshlocal.proxy.http1 import HttpError
from meshlocal.proxy.respond import CLOSED, CONNECTING, DRAIN, IDLE
from meshlocal.registry import Replica

if TYPE_CHECKING:
    from meshlocal.proxy.forward import Downstream

# An aborted request's body still to come, past which the connection is closed
# rather than read through (Envoy closes when it answers before the body).
_DRAIN_MAX = 1 << 20


def intercept(down: Downstream, replica: Replica) -> bool:
    """True when the faults took the request over (the caller must not dial)."""
    fwd, route = down.fwd, down.route
    assert route is not None
    draws = down.draws
    if draws is None or not (down.tried or draws.replay):
        draws = down.draws = faultio.Draws()  # a new request: its faults drawn afresh
    draws.replay = False
    plan = faultio.decide(
        fwd.faults, fwd.balancer.registry, route.service, down.client, replica.index, draws
    )
    if plan is None:
        return False

    def hold(seconds: float, then: Callable[[], None]) -> None:
        # The request waits, its body buffered (reading paused past a chunk).
        down.state = CONNECTING
        down._update_reading()
        faultio.later(seconds, then, lambda: down.state == CONNECTING)

    faultio.dispatch(
        plan,
        draws,
        timeout=down.settings.connect_timeout_s,
        hold=hold,
        refused=lambda: down.connect_failed(replica, fault=True),
        reset=lambda: _reset_client(down),
        abort=lambda a: abort(down, a.fault.http_status or 503),
        go=lambda p: _go(down, replica, p),
    )
    return True


def abort(down: Downstream, status: int) -> None:
    """An abort's answer, keep-alive as from Envoy's fault filter: the request's
    body is skipped as it comes (`drain`), then the next request goes on."""
    from meshlocal.proxy.respond import error_response

    req = down.req
    assert req is not None
    unread = down.req_left - len(down.buf) if down.req_scanner is None else 0
    if (
        not req.keep_alive
        or down.client_eof
        or (not down.req_done and (req.expect_continue or unread > _DRAIN_MAX))
    ):
        down._fail(status, faultio.ABORT_TEXT)
        return
    down.answered(status)
    if down.transport is not None:
        down.transport.write(
            error_response(
                status,
                faultio.ABORT_TEXT,
                route=down.label,
                close=False,
                head=req.method == b"HEAD",
            )
        )
    down.state = DRAIN
    drain(down)


def drain(down: Downstream) -> None:
    """Skip the aborted request's body as it comes; then the next request."""
    if not down.req_done:
        buf = down.buf
        if down.req_scanner is None:
            take = min(down.req_left, len(buf))
            down.req_left -= take
            down.req_done = down.req_left == 0
        else:
            try:
                take = down.req_scanner.feed(buf)
            except HttpError:
                down._close()
                return
            down.req_done = down.req_scanner.done
        down.buf = buf[take:]
        if not down.req_done:
            down._update_reading()  # a hold may have paused it
            return
    down._reset()
    down.state = IDLE
    down._update_reading()
    if down.buf:
        down._next_request()


def _go(down: Downstream, replica: Replica, plan: faultio.Plan) -> None:
    assert down.draws is not None
    faultio.shaping(plan, down.draws)
    if not plan.shapes:
        down.dial(replica)
        return
    from meshlocal.proxy.forward import ShapedDownstream

    transport = down.transport
    assert transport is not None
    down.__class__ = ShapedDownstream
    down.transport = faultio.ShapedTransport(
        transport,
        throttle=lambda full: down.pause_writing() if full else down.resume_writing(),
        rate=plan.rate,
        limit=plan.reset,
        on_limit=lambda: _reset_client(down),
        high=down.settings.read_chunk,
    )
    # The shaped exchange is the connection's last, as if the client had
    # half-closed: the shaper goes with the connection, not onto the next request.
    down.client_eof = True
    if not plan.rate:
        down.dial(replica)
        return
    # The request side is paced on a connection of its own, never pooled after.
    down.state = CONNECTING
    down._update_reading()
    down.loop.create_task(_dial_paced(down, replica, plan.rate))


def _reset_client(down: Downstream) -> None:
    down.answered(503)  # a failed call on the client's edge, unless its head went out
    if down.transport is not None:
        faultio.reset(down.transport)
    down.abort()


async def _dial_paced(down: Downstream, replica: Replica, rate: int) -> None:
    fwd = down.fwd
    try:
        up = await fwd.pool.connect(replica)
    except (OSError, TimeoutError):
        if down.state != CLOSED:
            down.connect_failed(replica)
        return
    if down.state == CLOSED:
        up.abort()
        return
    assert up.transport is not None
    up.transport = faultio.ShapedTransport(
        up.transport, throttle=down.upstream_paused, rate=rate, high=down.settings.read_chunk
    )
    down._attach(replica, up)
    down.up_dirty = True  # never back to the pool: its shaper would go with it
