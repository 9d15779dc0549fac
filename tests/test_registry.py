"""The replica registry: indexes, versioning and change notification (pure)."""

from __future__ import annotations

from meshlocal.registry import Health, Replica, ReplicaRegistry


def rep(cid: str, index: int, address: str, service: str = "api", **kw: object) -> Replica:
    return Replica(service, index, cid, address, 80, **kw)  # type: ignore[arg-type]


def test_upsert_indexes_and_orders() -> None:
    reg = ReplicaRegistry()
    reg.upsert(rep("b", 2, "10.0.0.3"))
    reg.upsert(rep("a", 1, "10.0.0.2"))
    reg.upsert(rep("w", 1, "10.0.0.9", service="web"))
    assert [r.name for r in reg.for_service("api")] == ["api-1", "api-2"]
    assert reg.by_address("10.0.0.9") is not None and reg.by_address("10.0.0.9").service == "web"
    assert reg.by_address("10.0.0.99") is None


def test_version_bumps_only_on_real_change() -> None:
    reg = ReplicaRegistry()
    reg.upsert(rep("a", 1, "10.0.0.2"))
    v = reg.version
    reg.upsert(rep("a", 1, "10.0.0.2"))
    assert reg.version == v
    reg.set_health("a", Health.UNHEALTHY)
    assert reg.version == v + 1
    assert reg.in_rotation("api") == []


def test_address_reuse_after_replacement() -> None:
    reg = ReplicaRegistry()
    reg.upsert(rep("old", 1, "10.0.0.2"))
    reg.upsert(rep("new", 1, "10.0.0.2"))  # Docker may hand the IP to the replacement
    reg.remove("old")
    found = reg.by_address("10.0.0.2")
    assert found is not None and found.container_id == "new"


def test_readdress_moves_index() -> None:
    reg = ReplicaRegistry()
    reg.upsert(rep("a", 1, "10.0.0.2"))
    reg.upsert(rep("a", 1, "10.0.0.5"))
    assert reg.by_address("10.0.0.2") is None
    assert reg.by_address("10.0.0.5") is not None


def test_draining_leaves_rotation_and_listeners_see_before_after() -> None:
    reg = ReplicaRegistry()
    seen: list[tuple[str | None, str | None]] = []
    unsubscribe = reg.subscribe(
        lambda before, after: seen.append(
            (before.name if before else None, after.name if after else None)
        )
    )
    reg.upsert(rep("a", 1, "10.0.0.2"))
    reg.set_draining("a")
    assert reg.in_rotation("api") == []
    reg.remove("a")
    unsubscribe()
    reg.upsert(rep("b", 2, "10.0.0.3"))
    assert seen == [(None, "api-1"), ("api-1", "api-1"), ("api-1", None)]


def test_sc_view_survives_health_changes_and_a_new_view_is_a_change() -> None:
    reg = ReplicaRegistry()
    view = frozenset({"api", "frontend.local"})
    reg.upsert(rep("a", 1, "10.0.0.2", service="web", sc_view=view))
    reg.set_health("a", Health.UNHEALTHY)
    reg.set_draining("a")
    found = reg.by_address("10.0.0.2")
    assert found is not None and found.sc_view == view
    v = reg.version
    reg.upsert(
        rep("a", 1, "10.0.0.2", service="web", sc_view=view, health=Health.UNHEALTHY, draining=True)
    )
    assert reg.version == v  # same replica, same view: no change
    reg.upsert(rep("b", 2, "10.0.0.3", service="web"))
    b = reg.get("b")
    assert b is not None and b.sc_view is None  # default: every current endpoint
