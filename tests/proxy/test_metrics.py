"""Service Connect metrics: values, `/metrics` (prometheus_client), the admin app, the table."""

from __future__ import annotations

import json
import math

import aiohttp
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console

from meshlocal.faults import Fault, FaultTable, Kind
from meshlocal.manifest.model import ServiceType
from meshlocal.proxy.app import METRICS_REGISTRY, AdminServer, PublicEndpoint, admin_app
from meshlocal.proxy.metrics import BUCKETS_MS, METRIC_NAMES, Metrics, stats_table
from meshlocal.proxy.promexport import CounterCollector, new_registry

from .helpers import MeshFactory, service


def test_response_classes_and_mean_time() -> None:
    metrics = Metrics()
    m = metrics.service("api")
    for status, ms in ((200, 1.0), (201, 3.0), (302, 2.0), (404, 2.0), (503, 7.0)):
        m.response(status, ms)
    snap = metrics.snapshot()["api"]
    assert snap["RequestCount"] == 5
    assert snap["HTTPCode_Target_2XX_Count"] == 2
    assert snap["HTTPCode_Target_3XX_Count"] == 1
    assert snap["HTTPCode_Target_4XX_Count"] == 1
    assert snap["HTTPCode_Target_5XX_Count"] == 1
    assert snap["TargetResponseTime"] == 3.0
    assert set(snap) == set(METRIC_NAMES)


def families(text: str) -> dict[str, Metric]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Metric], sample: str, **labels: str) -> float:
    """The one sample named `sample` with exactly `labels`."""
    family = sample.removesuffix("_total")
    for suffix in ("_bucket", "_count", "_sum"):
        if family not in fams:
            family = family.removesuffix(suffix)
    found = [s.value for s in fams[family].samples if s.name == sample and s.labels == labels]
    assert len(found) == 1, (sample, labels, fams.get(family))
    return found[0]


def test_prometheus_text_format() -> None:
    metrics = Metrics()
    metrics.service("api").response(200, 0.5)
    metrics.service("api").response(500, 30.0)
    metrics.service('we"ird').processed_bytes = 7
    text = generate_latest(new_registry(metrics)).decode()
    assert text.endswith("\n")
    # Counters carry prometheus_client's `_total` suffix; the families keep ECS's names.
    assert 'RequestCount_total{service="api"} 2.0' in text
    assert 'HTTPCode_Target_5XX_Count_total{service="api"} 1.0' in text
    assert 'TargetResponseTime_bucket{le="1.0",service="api"} 1.0' in text
    assert 'ProcessedBytes_total{service="we\\"ird"} 7.0' in text
    fams = families(text)
    for name in METRIC_NAMES:
        assert name in fams, name
    kinds = {name: fams[name].type for name in METRIC_NAMES}
    assert kinds == {
        **{name: "counter" for name in METRIC_NAMES},
        "TargetResponseTime": "histogram",
        "ActiveConnectionCount": "gauge",
    }
    assert value(fams, "RequestCount_total", service="api") == 2
    assert value(fams, "HTTPCode_Target_2XX_Count_total", service="api") == 1
    assert value(fams, "HTTPCode_Target_5XX_Count_total", service="api") == 1
    assert value(fams, "HTTPCode_Target_4XX_Count_total", service="api") == 0
    assert value(fams, "ProcessedBytes_total", service='we"ird') == 7
    assert value(fams, "TargetResponseTime_count", service="api") == 2
    assert value(fams, "TargetResponseTime_sum", service="api") == 30.5
    buckets = {
        s.labels["le"]: s.value
        for s in fams["TargetResponseTime"].samples
        if s.name == "TargetResponseTime_bucket" and s.labels["service"] == "api"
    }
    assert list(buckets) == [*(repr(float(b)) for b in BUCKETS_MS), "+Inf"]
    assert buckets["1.0"] == 1  # 0.5 ms
    assert buckets["25.0"] == 1
    assert buckets["50.0"] == 2  # 30 ms
    assert buckets["+Inf"] == 2


def test_label_values_are_escaped_and_round_trip() -> None:
    metrics = Metrics()
    odd = 'a"b\\c\nd}{,=e'
    metrics.service(odd).response(404, 3.0)
    metrics.service(odd).grpc_status(14)
    registry = new_registry(metrics)
    text = generate_latest(registry).decode()
    assert 'service="a\\"b\\\\c\\nd}{,=e"' in text  # \" \\ \n, one line
    fams = families(text)
    assert value(fams, "HTTPCode_Target_4XX_Count_total", service=odd) == 1
    assert value(fams, "GrpcStatusCount_total", service=odd, code="14") == 1
    assert value(fams, "TargetResponseTime_bucket", service=odd, le="5.0") == 1
    om = {f.name: f for f in openmetrics_families(openmetrics_latest(registry).decode())}
    assert [s.labels for s in om["RequestCount"].samples] == [{"service": odd}]


def test_registries_are_private_and_carry_process_metrics() -> None:
    one, two = Metrics(), Metrics()
    one.service("api").response(200, 1.0)
    app_one, app_two = admin_app(one), admin_app(two)
    reg_one, reg_two = app_one[METRICS_REGISTRY], app_two[METRICS_REGISTRY]
    assert reg_one is not reg_two
    assert reg_one.get_sample_value("RequestCount_total", {"service": "api"}) == 1
    assert reg_two.get_sample_value("RequestCount_total", {"service": "api"}) is None
    assert REGISTRY.get_sample_value("RequestCount_total", {"service": "api"}) is None
    fams = families(generate_latest(reg_one).decode())
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "python_info"):
        assert name in fams, name
    assert fams["process_resident_memory_bytes"].samples[0].value > 0
    assert "python_gc_collections" in fams


def test_fault_counters_and_extra_collectors() -> None:
    faults = FaultTable()
    metrics = Metrics()
    dropped = [0]
    registry = new_registry(
        metrics,
        faults,
        (CounterCollector("meshlocal_dns_delayed_dropped", "x", lambda: dropped[0]),),
    )
    fams = families(generate_latest(registry).decode())
    assert "meshlocal_fault_hits" not in fams  # no fault, no family (as before)
    assert value(fams, "meshlocal_dns_delayed_dropped_total") == 0
    slow = faults.add(Fault("api", Kind.LATENCY, latency_ms=5, id="slow", source="web"))
    faults.add(Fault('we"ird\\', Kind.REFUSE, id="odd"))
    active = faults.get(slow.id)
    assert active is not None
    for _ in range(3):
        active.roll()
    dropped[0] = 2
    fams = families(generate_latest(registry).decode())
    labels = {"fault": "slow", "kind": "latency", "service": "api", "from": "web"}
    assert value(fams, "meshlocal_fault_hits_total", **labels) == 3
    assert value(fams, "meshlocal_fault_seen_total", **labels) == 3
    odd = {"fault": "odd", "kind": "refuse", "service": 'we"ird\\', "from": ""}
    assert value(fams, "meshlocal_fault_hits_total", **odd) == 0
    assert len(fams["meshlocal_fault_seen"].samples) == 2
    assert fams["meshlocal_fault_hits"].type == "counter"
    assert value(fams, "meshlocal_dns_delayed_dropped_total") == 2


def test_grpc_counts() -> None:
    metrics = Metrics()
    m = metrics.service("api")
    for code in (0, 0, 5, 14):
        m.response(200, 1.0)
        m.grpc_requests += 1
        m.grpc_status(code)
    snap = metrics.snapshot()["api"]
    assert snap["RequestCount"] == snap["GrpcRequestCount"] == 4
    assert snap["HTTPCode_Target_2XX_Count"] == 4  # gRPC errors travel in HTTP 200
    assert snap["GrpcStatusCount"] == {"0": 2, "5": 1, "14": 1}
    assert json.loads(json.dumps(snap)) == snap  # what /stats serves
    fams = families(generate_latest(new_registry(metrics)).decode())
    assert value(fams, "GrpcRequestCount_total", service="api") == 4
    assert value(fams, "GrpcStatusCount_total", service="api", code="0") == 2
    assert value(fams, "GrpcStatusCount_total", service="api", code="14") == 1
    assert value(fams, "GrpcStatusCount_total", service="api", code="5") == 1
    assert fams["GrpcStatusCount"].type == "counter"


def test_stats_table_renders_snapshot() -> None:
    metrics = Metrics()
    metrics.service("api").response(200, 2.0)
    console = Console(width=200, record=True)
    console.print(stats_table(metrics.snapshot()))
    out = console.export_text()
    assert "api" in out and "Requests" in out and "2XX" in out


async def test_live_metrics_and_admin_endpoint(
    mesh_factory: MeshFactory, client: aiohttp.ClientSession
) -> None:
    mesh = await mesh_factory(replicas=2)
    mesh.backends["api-2"].status = 500
    for _ in range(4):
        async with client.get(mesh.url("/abc"), headers={"Host": "api"}) as resp:
            await resp.read()
    snap = mesh.proxy.metrics.snapshot()["api"]
    assert snap["RequestCount"] == 4
    assert snap["HTTPCode_Target_2XX_Count"] == 2
    assert snap["HTTPCode_Target_5XX_Count"] == 2
    assert snap["NewConnectionCount"] == 2  # one pooled connection per replica
    assert snap["ActiveConnectionCount"] == 2
    assert snap["TargetResponseTime"] > 0
    # Each exchange: request head out, response head + body back; "api-1" is 5 bytes.
    assert snap["ProcessedBytes"] > 4 * (len("GET /abc HTTP/1.1\r\n") + 5)

    admin = AdminServer(mesh.proxy.metrics)
    await admin.start()
    try:
        assert admin.host == "127.0.0.1"  # loopback by default
        async with client.get(admin.url + "/metrics") as resp:
            assert resp.status == 200
            assert resp.content_type == "text/plain"
            assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            text = await resp.text()
        fams = families(text)
        assert value(fams, "RequestCount_total", service="api") == 4
        assert value(fams, "HTTPCode_Target_2XX_Count_total", service="api") == 2
        assert value(fams, "HTTPCode_Target_5XX_Count_total", service="api") == 2
        assert value(fams, "HTTPCode_Target_3XX_Count_total", service="api") == 0
        assert value(fams, "NewConnectionCount_total", service="api") == 2
        assert value(fams, "ActiveConnectionCount", service="api") == 2
        assert value(fams, "ProcessedBytes_total", service="api") == snap["ProcessedBytes"]
        assert value(fams, "GrpcRequestCount_total", service="api") == 0
        assert value(fams, "TargetResponseTime_count", service="api") == 4
        assert value(fams, "TargetResponseTime_bucket", service="api", le="+Inf") == 4
        mean = value(fams, "TargetResponseTime_sum", service="api") / 4
        assert math.isclose(mean, snap["TargetResponseTime"], abs_tol=0.001)
        assert value(fams, "process_cpu_seconds_total") > 0
        assert value(fams, "process_resident_memory_bytes") > 0
        # OpenMetrics when asked: its own parser, `# EOF` at the end.
        accept = "application/openmetrics-text; version=1.0.0, text/plain; q=0.5"
        async with client.get(admin.url + "/metrics", headers={"Accept": accept}) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/openmetrics-text"
            assert resp.headers["Content-Type"].startswith(
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            )
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            om_text = await resp.text()
        assert om_text.endswith("# EOF\n")
        om = {f.name: f for f in openmetrics_families(om_text)}
        assert om["RequestCount"].type == "counter"
        assert [(s.name, s.labels, s.value) for s in om["RequestCount"].samples] == [
            ("RequestCount_total", {"service": "api"}, 4)
        ]
        assert om["TargetResponseTime"].type == "histogram"
        assert "process_cpu_seconds" in om
        # An Accept prometheus_client can't read gets the text format, not a 500.
        bad = "application/openmetrics-text; version=x"
        async with client.get(admin.url + "/metrics", headers={"Accept": bad}) as resp:
            assert resp.status == 200
            assert resp.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        async with client.get(admin.url + "/stats") as resp:
            stats = await resp.json()
        assert stats["api"]["HTTPCode_Target_5XX_Count"] == 2
    finally:
        await admin.stop()
    await mesh.proxy.stop()
    assert mesh.proxy.metrics.snapshot()["api"]["ActiveConnectionCount"] == 0


async def test_public_endpoint_requests_count_under_the_service_they_reach(
    mesh_factory: MeshFactory,
) -> None:
    """The ALB's requests are the Load Balanced Web Service's, as in CloudWatch."""
    lbws = ServiceType.LOAD_BALANCED_WEB_SERVICE
    mesh = await mesh_factory(
        service("front", 8080, type=lbws, http_path="/"),
        service("api", 8081, type=lbws, http_path="api"),
    )
    await mesh.add("front")
    await mesh.add("api")
    mesh.backends["api-1"].status = 404
    public = PublicEndpoint(mesh.naming, mesh.registry, "127.0.0.3", 0, engine=mesh.proxy.engine)
    await public.start()
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/", "/x", "/", "/api/items", "/api"):
                async with session.get(f"http://127.0.0.3:{public.bound}{path}") as resp:
                    await resp.read()
                    assert resp.headers["x-meshlocal-route"] == "public-endpoint"
            # And one to api over Service Connect: the same service's counters.
            async with session.get(mesh.url("/", endpoint_port=8081)) as resp:
                assert resp.status == 404
                await resp.read()
    finally:
        await public.stop()
    snap = mesh.proxy.metrics.snapshot()
    assert set(snap) == {"front", "api"}
    assert snap["front"]["RequestCount"] == 3
    assert snap["front"]["HTTPCode_Target_2XX_Count"] == 3
    assert snap["api"]["RequestCount"] == 3
    assert snap["api"]["HTTPCode_Target_4XX_Count"] == 3
