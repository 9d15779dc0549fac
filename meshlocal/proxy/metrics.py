"""Per-service counters under Service Connect's CloudWatch metric names.

Pure: the proxy bumps plain integer attributes on the hot path; reading them
(a JSON-able snapshot, a rich table here; `/metrics` in promexport.py) happens
on demand.

What each counts here (ECS counts them at the server task's proxy, which
in a one-proxy emulator is the connection from the proxy to a replica):
- RequestCount, HTTPCode_Target_{2,3,4,5}XX_Count: responses from replicas;
- TargetResponseTime: ms from sending the request to the response head;
- ActiveConnectionCount / NewConnectionCount: proxy -> replica connections
  open now / opened in total;
- ProcessedBytes: request and response bytes (heads and bodies) both ways;
- GrpcRequestCount: gRPC requests answered (also in RequestCount), ECS's name;
- GrpcStatusCount: those by grpc-status (a `code` label), a meshlocal
  extension: ECS publishes no per-status gRPC metric, and gRPC errors
  travel in trailers of HTTP 200 responses, invisible to the 2XX..5XX counts.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

# Milliseconds; Prometheus histogram buckets for TargetResponseTime.
BUCKETS_MS: tuple[float, ...] = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 15000)

METRIC_NAMES: tuple[str, ...] = (
    "RequestCount",
    "HTTPCode_Target_2XX_Count",
    "HTTPCode_Target_3XX_Count",
    "HTTPCode_Target_4XX_Count",
    "HTTPCode_Target_5XX_Count",
    "TargetResponseTime",
    "ActiveConnectionCount",
    "NewConnectionCount",
    "ProcessedBytes",
    "GrpcRequestCount",
    "GrpcStatusCount",
)


class ServiceMetrics:
    __slots__ = (
        "active_connections",
        "buckets",
        "codes",
        "grpc_codes",
        "grpc_requests",
        "new_connections",
        "processed_bytes",
        "requests",
        "response_time_ms_sum",
    )

    def __init__(self) -> None:
        self.requests = 0
        self.codes = [0, 0, 0, 0, 0, 0]  # index = status // 100
        self.response_time_ms_sum = 0.0
        self.buckets = [0] * (len(BUCKETS_MS) + 1)  # last: +Inf only
        self.active_connections = 0
        self.new_connections = 0
        self.processed_bytes = 0
        self.grpc_requests = 0
        self.grpc_codes: dict[int, int] = {}  # grpc-status -> responses

    def response(self, status: int, elapsed_ms: float) -> None:
        self.requests += 1
        cls = status // 100
        if 0 < cls < 6:
            self.codes[cls] += 1
        self.response_time_ms_sum += elapsed_ms
        self.buckets[bisect_left(BUCKETS_MS, elapsed_ms)] += 1

    def grpc_status(self, code: int) -> None:
        self.grpc_codes[code] = self.grpc_codes.get(code, 0) + 1


# Client-perceived latency per edge (the mesh page's p50/p99): 20% steps from
# 0.1 ms to ~2 min, so an interpolated quantile is within ~10% of the truth.
EDGE_BUCKETS_MS: tuple[float, ...] = tuple(round(0.1 * 1.2**k, 4) for k in range(78))


class EdgeMetrics:
    """One client address's calls to one service, as that client saw them.

    A call is a response (HTTP/1, a stream in HTTP/2 and gRPC) or, in TCP
    mode, a connection. An error is a 5xx answer, a gRPC status ECS would
    count as a 5xx, or a TCP connection reset for want of a replica. The
    mesh page turns these cumulative counts into rates over its window.
    """

    __slots__ = ("buckets", "calls", "errors")

    def __init__(self) -> None:
        self.calls = 0
        self.errors = 0
        self.buckets = [0] * (len(EDGE_BUCKETS_MS) + 1)

    def response(self, status: int, elapsed_ms: float) -> None:
        self.calls += 1
        if status >= 500:
            self.errors += 1
        self.buckets[bisect_left(EDGE_BUCKETS_MS, elapsed_ms)] += 1

    def latency(self, elapsed_ms: float) -> None:
        """A sample without a call: a TCP connection's first byte."""
        self.buckets[bisect_left(EDGE_BUCKETS_MS, elapsed_ms)] += 1


# Where a connection counts before it knows its edge (never read): one for all,
# so a connection allocates nothing for it.
UNCOUNTED = EdgeMetrics()

# At most this many edges (~3 MB); past it a new client address is counted
# under OVERFLOW_CLIENT (the page's "outside the mesh"): the table never
# drops an edge a connection still counts into.
MAX_EDGES = 4096
OVERFLOW_CLIENT = ""


class Metrics:
    def __init__(self) -> None:
        self.services: dict[str, ServiceMetrics] = {}
        # (server service, client address) -> what that client saw; the
        # public endpoint's client is balancer.PUBLIC_CLIENT.
        self.edges: dict[tuple[str, str], EdgeMetrics] = {}

    def edge(self, service: str, client: str) -> EdgeMetrics:
        key = (service, client)
        e = self.edges.get(key)
        if e is None:
            if len(self.edges) >= MAX_EDGES:
                key = (service, OVERFLOW_CLIENT)
                e = self.edges.get(key)
                if e is not None:
                    return e
            e = self.edges[key] = EdgeMetrics()
        return e

    def service(self, name: str) -> ServiceMetrics:
        m = self.services.get(name)
        if m is None:
            m = self.services[name] = ServiceMetrics()
        return m

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """service -> metric name -> value; TargetResponseTime is the mean in ms."""
        out: dict[str, dict[str, Any]] = {}
        for name in sorted(self.services):
            m = self.services[name]
            out[name] = {
                "RequestCount": m.requests,
                "HTTPCode_Target_2XX_Count": m.codes[2],
                "HTTPCode_Target_3XX_Count": m.codes[3],
                "HTTPCode_Target_4XX_Count": m.codes[4],
                "HTTPCode_Target_5XX_Count": m.codes[5],
                "TargetResponseTime": (
                    round(m.response_time_ms_sum / m.requests, 3) if m.requests else 0.0
                ),
                "ActiveConnectionCount": m.active_connections,
                "NewConnectionCount": m.new_connections,
                "ProcessedBytes": m.processed_bytes,
                "GrpcRequestCount": m.grpc_requests,
                "GrpcStatusCount": {str(c): n for c, n in sorted(m.grpc_codes.items())},
            }
        return out


def stats_table(snapshot: dict[str, dict[str, Any]], modes: dict[str, str] | None = None) -> Any:
    """A rich Table for `meshlocal stats`, from `Metrics.snapshot()` (or /stats JSON).

    `modes` (service -> tcp/http/http2/grpc) adds a column: in tcp mode only the
    connection and byte counts can move, as in ECS without AppProtocol.
    """
    from rich.table import Table

    table = Table(title="Service Connect")
    table.add_column("Service")
    if modes is not None:
        table.add_column("Mode")
    columns = (
        ("RequestCount", "Requests"),
        ("HTTPCode_Target_2XX_Count", "2XX"),
        ("HTTPCode_Target_3XX_Count", "3XX"),
        ("HTTPCode_Target_4XX_Count", "4XX"),
        ("HTTPCode_Target_5XX_Count", "5XX"),
        ("TargetResponseTime", "Resp ms (avg)"),
        ("ActiveConnectionCount", "Active conns"),
        ("NewConnectionCount", "New conns"),
        ("ProcessedBytes", "Bytes"),
        ("GrpcRequestCount", "gRPC"),
    )
    for _, title in columns:
        table.add_column(title, justify="right")
    for service, values in sorted(snapshot.items()):
        lead = [service] if modes is None else [service, modes.get(service, "-")]
        table.add_row(*lead, *(str(values.get(key, "")) for key, _ in columns))
    return table
