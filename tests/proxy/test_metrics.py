"""Service Connect metrics: values, Prometheus text, the admin endpoint, the stats table."""

from __future__ import annotations

import json
import re

import aiohttp
from rich.console import Console

from meshlocal.manifest.model import ServiceType
from meshlocal.proxy.app import AdminServer, PublicEndpoint
from meshlocal.proxy.metrics import METRIC_NAMES, Metrics, render_prometheus, stats_table

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


def test_prometheus_text_format() -> None:
    metrics = Metrics()
    metrics.service("api").response(200, 0.5)
    metrics.service("api").response(500, 30.0)
    metrics.service('we"ird').processed_bytes = 7
    text = render_prometheus(metrics)
    assert text.endswith("\n")
    assert 'RequestCount{service="api"} 2' in text
    assert 'HTTPCode_Target_5XX_Count{service="api"} 1' in text
    assert 'TargetResponseTime_bucket{service="api",le="1"} 1' in text
    assert 'TargetResponseTime_bucket{service="api",le="25"} 1' in text
    assert 'TargetResponseTime_bucket{service="api",le="50"} 2' in text
    assert 'TargetResponseTime_bucket{service="api",le="+Inf"} 2' in text
    assert 'TargetResponseTime_count{service="api"} 2' in text
    assert 'ProcessedBytes{service="we\\"ird"} 7' in text
    sample = re.compile(
        r'^[A-Za-z_:][A-Za-z0-9_:]*\{service="(?:[^"\\]|\\.)*"(?:,(?:le|code)="[^"]+")?\} \S+$'
    )
    for line in text.splitlines():
        assert line.startswith("# HELP ") or line.startswith("# TYPE ") or sample.match(line), line
    for name in METRIC_NAMES:
        assert f"# TYPE {name} " in text


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
    text = render_prometheus(metrics)
    assert 'GrpcRequestCount{service="api"} 4' in text
    assert 'GrpcStatusCount{service="api",code="0"} 2' in text
    assert 'GrpcStatusCount{service="api",code="14"} 1' in text
    assert "# TYPE GrpcStatusCount counter" in text


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
            text = await resp.text()
        assert 'RequestCount{service="api"} 4' in text
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
