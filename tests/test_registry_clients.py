"""Client-only members (`meshlocal run` one-offs): known to DNS by address, never replicas."""

from __future__ import annotations

from meshlocal.registry import Replica, ReplicaRegistry


def _member(cid: str, address: str, service: str = "web", index: int = 0) -> Replica:
    return Replica(service, index, cid, address, None, sc_view=frozenset({"api"}))


def test_a_client_is_found_by_address_and_is_no_replica() -> None:
    registry = ReplicaRegistry()
    heard: list[object] = []
    registry.subscribe(lambda before, after: heard.append((before, after)))
    pinged: list[None] = []
    registry.subscribe_clients(lambda: pinged.append(None))
    version = registry.version
    registry.add_client(_member("c1", "10.0.0.9"))
    found = registry.by_address("10.0.0.9")
    assert found is not None and found.service == "web" and found.sc_view == {"api"}
    assert registry.version > version  # DNS drops its per-client caches
    assert registry.all() == [] and registry.for_service("web") == []
    assert registry.in_rotation("web") == [] and registry.get("c1") is None
    assert heard == []  # balancers and health checks never hear of it
    assert len(pinged) == 1 and [c.container_id for c in registry.clients()] == ["c1"]
    assert registry.remove_client("c1") is not None
    assert registry.by_address("10.0.0.9") is None and len(pinged) == 2
    assert registry.remove_client("c1") is None


def test_a_replica_wins_its_address_and_an_unchanged_set_changes_nothing() -> None:
    registry = ReplicaRegistry()
    registry.upsert(_member("r1", "10.0.0.5", "api", 1))
    registry.set_clients([_member("c1", "10.0.0.5")])
    found = registry.by_address("10.0.0.5")
    assert found is not None and found.container_id == "r1"
    version = registry.version
    registry.set_clients([_member("c1", "10.0.0.5")])
    assert registry.version == version
