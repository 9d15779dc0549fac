"""Faults on HTTP/2 and gRPC Service Connect endpoints: per stream.

Called by `h2stream.Stream.select` once a replica is picked, only when the
fault table has a Service Connect fault. A delay holds the stream before it
is forwarded (the request timeout starts after it); an abort answers at
once (gRPC: trailers-only with the fault's grpc-status); refuse and
partition act as a connect failure and a connect timeout of that replica
(retried elsewhere, never seen by outlier detection, UNAVAILABLE for gRPC
in the end); reset sends RST_STREAM, the connection stays; bandwidth paces
the stream's DATA both ways.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes

from meshlocal.proxy import faultio, h2util
from meshlocal.registry import Replica

if TYPE_CHECKING:
    from meshlocal.proxy.h2stream import Stream


def intercept(st: Stream, replica: Replica) -> bool:
    """True when the faults took the stream over (the caller must not forward it)."""
    proxy, down = st.proxy, st.down
    if not st.tried or st.draws is None:
        st.draws = faultio.Draws()
    draws = st.draws
    plan = faultio.decide(
        proxy.faults, proxy.balancer.registry, down.service, down.client, replica.index, draws
    )
    if plan is None:
        return False

    def then_armed(then: Callable[[], None]) -> Callable[[], None]:
        # The stream has no replica meanwhile, so the sweeper's request timeout
        # passes it by; it is armed afresh once the stream goes on.
        def fire() -> None:
            then()
            if not st.done and st.req_end:
                st.arm()

        return fire

    faultio.dispatch(
        plan,
        draws,
        timeout=proxy.settings.connect_timeout_s,
        hold=lambda s, then: faultio.later(s, then_armed(then), lambda: not st.done),
        refused=lambda: st.fault_refused(replica),
        reset=lambda: _reset(st),
        abort=lambda a: _abort(st, a.fault.http_status, a.fault.grpc_status),
        go=lambda p: _go(st, replica, p),
    )
    return True


def _reset(st: Stream) -> None:
    st.counted(500)  # a failed call on the client's edge
    st.down.reset_stream(st.sid, ErrorCodes.INTERNAL_ERROR)
    st.finish()


def _go(st: Stream, replica: Replica, plan: faultio.Plan) -> None:
    from meshlocal.proxy.h2stream import ShapedStream

    assert st.draws is not None
    faultio.shaping(plan, st.draws)
    if plan.shapes:
        ShapedStream.shape(st, plan).go(replica)
    else:
        st.go(replica)


def _abort(st: Stream, http_status: int, grpc_status: int) -> None:
    # Not a replica's response: the service's Target metrics don't count it (the
    # fault's own counter does), as Envoy's fault filter answers before the router.
    if st.grpc and grpc_status:
        # Istio's grpc abort: a trailers-only response, HTTP 200.
        st.local_reply(200, faultio.ABORT_TEXT, grpc_code=grpc_status)
        return
    status = http_status or (h2util.grpc_to_http(grpc_status) if grpc_status else 503)
    st.local_reply(status, faultio.ABORT_TEXT)
