"""compose-examples/alias-migration: the one-command demo, run the way a person runs it."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import EXAMPLES

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def demo(docker_client: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("alias-migration") / "result.json"
    proc = subprocess.run(
        [str(EXAMPLES / "alias-migration" / "run.sh"), "--json", str(out), "--calls", "4"],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "MESHLOCAL_VENV": str(Path(sys.executable).parents[1])},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result: dict[str, Any] = json.loads(out.read_text())
    result["stdout"] = proc.stdout
    return result


def step(demo: dict[str, Any], n: int) -> dict[str, Any]:
    found: dict[str, Any] = demo["steps"][n - 1]
    assert found["step"] == n
    return found


@pytest.mark.parametrize("n", [1, 2])
def test_before_front_end_connects_calls_go_straight_to_replicas(
    demo: dict[str, Any], n: int
) -> None:
    s = step(demo, n)
    assert s["resolved"]["rcode"] == "NOERROR"
    assert s["resolved"]["meaning"].startswith("service discovery")
    replica_addresses = set(s["resolved"]["answers"])
    assert len(replica_addresses) == 2
    assert {c["route"] for c in s["calls"]} == {"direct"}
    assert all(c["mode"] is None and c["proxy_replica_header"] is None for c in s["calls"])
    # Straight to a replica: front-end dialled one of the replicas' addresses,
    # on api's port, and the replica saw front-end itself as its peer.
    assert {c["dialled"].rsplit(":", 1)[0] for c in s["calls"]} <= replica_addresses
    assert {c["dialled"].rsplit(":", 1)[1] for c in s["calls"]} == {"80"}
    assert all(c["peer"] == c["source"] for c in s["calls"]), s["calls"]
    assert {c["replica"] for c in s["calls"]} <= {"api-1", "api-2"}
    assert s["api_new_connections_after"] == s["api_new_connections_before"]


def test_step_3_same_url_goes_through_service_connect_in_tcp_mode(demo: dict[str, Any]) -> None:
    s = step(demo, 3)
    assert s["resolved"]["meaning"] == (
        "service connect endpoint api.test.kudos.local:80 of api, tcp"
    )
    (vip,) = s["resolved"]["answers"]
    assert {c["url"] for c in s["calls"]} == {"http://api.test.kudos.local/"}
    assert {c["dialled"] for c in s["calls"]} == {f"{vip}:80"}
    assert {c["route"] for c in s["calls"]} == {"service-connect"}
    # Copilot's default: TCP mode, bytes untouched, so no proxy header, and the
    # replica saw the proxy, not front-end.
    assert {c["mode"] for c in s["calls"]} == {"tcp"}
    assert all(c["proxy_replica_header"] is None for c in s["calls"])
    assert all(c["peer"] != c["source"] for c in s["calls"]), s["calls"]
    # Strict round robin per connection: each call is a new connection from
    # front-end's one replica, so 4 calls over 2 replicas are 2 each, alternating.
    replicas = [c["replica"] for c in s["calls"]]
    assert sorted(replicas) == ["api-1", "api-1", "api-2", "api-2"]
    assert all(a != b for a, b in itertools.pairwise(replicas)), replicas
    assert s["api_new_connections_after"] - s["api_new_connections_before"] == 4
    assert s["api_stats_after"].get("RequestCount", 0) == 0


def test_the_url_never_changes(demo: dict[str, Any]) -> None:
    urls = {c["url"] for s in demo["steps"] for c in s["calls"]}
    assert urls == {"http://api.test.kudos.local/"}


def test_a_person_sees_each_step(demo: dict[str, Any]) -> None:
    text = demo["stdout"]
    for n in (1, 2, 3):
        assert f"=== Step {n}:" in text
    assert "route: direct (dialled " in text
    assert "route: service-connect, tcp (dialled " in text
    meaning = "service connect endpoint api.test.kudos.local:80 of api, tcp"
    assert f"({meaning}, from front-end-1)" in text
    assert "NewConnectionCount for api went" in text
    assert "x-meshlocal-replica" not in text
    assert "$ meshlocal down" in text
