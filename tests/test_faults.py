"""The fault model (pure): the table's ids and index, whom a fault hits, seeded draws,
delays, counters, Prometheus lines, and the JSON form."""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from meshlocal.faults import (
    Active,
    DnsAnswer,
    Fault,
    FaultTable,
    Kind,
    dns_names,
    expected_hits,
    show_ms,
)
from meshlocal.manifest.model import (
    Connect,
    Environment,
    EnvironmentSpec,
    Service,
    ServiceType,
    Workspace,
)
from meshlocal.naming import NamingModel
from meshlocal.proxy.promexport import FaultCollector

BACKEND = ServiceType.BACKEND_SERVICE
WORKER = ServiceType.WORKER_SERVICE


def svc(name: str, type_: ServiceType = BACKEND, port: int | None = 80, **kw: object) -> Service:
    return Service(
        name=name,
        type=type_,
        manifest_path=Path(f"/ws/copilot/{name}/manifest.yml"),
        port=port,
        target_port=port,
        connect=Connect(True),
        **kw,  # type: ignore[arg-type]
    )


def naming(*services: Service) -> NamingModel:
    ws = Workspace(Path("/ws"), "kudos", {}, {})
    spec = EnvironmentSpec(ws, Environment("test", None), services or (svc("api"), svc("web")))
    return NamingModel(spec)


def latency(service: str = "api", **kw: object) -> Fault:
    return Fault(service, Kind.LATENCY, latency_ms=100, **kw)  # type: ignore[arg-type]


# -- the table: ids, replacing, removing -----------------------------------------------


def test_ids_count_up_and_skip_the_ones_taken() -> None:
    table = FaultTable()
    assert table.add(latency(id="f2")).id == "f2"
    assert [table.add(latency()).id for _ in range(3)] == ["f1", "f3", "f4"]
    assert len(table) == 4 and [f.id for f in table.faults()] == ["f2", "f1", "f3", "f4"]
    assert [a.fault.id for a in table] == ["f2", "f1", "f3", "f4"]


def test_adding_the_same_fault_keeps_its_counters_a_changed_one_starts_over() -> None:
    table = FaultTable()
    fault = table.add(latency(percent=50, seed=1))
    first = table.get(fault.id)
    assert first is not None
    for _ in range(10):
        first.roll()
    assert table.add(fault) == fault and table.get(fault.id) is first and first.seen == 10
    changed = table.add(Fault("api", Kind.LATENCY, id=fault.id, latency_ms=300))
    now = table.get(fault.id)
    assert now is not first and now is not None and now.seen == 0 and now.fault == changed
    assert table.sc["api"] == (now,)


def test_remove_and_clear_update_the_index() -> None:
    table = FaultTable()
    a = table.add(latency())
    b = table.add(Fault("web", Kind.REFUSE))
    version = table.version
    assert table.remove("nope") is None and table.version == version
    assert table.remove(a.id) == a
    assert table.version > version
    assert "api" not in table.sc and table.sc["web"][0].fault == b
    assert table.get(a.id) is None
    assert table.clear() == [b]
    assert not table.sc and not table.dns and len(table) == 0


def test_replace_all_keeps_counters_of_unchanged_faults_only() -> None:
    table = FaultTable()
    keep = table.add(latency(id="keep"))
    change = table.add(Fault("web", Kind.REFUSE, id="change"))
    gone = table.add(Fault("web", Kind.RESET, id="gone"))
    for ident in (keep.id, change.id, gone.id):
        active = table.get(ident)
        assert active is not None
        active.roll()
    kept = table.get(keep.id)
    table.replace_all([keep, Fault("web", Kind.REFUSE, id="change", percent=10), latency()])
    assert table.get(keep.id) is kept and kept is not None and kept.seen == 1
    changed = table.get(change.id)
    assert changed is not None and changed.seen == 0 and changed.fault.percent == 10
    assert table.get(gone.id) is None
    # a fault without an id gets one, as `add` would give it
    ids = [f.id for f in table.faults()]
    assert ids[:2] == ["keep", "change"] and ids[2].startswith("f") and len(set(ids)) == 3
    assert {a.fault.id for a in table.sc["web"]} == {"change"}
    assert len(table.sc["api"]) == 2


# -- whom a fault hits -----------------------------------------------------------------


def test_for_client_filters_on_the_client_service() -> None:
    table = FaultTable()
    everyone = table.add(latency())
    web_only = table.add(Fault("api", Kind.REFUSE, source="web"))
    assert [a.fault for a in table.for_client("api", "web")] == [everyone, web_only]
    assert [a.fault for a in table.for_client("api", "other")] == [everyone]
    assert [a.fault for a in table.for_client("api", None)] == [everyone]
    assert table.for_client("web", "api") == ()
    # asking is no draw: counters move only in `hit`
    assert all(a.seen == 0 for a in table)


def test_hit_applies_the_replica_filter_before_drawing() -> None:
    table = FaultTable()
    all_replicas = table.add(latency())
    second = table.add(Fault("api", Kind.RESET, replica=2))
    cands = table.for_client("api", "web")
    assert [a.fault for a in FaultTable.hit(cands, 1)] == [all_replicas]
    two = table.get(second.id)
    assert two is not None and two.seen == 0  # not drawn for replica 1
    assert [a.fault for a in FaultTable.hit(cands, 2)] == [all_replicas, second]
    assert two.seen == 1 and two.hits == 1
    assert FaultTable.hit((), 1) == []


def test_dns_faults_are_indexed_by_the_service_discovery_name() -> None:
    model = naming(svc("api"), svc("web"), svc("worker", WORKER, port=None))
    assert dns_names("api", model) == {"api.test.kudos.local"}
    assert dns_names("worker", model) == frozenset()
    table = FaultTable()
    nx = table.add(Fault("api", Kind.DNS, dns=DnsAnswer.NXDOMAIN, source="web"), model)
    assert set(table.dns) == {"api.test.kudos.local"} and not table.sc
    assert [a.fault for a in table.for_dns("api.test.kudos.local", "web")] == [nx]
    assert table.for_dns("api.test.kudos.local", "other") == []
    assert table.for_dns("web.test.kudos.local", "web") == []
    active = table.get(nx.id)
    assert active is not None and (active.seen, active.hits) == (1, 1)
    # later calls without the naming model keep service-wide DNS faults indexed
    other = table.add(Fault("web", Kind.DNS, dns=DnsAnswer.SERVFAIL))
    assert set(table.dns) == {"api.test.kudos.local", "web.test.kudos.local"}
    table.remove(other.id)
    assert set(table.dns) == {"api.test.kudos.local"}
    # a workspace without the service drops the name from the index (the fault stays)
    table.reindex(naming(svc("web")))
    assert table.dns == {} and len(table) == 1


def test_a_dns_fault_with_a_name_needs_no_naming_model() -> None:
    table = FaultTable()
    table.add(Fault("api", Kind.DNS, dns=DnsAnswer.SERVFAIL, dns_name="api.test.kudos.local"))
    assert set(table.dns) == {"api.test.kudos.local"}


# -- draws ---------------------------------------------------------------------------------


def active(fault: Fault) -> Active:
    return Active(fault, random.Random(fault.seed))


@pytest.mark.parametrize("seed", [None, 5])
def test_percent_0_never_hits_and_100_always_does(seed: int | None) -> None:
    never = active(latency(percent=0, seed=seed))
    always = active(latency(percent=100, seed=seed))
    assert not any(never.roll() for _ in range(500))
    assert all(always.roll() for _ in range(500))
    assert (never.seen, never.hits, always.seen, always.hits) == (500, 0, 500, 500)


def test_a_seed_repeats_the_same_decisions() -> None:
    def run(seed: int | None) -> list[bool]:
        a = active(latency(percent=37.5, seed=seed, jitter_ms=20))
        out = []
        for _ in range(300):
            out.append(a.roll())
            a.delay_s()  # jitter draws must not shift the decisions
        return out

    assert run(42) == run(42)
    assert run(42) != run(43)
    assert sum(run(42)) == expected_hits(37.5, 42, 300)
    assert run(None) != run(None)  # 2**-300-ish odds of a false failure


def test_expected_hits_is_what_the_table_does() -> None:
    table = FaultTable()
    fault = table.add(Fault("api", Kind.ABORT, http_status=503, percent=30, seed=99))
    cands = table.for_client("api", "web")
    hits = sum(len(FaultTable.hit(cands, 1)) for _ in range(1000))
    assert hits == expected_hits(30, 99, 1000)
    assert 230 < hits < 370
    got = table.get(fault.id)
    assert got is not None and (got.seen, got.hits) == (1000, hits)


def test_an_unseeded_percent_lands_in_its_binomial_interval() -> None:
    n, p = 20_000, 0.3
    a = active(latency(percent=30))
    hits = sum(a.roll() for _ in range(n))
    sd = math.sqrt(n * p * (1 - p))
    assert abs(hits - n * p) < 4.5 * sd  # ~1 false failure in 150,000 runs


def test_delay_stays_within_latency_plus_minus_jitter_and_never_below_zero() -> None:
    assert active(latency()).delay_s() == 0.1
    a = active(Fault("api", Kind.LATENCY, latency_ms=100, jitter_ms=30, seed=1))
    draws = [a.delay_s() for _ in range(2000)]
    assert 0.07 <= min(draws) < 0.075 and 0.125 < max(draws) <= 0.13
    assert abs(sum(draws) / len(draws) - 0.1) < 0.003
    low = active(Fault("api", Kind.LATENCY, latency_ms=10, jitter_ms=50, seed=2))
    lows = [low.delay_s() for _ in range(500)]
    assert min(lows) == 0.0 and max(lows) <= 0.06
    dns = active(Fault("api", Kind.DNS, dns=DnsAnswer.DELAY, latency_ms=1500))
    assert dns.delay_s() == 1.5


# -- reporting -------------------------------------------------------------------------


def test_fault_counters_exported_per_fault() -> None:
    table = FaultTable()
    registry = CollectorRegistry()
    registry.register(FaultCollector(table))
    assert generate_latest(registry) == b""  # no fault, no family
    a = table.add(latency(id="slow", source="web"))
    table.add(Fault('we"ird\\\n', Kind.REFUSE, id="odd"))
    got = table.get(a.id)
    assert got is not None
    for _ in range(3):
        got.roll()
    text = generate_latest(registry).decode()
    assert "# TYPE meshlocal_fault_hits_total counter" in text
    assert "# TYPE meshlocal_fault_seen_total counter" in text
    assert (
        'meshlocal_fault_hits_total{fault="slow",from="web",kind="latency",service="api"} 3.0'
        in text
    )
    assert 'service="we\\"ird\\\\\\n"' in text
    samples = [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]
    slow = {"fault": "slow", "kind": "latency", "service": "api", "from": "web"}
    odd = {"fault": "odd", "kind": "refuse", "service": 'we"ird\\\n', "from": ""}
    assert samples == [
        ("meshlocal_fault_hits_total", slow, 3),
        ("meshlocal_fault_hits_total", odd, 0),
        ("meshlocal_fault_seen_total", slow, 3),
        ("meshlocal_fault_seen_total", odd, 0),
    ]


def test_snapshot_carries_counters_and_a_description() -> None:
    table = FaultTable()
    fault = table.add(Fault("api", Kind.LATENCY, latency_ms=200, jitter_ms=50, percent=30))
    snap = table.snapshot()
    assert len(snap) == 1
    assert snap[0]["id"] == fault.id and snap[0]["kind"] == "latency"
    assert (snap[0]["seen"], snap[0]["hits"]) == (0, 0)
    assert snap[0]["description"] == "latency 200ms ±50ms (30%)"
    assert Fault.from_json(snap[0]) == fault  # the extra keys are ignored
    json.dumps(snap)


@pytest.mark.parametrize(
    ("fault", "text", "scope"),
    [
        (Fault("api", Kind.LATENCY, latency_ms=1500), "latency 1.5s", "* -> api"),
        (Fault("api", Kind.BANDWIDTH, rate=64_000), "bandwidth 64KB/s", "* -> api"),
        (Fault("api", Kind.BANDWIDTH, rate=2_000_000), "bandwidth 2MB/s", "* -> api"),
        (Fault("api", Kind.BANDWIDTH, rate=1500), "bandwidth 1500B/s", "* -> api"),
        (Fault("api", Kind.RESET), "reset", "* -> api"),
        (Fault("api", Kind.RESET, after_bytes=10, replica=2), "reset after 10 B", "* -> api-2"),
        (Fault("api", Kind.REFUSE, percent=12.5), "refuse (12.5%)", "* -> api"),
        (Fault("api", Kind.PARTITION, source="web"), "partition", "web -> api"),
        (Fault("api", Kind.ABORT, http_status=503), "abort 503", "* -> api"),
        (Fault("api", Kind.ABORT, grpc_status=14), "abort grpc 14", "* -> api"),
        (Fault("api", Kind.DNS, dns=DnsAnswer.NXDOMAIN), "dns nxdomain", "* -> api"),
        (
            Fault(
                "api",
                Kind.DNS,
                dns=DnsAnswer.DELAY,
                latency_ms=300,
                jitter_ms=20,
                dns_name="api.test.kudos.local",
                source="web",
            ),
            "dns delay 300ms ±20ms",
            "web -> api.test.kudos.local",
        ),
    ],
)
def test_describe_and_scope(fault: Fault, text: str, scope: str) -> None:
    assert fault.describe() == text
    assert fault.scope() == scope


def test_show_ms() -> None:
    assert [show_ms(v) for v in (0, 0.5, 200, 999, 1000, 90_000)] == [
        "0ms",
        "0.5ms",
        "200ms",
        "999ms",
        "1s",
        "90s",
    ]


# -- the JSON form ---------------------------------------------------------------------

_names = st.text(min_size=1, max_size=20)
_ms = st.floats(min_value=0, max_value=600_000, allow_nan=False)
faults = st.builds(
    Fault,
    service=_names,
    kind=st.sampled_from(Kind),
    id=st.text(max_size=10),
    percent=st.floats(min_value=0, max_value=100, allow_nan=False),
    latency_ms=_ms,
    jitter_ms=_ms,
    rate=st.integers(min_value=0, max_value=2**40),
    after_bytes=st.integers(min_value=0, max_value=2**40),
    http_status=st.integers(min_value=0, max_value=599),
    grpc_status=st.integers(min_value=0, max_value=16),
    dns=st.none() | st.sampled_from(DnsAnswer),
    dns_name=st.text(max_size=30),
    source=st.text(max_size=10),
    replica=st.integers(min_value=0, max_value=10_000),
    seed=st.none() | st.integers(min_value=0, max_value=2**63 - 1),
    declared=st.booleans(),
)


@given(faults)
def test_json_round_trip(fault: Fault) -> None:
    raw = fault.to_json()
    assert Fault.from_json(raw) == fault
    again = Fault.from_json(json.loads(json.dumps(raw)))  # as the link and the API carry it
    assert again == fault and again.kind is fault.kind and again.dns is fault.dns


def test_from_json_ignores_fields_it_does_not_know() -> None:
    raw = Fault("api", Kind.REFUSE, id="x").to_json() | {"from_a_newer_version": 1}
    assert Fault.from_json(raw) == Fault("api", Kind.REFUSE, id="x")


def test_a_partition_cuts_both_ways_and_counts_once() -> None:
    table = FaultTable()
    fault = table.add(Fault("api", Kind.PARTITION, source="web", seed=1))
    (there,) = table.for_client("api", "web")
    (back,) = table.for_client("web", "api")  # api's calls to web's own endpoint
    assert table.for_client("api", "other") == () and table.for_client("web", "other") == ()
    assert (back.fault.service, back.fault.source) == ("web", "api")
    assert FaultTable.hit((there,), 1) and FaultTable.hit((back,), 3)
    active = table.get(fault.id)
    assert active is not None and (active.seen, active.hits) == (2, 2)
    assert [f.id for f in table.faults()] == [fault.id]  # listed once


def test_a_partition_on_one_replica_cuts_one_way_only() -> None:
    table = FaultTable()
    table.add(Fault("api", Kind.PARTITION, source="web", replica=2))
    assert len(table.for_client("api", "web")) == 1
    assert table.for_client("web", "api") == ()


# -- draws per call, hits when applied (the proxy's `faultio`) ----------------------


def test_a_retry_keeps_unscoped_draws_and_draws_a_replica_fault_anew() -> None:
    from meshlocal.proxy import faultio
    from meshlocal.registry import ReplicaRegistry

    table = FaultTable()
    everyone = table.add(Fault("api", Kind.REFUSE, percent=50, seed=2))
    second = table.add(Fault("api", Kind.REFUSE, replica=2))
    registry = ReplicaRegistry()
    draws = faultio.Draws()
    first = faultio.decide(table, registry, "api", "10.0.0.1", 1, draws)
    again = faultio.decide(table, registry, "api", "10.0.0.1", 2, draws)
    a, b = table.get(everyone.id), table.get(second.id)
    assert a is not None and b is not None
    assert (a.seen, b.seen) == (1, 1)  # the unscoped one drawn once, for both attempts
    assert (first is not None) == (again is not None and a in again.refuse)
    assert again is not None and b in again.refuse
    assert (a.hits, b.hits) == (0, 0)  # decided, not yet applied


def test_dispatch_counts_only_what_it_acts_out() -> None:
    from meshlocal.proxy import faultio

    table = FaultTable()
    ids = [
        table.add(Fault("api", Kind.REFUSE)).id,
        table.add(Fault("api", Kind.LATENCY, latency_ms=5)).id,
        table.add(Fault("api", Kind.ABORT, http_status=503)).id,
    ]
    actives = [table.get(i) for i in ids]
    done: list[str] = []

    def hold(seconds: float, then: Callable[[], None]) -> None:
        done.append("hold")
        then()

    def run(hits: list[Active | None]) -> None:
        draws = faultio.Draws()
        faultio.dispatch(
            faultio.plan(a for a in hits if a is not None),
            draws,
            timeout=1,
            hold=hold,
            refused=lambda: done.append("refused"),
            reset=lambda: done.append("reset"),
            go=lambda p: done.append("go"),
            abort=lambda a: done.append("abort"),
        )

    run(actives)
    assert done == ["refused"]
    assert [a.hits if a else -1 for a in actives] == [1, 0, 0]
    run(actives[1:])
    assert done == ["refused", "hold", "abort"]  # Istio: the delay, then the abort
    assert [a.hits if a else -1 for a in actives] == [1, 1, 1]


def test_a_partitions_mirror_draws_and_counts_on_the_partition() -> None:
    table = FaultTable()
    fault = table.add(Fault("api", Kind.PARTITION, source="web"))
    (back,) = table.for_client("web", "api")
    assert back.draw()
    back.count()
    active = table.get(fault.id)
    assert active is not None and (active.seen, active.hits) == (1, 1)
