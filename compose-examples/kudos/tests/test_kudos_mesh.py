"""The kudos example under test, written the way a user of the plugin would.

One mesh for the whole session (the `mesh` fixture): front-end (2 replicas,
a Load Balanced Web Service published on 127.0.0.1) and api (3 replicas,
reached over Service Connect as http://api/ and over Service Discovery as
http://api.test.kudos.local/). The front-end's /api/calls?n=N calls the api
N times each way and says which api replica answered each call.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from meshlocal.testing import Mesh


def api_calls(mesh: Mesh, n: int) -> dict[str, Any]:
    response = mesh.get("front-end", f"/api/calls?n={n}")
    assert response.status == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def replica_of(hostname: str) -> str:
    """`kudos-1a2b3c4d-test-api-2` (a replica's hostname) -> `api-2`."""
    return "api-" + hostname.rsplit("-", 1)[1]


def test_front_end_is_published_on_the_host(mesh: Mesh) -> None:
    assert mesh.url("front-end").startswith("http://127.0.0.1:")
    page = mesh.get("front-end", "/")
    assert page.status == 200
    assert "kudos" in page.text


def test_round_robin_over_service_connect(mesh: Mesh) -> None:
    api = [r.name for r in mesh.replicas("api") if r.in_rotation]
    assert len(api) == 3

    calls = api_calls(mesh, 30)["service-connect"]

    assert all(c["ok"] for c in calls), [c for c in calls if not c["ok"]]
    spread = Counter(replica_of(c["replica"]) for c in calls)
    assert set(spread) == set(api)
    # Strict round robin, one client: 10 each (1 of slack for a concurrent probe).
    assert max(spread.values()) - min(spread.values()) <= 1, spread


def test_service_discovery_reaches_every_replica_directly(mesh: Mesh) -> None:
    addresses = {r.address for r in mesh.replicas("api")}
    calls = api_calls(mesh, 10)["service-discovery"]
    assert all(c["ok"] for c in calls), calls
    # Straight to a replica's own address, not through the proxy: 10 random
    # picks of 3 records miss one replica with probability 3 * (2/3)^10 (5 %),
    # so call until every replica answered (bounded).
    seen = {c["address"] for c in calls}
    for _ in range(10):
        if seen == addresses:
            break
        more = api_calls(mesh, 10)["service-discovery"]
        assert all(c["ok"] for c in more), more
        seen |= {c["address"] for c in more}
    assert seen == addresses


def test_names_resolve_as_in_ecs(mesh: Mesh) -> None:
    endpoint = mesh.resolve("api", from_="front-end")
    vip = mesh.state()["services"]["api"]["connect"]["vip"]
    assert endpoint.answers == (vip,)
    assert vip != mesh.state()["address"]  # its own address, not the data plane's

    discovery = mesh.resolve("api.test.kudos.local", from_="front-end")
    assert set(discovery.answers) == {r.address for r in mesh.replicas("api")}


def test_exec_sees_the_copilot_variables(mesh: Mesh) -> None:
    result = mesh.exec("front-end", "echo $COPILOT_SERVICE_DISCOVERY_ENDPOINT")
    assert result.ok, result.output
    assert result.output.strip() == "test.kudos.local"


def test_stats_count_service_connect_requests(mesh: Mesh) -> None:
    before = mesh.stats("api").request_count
    api_calls(mesh, 5)
    after = mesh.stats("api")
    assert after.request_count - before == 5
    assert after.http_5xx == 0


def test_killed_api_replica_does_not_fail_front_end_requests(mesh: Mesh) -> None:
    victim = mesh.kill("api", 2)

    # The first retry window: until the mesh took the dead replica out of rotation.
    mesh.wait_until(
        lambda: victim.container_id not in {r.container_id for r in mesh.replicas("api")},
        timeout=10,
        message="the killed replica to leave the rotation",
    )

    failures: list[dict[str, Any]] = []
    answered: Counter[str] = Counter()
    deadline = time.monotonic() + 8
    rounds = 0
    while time.monotonic() < deadline and rounds < 40:
        rounds += 1
        for call in api_calls(mesh, 5)["service-connect"]:
            if call["ok"]:
                answered[replica_of(call["replica"])] += 1
            else:
                failures.append(call)
    assert rounds >= 2
    assert failures == []
    assert sum(answered.values()) == rounds * 5

    # The mesh replaces the replica by itself, like ECS: back to three.
    replaced = mesh.wait_replicas("api", 3, timeout=60)
    assert victim.container_id not in {r.container_id for r in replaced}
