"""`mesh.fault(...)` in a user's pytest session: the fault is in force inside the
`with` block, counted, and gone after it, also when the test fails inside it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from meshlocal.testfaults import fault_fields

from .test_sessions import DATAPLANE, FAST

# Inner tests, in order, on one session mesh of the tiny workspace
# (api: an http endpoint with 2 replicas; web: its client, with busybox wget).
INNER = """
import pytest
from meshlocal.faults import expected_hits
from meshlocal.testing import FaultError

WGET = "timeout 10 wget -q -O - http://api/"  # not -T: it segfaults in this busybox


def call(mesh):
    return mesh.exec("web", WGET)


def test_a_fault_hits_and_is_removed_when_the_body_fails(mesh):
    open("project.txt", "w").write(mesh.project)
    assert call(mesh).ok
    with mesh.fault("api", abort=503, from_="web", id="down") as fault:
        assert fault.id == "down"
        assert fault.fault["http_status"] == 503 and fault.fault["source"] == "web"
        assert [f["id"] for f in mesh.faults()] == ["down"]
        failed = call(mesh)
        assert not failed.ok and "503" in failed.output, failed.output
        assert (fault.hits(), fault.seen()) == (1, 1)
        raise AssertionError("boom in the body")


def test_the_next_test_finds_no_fault_and_traffic_flows(mesh):
    assert mesh.faults() == []
    assert call(mesh).ok


def test_a_seeded_percentage_hits_exactly_the_expected_calls(mesh):
    n = 20
    with mesh.fault("api", abort=500, percent=50, seed=7) as fault:
        failures = sum(not call(mesh).ok for _ in range(n))
        assert failures == expected_hits(50, 7, n)
        assert (fault.hits(), fault.seen()) == (failures, n)
    assert mesh.faults() == []


def test_bad_input_raises_and_changes_nothing(mesh):
    with pytest.raises(FaultError, match="percent must be between 0 and 100"):
        mesh.fault("api", abort=503, percent=150)
    with pytest.raises(FaultError, match="no service 'nope'"):
        with mesh.fault("nope", abort=503):
            raise AssertionError("never entered")
    with pytest.raises(FaultError, match="abort with an HTTP status"):
        with mesh.fault("api", grpc_status=14):
            raise AssertionError("never entered")
    assert mesh.faults() == []


def test_clear_faults_and_a_handle_whose_fault_is_gone(mesh):
    with mesh.fault("api", latency="10ms") as slow, mesh.fault("api", refuse=True, from_="web"):
        assert len(mesh.faults()) == 2
        removed = mesh.clear_faults()
        assert slow.id in [f["id"] for f in removed] and len(removed) == 2
        with pytest.raises(FaultError, match="no longer active"):
            slow.hits()
        assert call(mesh).ok
    assert mesh.faults() == []
"""


@pytest.mark.docker
@pytest.mark.slow
def test_mesh_fault_in_a_pytest_session(
    pytester: pytest.Pytester, tiny: Path, leftovers: Callable[[str], list[str]]
) -> None:
    pytester.makepyfile(test_inner=INNER)
    result = pytester.runpytest_subprocess(
        *FAST,
        "-v",
        DATAPLANE,
        f"--meshlocal-workspace={tiny}",
        "--meshlocal-env=test",
        timeout=400,
    )
    result.stdout.fnmatch_lines(
        [
            "*test_a_fault_hits_and_is_removed_when_the_body_fails FAILED*",
            "*test_the_next_test_finds_no_fault_and_traffic_flows PASSED*",
        ]
    )
    # It failed where it was meant to: after the fault hit and was counted.
    result.stdout.fnmatch_lines(["E*AssertionError: boom in the body"])
    result.assert_outcomes(passed=4, failed=1)
    assert leftovers((pytester.path / "project.txt").read_text()) == []


def test_python_spellings_become_the_admin_fields() -> None:
    from datetime import timedelta

    fields = fault_fields(
        "api",
        {
            "latency": timedelta(milliseconds=250),
            "jitter": 20,
            "from_": "web",
            "percent": 30,
            "refuse": False,  # a flag left out
            "replica": None,
        },
    )
    assert fields == {
        "service": "api",
        "latency": 250.0,
        "jitter": 20,
        "from": "web",
        "percent": 30,
    }
