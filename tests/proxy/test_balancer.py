"""The pure balancer: rotation, ejection, drain accounting (fake clock)."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from meshlocal.proxy.balancer import Balancer
from meshlocal.registry import Health, Replica, ReplicaRegistry


def registry_with(k: int, service: str = "api") -> ReplicaRegistry:
    reg = ReplicaRegistry()
    for i in range(1, k + 1):
        reg.upsert(Replica(service, i, f"c{i}", f"10.0.0.{i}", 80))
    return reg


@given(st.integers(1, 12), st.integers(0, 200))
def test_n_requests_over_k_replicas_spread_within_one(k: int, n: int) -> None:
    balancer = Balancer(registry_with(k))
    counts = Counter(balancer.pick("api").container_id for _ in range(n))  # type: ignore[union-attr]
    values = [counts.get(f"c{i}", 0) for i in range(1, k + 1)]
    assert sum(values) == n
    assert max(values) - min(values) <= 1


def test_draining_and_unhealthy_get_no_new_requests() -> None:
    reg = registry_with(3)
    balancer = Balancer(reg)
    reg.set_draining("c1")
    reg.set_health("c2", Health.UNHEALTHY)
    assert {balancer.pick("api").container_id for _ in range(6)} == {"c3"}  # type: ignore[union-attr]


def test_ejection_time_grows_with_ejections_and_is_capped() -> None:
    now = [0.0]
    reg = registry_with(2)
    balancer = Balancer(reg, base_ejection_s=30, max_ejection_s=300, clock=lambda: now[0])
    r1 = reg.get("c1")
    assert r1 is not None
    for expected in (30, 60, 90, 120):
        for i in range(5):
            ejected = balancer.record(r1, True)
            assert ejected == (i == 4)
        assert balancer.is_ejected(r1)
        now[0] += expected - 0.001
        assert balancer.is_ejected(r1)
        now[0] += 0.002
        assert not balancer.is_ejected(r1)
    for _ in range(20):  # up to 12 ejections: capped at 300 s
        for _ in range(5):
            balancer.record(r1, True)
        now[0] += 300.001
    assert not balancer.is_ejected(r1)


def test_never_ejects_the_last_available() -> None:
    reg = registry_with(2)
    balancer = Balancer(reg, clock=lambda: 0.0)
    r1, r2 = reg.get("c1"), reg.get("c2")
    assert r1 is not None and r2 is not None
    for _ in range(5):
        balancer.record(r1, True)
    assert balancer.is_ejected(r1)
    for _ in range(10):
        assert balancer.record(r2, True) is False
    assert not balancer.is_ejected(r2)


def test_panic_routes_to_ejected_when_nothing_else_is_in_rotation() -> None:
    reg = registry_with(2)
    balancer = Balancer(reg, clock=lambda: 0.0)
    r1 = reg.get("c1")
    assert r1 is not None
    for _ in range(5):
        balancer.record(r1, True)
    reg.set_health("c2", Health.UNHEALTHY)
    assert balancer.pick("api") == reg.get("c1")


def test_retry_excludes_tried_replicas() -> None:
    balancer = Balancer(registry_with(3))
    assert balancer.pick("api", ["c1", "c2"]).container_id == "c3"  # type: ignore[union-attr]
    assert balancer.pick("api", ["c1", "c2", "c3"]) is None


def test_in_flight_counts() -> None:
    reg = registry_with(1)
    balancer = Balancer(reg)
    r = reg.get("c1")
    assert r is not None
    balancer.begin(r)
    balancer.begin(r)
    balancer.end(r)
    assert balancer.in_flight("c1") == 1
    balancer.end(r)
    assert balancer.in_flight("c1") == 0
