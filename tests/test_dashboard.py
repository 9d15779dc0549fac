"""The mesh page's pure parts: edge windows, the timeline, events and the document."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlocal.dashboard.edges import EdgeWindow, quantile
from meshlocal.dashboard.logs import REDACTED, redact, redactor, tail_of
from meshlocal.dashboard.timeline import Timeline
from meshlocal.dashboard.topology import OUTSIDE_NODE, PUBLIC_NODE, Changes, Directory, document
from meshlocal.proxy.forward import PUBLIC_CLIENT
from meshlocal.proxy.metrics import EDGE_BUCKETS_MS, EdgeMetrics, Metrics
from meshlocal.registry import Health, Replica


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def replica(service: str, index: int, address: str, **kw: object) -> Replica:
    return Replica(service, index, f"{service}{index}".ljust(64, "0"), address, 80, **kw)  # type: ignore[arg-type]


# -- edges -------------------------------------------------------------------------------


def test_rates_errors_and_quantiles_over_the_window_summed_over_a_services_replicas() -> None:
    clock = Clock()
    metrics = Metrics()
    window = EdgeWindow(60.0, clock)
    directory = Directory()
    directory.remember(replica("front", 1, "10.0.0.2"))
    directory.remember(replica("front", 2, "10.0.0.3"))
    window.sample(metrics.edges)
    for i in range(100):  # front-1: 100 calls of 10 ms, 5 of them 503
        metrics.edge("api", "10.0.0.2").response(503 if i < 5 else 200, 10.0)
    for _ in range(100):  # front-2: 100 calls of 100 ms
        metrics.edge("api", "10.0.0.3").response(200, 100.0)
    metrics.edge("api", PUBLIC_CLIENT).response(200, 1.0)
    metrics.edge("api", "192.168.9.9").response(200, 1.0)
    clock.now += 10
    window.sample(metrics.edges)
    edges = {(e.source, e.target): e for e in window.edges(directory.node)}
    assert set(edges) == {("front", "api"), (PUBLIC_NODE, "api"), (OUTSIDE_NODE, "api")}
    front = edges[("front", "api")]
    assert front.calls == 200 and front.errors == 5
    assert front.rate == pytest.approx(20.0)
    assert front.error_rate == pytest.approx(0.025)
    assert front.p50_ms is not None and 8.0 <= front.p50_ms <= 12.0
    assert front.p99_ms is not None and 85.0 <= front.p99_ms <= 120.0


def test_calls_older_than_the_window_drop_out() -> None:
    clock = Clock()
    metrics = Metrics()
    window = EdgeWindow(60.0, clock)
    window.sample(metrics.edges)
    for _ in range(30):
        metrics.edge("api", "10.0.0.2").response(200, 5.0)
    for _ in range(70):  # a minute of samples, one a second, no new calls
        clock.now += 1
        window.sample(metrics.edges)
    (edge,) = window.edges(lambda _a: "front")
    assert edge.calls == 0 and edge.rate == 0.0 and edge.p50_ms is None
    assert edge.seconds == pytest.approx(60.0)


def test_a_counter_that_started_again_counts_from_zero() -> None:
    clock = Clock()
    metrics = Metrics()
    window = EdgeWindow(60.0, clock)
    for _ in range(50):
        metrics.edge("api", "a").response(200, 5.0)
    window.sample(metrics.edges)
    metrics.edges.clear()  # the proxy's table was full and started again
    for _ in range(3):
        metrics.edge("api", "a").response(200, 5.0)
    clock.now += 1
    window.sample(metrics.edges)
    (edge,) = window.edges(lambda _a: "front")
    assert edge.calls == 3


def test_tcp_first_byte_samples_carry_no_call() -> None:
    e = EdgeMetrics()
    e.calls += 1
    e.latency(3.0)
    assert e.calls == 1 and sum(e.buckets) == 1 and e.errors == 0


@given(st.lists(st.floats(min_value=0.05, max_value=100_000.0), min_size=1, max_size=300))
def test_quantiles_are_within_a_bucket_of_the_truth(samples: list[float]) -> None:
    e = EdgeMetrics()
    for s in samples:
        e.response(200, s)
    ordered = sorted(samples)
    for q in (0.5, 0.99):
        got = quantile(q, e.buckets)
        assert got is not None
        truth = ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))]
        # The true value's bucket bounds the estimate (20% steps).
        assert truth / 1.21 - 0.1 <= got <= truth * 1.21 + 0.1, (q, truth, got)


def test_quantile_of_nothing_is_none_and_past_the_last_bound_is_the_last_bound() -> None:
    assert quantile(0.5, [0] * (len(EDGE_BUCKETS_MS) + 1)) is None
    e = EdgeMetrics()
    e.response(200, 10**9)
    assert quantile(0.99, e.buckets) == EDGE_BUCKETS_MS[-1]


def test_the_proxy_keeps_a_bounded_number_of_edges_and_never_drops_a_counted_one() -> None:
    from meshlocal.proxy.metrics import MAX_EDGES, OVERFLOW_CLIENT

    metrics = Metrics()
    first = metrics.edge("api", "c0")
    for i in range(1, MAX_EDGES + 10):
        metrics.edge("api" if i % 2 else "web", f"c{i}")
    assert len(metrics.edges) <= MAX_EDGES + 2  # plus one overflow edge per service
    assert metrics.edge("api", "c0") is first  # still the one a connection holds
    late = metrics.edge("api", "c-late")
    assert late is metrics.edges[("api", OVERFLOW_CLIENT)]
    assert Directory().node(OVERFLOW_CLIENT) == OUTSIDE_NODE


def test_a_first_byte_after_the_accept_reaches_the_window() -> None:
    clock = Clock()
    metrics = Metrics()
    window = EdgeWindow(60.0, clock)
    edge = metrics.edge("db", "10.0.0.2")
    edge.calls += 1  # the accept
    window.sample(metrics.edges)
    clock.now += 1
    edge.latency(5.0)  # its first byte, a tick later
    window.sample(metrics.edges)
    (seen,) = window.edges(lambda _a: "front")
    assert seen.p50_ms is not None and 4.0 <= seen.p50_ms <= 6.0


def test_a_garbled_last_event_id_starts_over() -> None:
    t = Timeline(epoch="e")
    t.add("added", "x")
    assert t.since("e-\u00b2") == (True, t.events())
    assert t.since("e--1") == (True, t.events())


# -- the timeline ----------------------------------------------------------------------


def test_since_gives_exactly_what_a_client_missed() -> None:
    t = Timeline(keep=10, epoch="e1")
    events = [t.add("added", f"r{i}") for i in range(5)]
    assert t.since(None) == (True, events)
    assert t.since("e1-2") == (False, events[2:])
    assert t.since("e1-5") == (False, [])
    assert t.since("e0-2") == (True, events)  # another data plane's ids
    assert t.since("e1-99") == (True, events)  # never given
    assert t.since("garbage") == (True, events)


def test_a_client_behind_what_is_kept_starts_over() -> None:
    t = Timeline(keep=3, epoch="e")
    events = [t.add("added", f"r{i}") for i in range(10)]
    assert t.since("e-7") == (False, events[-3:])  # 8, 9, 10 missed, all kept
    assert t.since("e-6") == (True, events[-3:])  # 7 missed and dropped


def test_ids_and_listeners_follow_the_order_of_events() -> None:
    t = Timeline(epoch="x")
    heard: list[int] = []
    stop = t.listen(lambda e: heard.append(e.seq))
    for i in range(3):
        t.add("health", str(i))
    stop()
    t.add("health", "after")
    assert heard == [1, 2, 3]
    assert [t.event_id(e) for e in t.events()] == ["x-1", "x-2", "x-3", "x-4"]


# -- events from what the data plane sees -----------------------------------------------


def test_replica_changes_become_events() -> None:
    clock = Clock()
    t = Timeline(epoch="e")
    changes = Changes(t, Directory(), clock)
    a1 = replica("api", 1, "10.0.0.5")
    changes.replica(None, a1)
    changes.replica(a1, Replica(**{**a1.__dict__, "health": Health.UNHEALTHY}))
    changes.replica(a1, Replica(**{**a1.__dict__, "draining": True}))
    changes.replica(a1, None)
    clock.now += 5
    changes.replica(None, Replica("api", 1, "f" * 64, "10.0.0.9", 80))
    changes.replica(None, replica("api", 2, "10.0.0.6"))
    kinds = [(e.kind, e.replica) for e in t.events()]
    assert kinds == [
        ("added", "api-1"),
        ("health", "api-1"),
        ("draining", "api-1"),
        ("removed", "api-1"),
        ("replaced", "api-1"),
        ("added", "api-2"),
    ]
    assert "unhealthy (out of rotation)" in t.events()[1].text


def test_muted_changes_still_teach_the_directory() -> None:
    t = Timeline()
    d = Directory()
    changes = Changes(t, d)
    changes.muted = True
    changes.replica(None, replica("front", 1, "10.0.0.2"))
    assert t.events() == [] and d.node("10.0.0.2") == "front" and d.name("10.0.0.2") == "front-1"


def test_crashes_faults_ejections_and_the_controller() -> None:
    t = Timeline()
    d = Directory()
    d.remember(replica("front", 1, "10.0.0.2"))
    changes = Changes(t, d)
    looping = {"service": "web", "index": 1, "exit_code": 3, "count": 5}
    changes.status({"crashes": [looping]})  # the first document: what already was, no event
    waiting = {"index": 2, "exit_code": 137, "count": 1}
    changes.status({"services": {"api": {"restarting": [waiting]}}, "crashes": [looping]})
    changes.status({"services": {"api": {"restarting": [waiting]}}})  # the same death: no event
    changes.status({"services": {"api": {"restarting": []}}})  # back: forgotten
    changes.status({"services": {"api": {"restarting": [{**waiting, "count": 1}]}}})  # again
    changes.faults([{"id": "slow", "description": "latency"}])  # the first set: no event
    changes.faults([{"id": "slow"}, {"id": "gone", "description": "refuse"}])
    changes.faults([{"id": "gone"}])
    changes.ejected(replica("api", 3, "10.0.0.7"), "10.0.0.2", 30.0)
    changes.controller(True)
    changes.controller(True)
    changes.controller(False)
    texts = [(e.kind, e.text) for e in t.events()]
    assert [k for k, _ in texts] == [
        "died",
        "died",
        "fault",
        "fault",
        "ejected",
        "controller",
        "controller",
    ]
    assert texts[0][1] == texts[1][1] == "api-2 died (exit code 137; 1 time in a row)"
    assert texts[2][1].startswith("fault gone added") and texts[3][1] == "fault slow removed"
    assert "ejected by front-1's proxy for 30 s" in texts[4][1]


# -- the document -------------------------------------------------------------------------

STATE = {
    "project": "p",
    "app": "kudos",
    "env": "test",
    "mode": "container",
    "address": "172.20.0.2",
    "dns_port": 53,
    "public_port": 15080,  # inside the data-plane container
    "public_host_port": 47041,  # published on the host
    "ready": True,
    "controller_connected": True,
    "overrides": {"env": ["SECRET_TOKEN=hunter2"]},
    "crashes": [{"service": "api", "index": 1, "last_logs": ["password=hunter2"]}],
    "services": {
        "api": {
            "type": "Backend Service",
            "desired": 1,
            "port": 80,
            "discovery_name": "api.test.kudos.local",
            "connect": {
                "name": "api",
                "url": "http://api",
                "vip": "172.20.0.9",
                "port": 80,
                "protocol": "http",
            },
            "ready": True,
            "replicas": [
                {
                    "name": "api-1",
                    "index": 1,
                    "container_id": "c" * 64,
                    "address": "172.20.0.5",
                    "port": 80,
                    "health": "healthy",
                    "in_rotation": True,
                    "draining": False,
                    "ejected_by": ["172.20.0.6"],
                }
            ],
        },
        "worker": {
            "type": "Worker Service",
            "desired": 2,
            "port": None,
            "replicas": [{"name": "worker-1", "index": 1, "container_id": "w" * 64}],
            # worker-1 is back (its crash record lingers); worker-2 waits to restart.
            "restarting": [
                {"index": 1, "status": "restarting", "exit_code": 1},
                {"index": 2, "status": "restarting in 2 s", "exit_code": 1},
            ],
        },
    },
}


def test_the_document_has_services_edges_faults_and_no_secret() -> None:
    clock = Clock()
    d = Directory()
    d.remember(replica("front", 1, "172.20.0.6"))
    metrics = Metrics()
    window = EdgeWindow(60.0, clock)
    window.sample(metrics.edges)
    metrics.edge("api", "172.20.0.6").response(200, 4.0)
    metrics.edge("api", PUBLIC_CLIENT).response(200, 4.0)
    metrics.edge("gone", "172.20.0.6").response(200, 4.0)  # no longer configured
    clock.now += 2
    window.sample(metrics.edges)
    doc = document(
        STATE,
        naming=None,
        edges=window.edges(d.node),
        directory=d,
        faults=[
            {
                "id": "f1",
                "service": "api",
                "kind": "latency",
                "description": "latency 1s",
                "scope": "front -> api",
            }
        ],
        epoch="e",
        window_s=60.0,
    )
    assert [s["name"] for s in doc["services"]] == ["api", "worker"]
    assert [c["index"] for c in doc["services"][1]["restarting"]] == [2]
    api = doc["services"][0]
    assert api["replicas"][0]["ejected_by"] == ["front-1"]
    assert api["faults"] == 1 and api["connect"]["protocol"] == "http"
    assert doc["faults"][0]["summary"] == "front -> api, latency 1s"
    assert [(e["from"], e["to"], e["unit"]) for e in doc["edges"]] == [
        ("@public", "api", "requests"),
        ("front", "api", "requests"),
    ]
    assert doc["edges"][1]["rate"] == pytest.approx(0.5)
    assert {n["id"] for n in doc["nodes"]} == {"api", "worker", "@public"}
    assert doc["public_endpoint"] == "http://127.0.0.1:47041"
    assert any("api.test.kudos.local:80" in n for n in doc["notes"])
    assert "hunter2" not in repr(doc)  # neither crash logs nor overrides are shown


def test_tcp_edges_count_connections() -> None:
    state = {
        "services": {
            "db": {"connect": {"protocol": "tcp"}, "replicas": []},
        }
    }
    clock = Clock()
    window = EdgeWindow(60.0, clock)
    metrics = Metrics()
    window.sample(metrics.edges)
    metrics.edge("db", "10.1.1.1").calls += 1
    clock.now += 1
    window.sample(metrics.edges)
    doc = document(
        state,
        naming=None,
        edges=window.edges(Directory().node),
        directory=Directory(),
        faults=[],
        epoch="e",
        window_s=60,
    )
    (edge,) = doc["edges"]
    assert edge["unit"] == "connections" and edge["latency"] == "first byte"
    assert edge["from"] == OUTSIDE_NODE


# -- logs ---------------------------------------------------------------------------------


def test_secrets_are_taken_out_of_log_lines_longest_first() -> None:
    pattern = redactor(["s3cr3t-token", "s3cr3t", "on", ""])
    lines = redact(["token=s3cr3t-token other=s3cr3t", "turn it on", "online", "nothing"], pattern)
    assert lines == [
        f"token={REDACTED} other={REDACTED}",
        f"turn it {REDACTED}",
        "online",  # a short secret only as a whole word
        "nothing",
    ]
    assert redact(["a"], redactor([])) == ["a"]
    assert re.escape("x") == "x"


def test_tail_is_bounded() -> None:
    assert tail_of("20") == 20
    assert tail_of("0") == 1
    assert tail_of("100000") == 500
    assert tail_of("lots") == 50


def test_every_line_of_a_multi_line_secret_is_redacted() -> None:
    from types import SimpleNamespace

    from meshlocal.dashboard.logs import secret_values

    pem = (
        "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0B\nAQEFAASCBKcwggSjAgEAAoIB\n-----END KEY-----"
    )
    spec = SimpleNamespace(
        services=[
            SimpleNamespace(
                secrets={"KEY": pem},
                sidecars=[SimpleNamespace(secrets={"TOKEN": "sidecar-token"})],
            )
        ]
    )
    pattern = redactor(secret_values(spec))  # type: ignore[arg-type]
    lines = redact(
        ["key: MIIEvQIBADANBgkqhkiG9w0B", "sidecar-token", pem.replace("\n", " ")], pattern
    )
    assert "MIIEvQIBADANBgkqhkiG9w0B" not in " ".join(lines)
    assert lines[1] == REDACTED
