"""compose-examples/alias-migration: the one-command demo, run the way a person runs it."""

from __future__ import annotations

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
    assert len(s["resolved"]["answers"]) == 2
    assert {c["route"] for c in s["calls"]} == {"direct"}
    assert all(c["proxy_replica_header"] is None for c in s["calls"])
    assert {c["replica"] for c in s["calls"]} <= {"api-1", "api-2"}
    assert s["api_request_count_after"] == s["api_request_count_before"]


def test_step_3_same_url_goes_through_the_proxy(demo: dict[str, Any]) -> None:
    s = step(demo, 3)
    assert s["resolved"]["meaning"].startswith("service-connect")
    assert len(s["resolved"]["answers"]) == 1
    assert {c["url"] for c in s["calls"]} == {"http://api.test.kudos.local/"}
    assert {c["route"] for c in s["calls"]} == {"service-connect"}
    # Strict round robin: 4 calls over 2 replicas, 2 each.
    replicas = [c["proxy_replica_header"] for c in s["calls"]]
    assert sorted(replicas) == ["api-1", "api-1", "api-2", "api-2"]
    assert s["api_request_count_after"] - s["api_request_count_before"] == 4


def test_the_url_never_changes(demo: dict[str, Any]) -> None:
    urls = {c["url"] for s in demo["steps"] for c in s["calls"]}
    assert urls == {"http://api.test.kudos.local/"}


def test_a_person_sees_each_step(demo: dict[str, Any]) -> None:
    text = demo["stdout"]
    for n in (1, 2, 3):
        assert f"=== Step {n}:" in text
    assert "route: direct" in text
    assert "route: service-connect (x-meshlocal-replica: api-" in text
    assert "RequestCount for api went" in text
    assert "$ meshlocal down" in text
