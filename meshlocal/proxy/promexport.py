"""`/metrics` through `prometheus_client`: collectors that read the plain counters.

The data paths keep bumping integer attributes (metrics.py, faults.py, the DNS
server); the collectors here read them at scrape time and hand
`prometheus_client` metric families, which writes the exposition (Prometheus
text or OpenMetrics, `choose_encoder`) and escapes label values.

Counters are `CounterMetricFamily`s, so their samples carry prometheus_client's
`_total` suffix: `RequestCount_total{service="api"}` under the family
`RequestCount` (ECS's CloudWatch name). Each admin app has a registry of its
own (never the global REGISTRY: several proxies share a test process), with
the process, platform and GC collectors beside meshlocal's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from meshlocal.faults import Active, FaultTable
from meshlocal.proxy.metrics import BUCKETS_MS, Metrics, ServiceMetrics

# The histogram's `le` bounds, as prometheus_client writes its own ("1.0", "+Inf").
_BOUNDS: tuple[str, ...] = (*(repr(float(b)) for b in BUCKETS_MS), "+Inf")

_COUNTERS: tuple[tuple[str, str, Callable[[ServiceMetrics], float]], ...] = (
    ("RequestCount", "Requests answered by replicas.", lambda m: m.requests),
    *(
        (
            f"HTTPCode_Target_{cls}XX_Count",
            f"Responses with a {cls}xx status from replicas.",
            (lambda m, c=cls: m.codes[c]),
        )
        for cls in (2, 3, 4, 5)
    ),
)
_AFTER: tuple[tuple[str, str, Callable[[ServiceMetrics], float]], ...] = (
    (
        "NewConnectionCount",
        "Connections opened from the proxy to replicas.",
        lambda m: m.new_connections,
    ),
    (
        "ProcessedBytes",
        "Request and response bytes proxied, both directions.",
        lambda m: m.processed_bytes,
    ),
    ("GrpcRequestCount", "gRPC requests answered.", lambda m: m.grpc_requests),
)


class ServiceCollector:
    """Service Connect's per-service metrics (`Metrics`), labelled `service`."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        services = sorted(self.metrics.services.items())
        for name, doc, read in _COUNTERS:
            yield _per_service(name, doc, services, read)
        yield self._response_time(services)
        active = GaugeMetricFamily(
            "ActiveConnectionCount",
            "Open connections from the proxy to replicas.",
            labels=["service"],
        )
        for svc, m in services:
            active.add_metric([svc], m.active_connections)
        yield active
        for name, doc, read in _AFTER:
            yield _per_service(name, doc, services, read)
        grpc = CounterMetricFamily(
            "GrpcStatusCount",
            "gRPC responses by grpc-status code.",
            labels=["service", "code"],
        )
        for svc, m in services:
            for code, count in sorted(m.grpc_codes.items()):
                grpc.add_metric([svc, str(code)], count)
        yield grpc

    @staticmethod
    def _response_time(services: list[tuple[str, ServiceMetrics]]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "TargetResponseTime",
            "Milliseconds from request sent to response head.",
            labels=["service"],
        )
        for svc, m in services:
            running = 0
            buckets: list[tuple[str, float]] = []
            for bound, count in zip(_BOUNDS, m.buckets, strict=True):
                running += count
                buckets.append((bound, running))
            family.add_metric([svc], buckets, round(m.response_time_ms_sum, 3))
        return family


def _per_service(
    name: str,
    doc: str,
    services: list[tuple[str, ServiceMetrics]],
    read: Callable[[ServiceMetrics], float],
) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=["service"])
    for svc, m in services:
        family.add_metric([svc], read(m))
    return family


class FaultCollector:
    """Per active fault: `meshlocal_fault_hits_total`, `meshlocal_fault_seen_total`."""

    LABELS = ("fault", "kind", "service", "from")

    def __init__(self, faults: FaultTable) -> None:
        self.faults = faults

    def collect(self) -> Iterator[Metric]:
        actives: list[Active] = list(self.faults)
        if not actives:
            return
        hits = CounterMetricFamily(
            "meshlocal_fault_hits",
            "Connections, requests or DNS queries affected.",
            labels=self.LABELS,
        )
        seen = CounterMetricFamily(
            "meshlocal_fault_seen",
            "Connections, requests or DNS queries drawn for.",
            labels=self.LABELS,
        )
        for a in actives:
            f = a.fault
            labels = [f.id, f.kind.value, f.service, f.source]
            hits.add_metric(labels, a.hits)
            seen.add_metric(labels, a.seen)
        yield hits
        yield seen


class CounterCollector:
    """One unlabelled counter read at scrape time (the DNS server's dropped answers)."""

    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.name = name
        self.documentation = documentation
        self.read = read

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.read())


def new_registry(
    metrics: Metrics,
    faults: FaultTable | None = None,
    collectors: Iterable[Collector] = (),
) -> CollectorRegistry:
    """A private registry: process, platform and GC metrics, then meshlocal's."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(ServiceCollector(metrics))
    if faults is not None:
        registry.register(FaultCollector(faults))
    for collector in collectors:
        registry.register(collector)
    return registry


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """(body, Content-Type) for an Accept header: OpenMetrics when asked, else text 0.0.4."""
    try:
        encoder, content_type = choose_encoder(accept or "")
    except (TypeError, ValueError):  # a version it can't compare (`version=x`)
        encoder, content_type = choose_encoder("")
    return encoder(registry), content_type
