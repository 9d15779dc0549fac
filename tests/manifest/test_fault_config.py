"""Faults declared in copilot/.meshlocal.yml: read with ids, checked with file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshlocal.cli.app import main
from meshlocal.errors import Location, ManifestError
from meshlocal.faults import DnsAnswer, Kind
from meshlocal.manifest import check, find_workspace
from meshlocal.manifest.codec import dump_spec, load_spec

from .conftest import MakeWorkspace

API = """\
name: api
type: Backend Service
image:
  location: busybox:latest
  port: 80
network:
  connect: true
"""
FRONT = "name: front\ntype: Backend Service\nimage:\n  location: busybox:latest\n"
WORKER = "name: jobs\ntype: Worker Service\nimage:\n  location: busybox:latest\n"


def make(make_ws: MakeWorkspace, faults: str, *, head: str = "") -> Path:
    config = head + "environments:\n  test:\n    faults:\n" + faults
    return make_ws(
        {"api": API, "front": FRONT + "network:\n  connect: true\n", "jobs": WORKER},
        files={"copilot/.meshlocal.yml": config},
    )


def test_declared_faults_are_read_with_ids_and_lines(make_ws: MakeWorkspace) -> None:
    root = make(
        make_ws,
        "      - {service: api, latency: 200ms, jitter: 50ms, percent: 30, from: front}\n"
        "      - service: api\n"
        "        id: Down\n"
        "        abort: 503\n"
        "        seed: 7\n"
        "      - {service: api, latency: 1s}\n"
        "      - {service: api, dns: delay, latency: 300ms}\n"
        "      - {service: api, reset_after: 1024, replica: 2}\n",
        head="services: {api: {app_protocol: http}}\n",
    )
    env = find_workspace(root).environments["test"]
    got = [(d.fault.id, d.fault.kind, d.fault.declared) for d in env.faults]
    assert got == [
        ("api-latency-1", Kind.LATENCY, True),
        ("down", Kind.ABORT, True),
        ("api-latency-2", Kind.LATENCY, True),
        ("api-dns-1", Kind.DNS, True),
        ("api-reset-1", Kind.RESET, True),
    ]
    config = root / "copilot" / ".meshlocal.yml"
    assert [d.location for d in env.faults] == [Location(config, n, 9) for n in (5, 6, 10, 11, 12)]
    first, down, _, dns, reset = (d.fault for d in env.faults)
    assert (first.latency_ms, first.jitter_ms, first.percent, first.source) == (
        200,
        50,
        30,
        "front",
    )
    assert (down.http_status, down.seed) == (503, 7)
    assert (dns.dns, dns.latency_ms) == (DnsAnswer.DELAY, 300)
    assert (reset.after_bytes, reset.replica) == (1024, 2)
    rep = check(root, "test", {})
    assert rep.ok, [e.render() for e in rep.errors]
    # They travel with the spec (the controller's configuration, then the data plane's).
    spec = load_spec(dump_spec(rep.spec))
    assert spec.environment.faults == rep.spec.environment.faults


def test_an_environment_without_a_manifest_carries_its_faults(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {"api": API},
        envs=(),
        files={
            "copilot/.meshlocal.yml": "environments:\n  dev:\n"
            "    faults: [{service: api, refuse: true}]\n"
        },
    )
    (declared,) = find_workspace(root).environments["dev"].faults
    assert declared.fault.id == "api-refuse-1" and declared.fault.kind is Kind.REFUSE


@pytest.mark.parametrize(
    ("faults", "line", "says"),
    [
        ("      - {service: api, latency: -5ms}\n", 4, "latency can't be negative"),
        (
            "      - {service: api, refuse: true, percent: 150}\n",
            4,
            "percent must be between 0 and 100",
        ),
        ("      - {service: api}\n", 4, "the fault on api says nothing to inject"),
        ("      - {service: api, lag: 1s}\n", 4, "unknown fault field 'lag'"),
        (
            "      - {service: api, latency: [1, 2]}\n",
            4,
            "fault field latency must be a single value",
        ),
        (
            "      - service: api\n        refuse: true\n        latency: 1s\n",
            4,
            "one fault injects one thing",
        ),
        (
            "      - {service: api, refuse: true, id: x}\n"
            "      - {service: api, reset: true, id: x}\n",
            5,
            'two faults have the id "x"',
        ),
        ("      - just-a-string\n", 4, "a fault must be a mapping of fields"),
        ("      {service: api}\n", 4, "faults must be a list of faults"),
    ],
)
def test_a_malformed_fault_is_an_error_at_its_line(
    make_ws: MakeWorkspace, faults: str, line: int, says: str
) -> None:
    root = make(make_ws, faults)
    with pytest.raises(ManifestError) as info:
        find_workspace(root)
    err = info.value
    assert says in err.message, err.render()
    assert err.location is not None and err.location.line == line, err.render()
    assert err.location.path == root / "copilot" / ".meshlocal.yml"


@pytest.mark.parametrize(
    ("fault", "says"),
    [
        (
            "{service: nope, latency: 1s}",
            "fault nope-latency-1: no service 'nope' in this environment",
        ),
        ("{service: api, abort: 503}", "api's Service Connect endpoint proxies TCP"),
        ("{service: api, partition: true}", "a partition is between two services"),
        ("{service: api, refuse: true, from: jobs}", "jobs is no Service Connect client"),
        ("{service: jobs, latency: 1s}", "service jobs has no Service Connect endpoint"),
        ("{service: jobs, dns: nxdomain}", "service jobs has no Service Discovery name"),
    ],
)
def test_a_fault_the_workspace_cannot_take_is_a_validate_error_at_its_line(
    make_ws: MakeWorkspace, fault: str, says: str
) -> None:
    root = make(make_ws, f"      - {{service: api, refuse: true}}\n      - {fault}\n")
    rep = check(root, "test", {})
    (error,) = rep.errors
    assert says in error.message, error.render()
    assert error.location == Location(root / "copilot" / ".meshlocal.yml", 5, 9)


def test_faults_of_another_environment_are_not_checked(make_ws: MakeWorkspace) -> None:
    root = make_ws(
        {"api": API},
        envs=("test", "prod"),
        files={
            "copilot/.meshlocal.yml": "environments:\n  prod:\n"
            "    faults: [{service: nope, refuse: true}]\n"
        },
    )
    assert check(root, "test", {}).ok
    assert not check(root, "prod", {}).ok


def test_meshlocal_validate_reports_it_with_file_and_line(
    make_ws: MakeWorkspace, capsys: pytest.CaptureFixture[str]
) -> None:
    root = make(make_ws, "      - {service: api, abort: 503}\n")
    assert main(["-C", str(root), "validate"]) == 1
    err = capsys.readouterr().err
    assert f"{root / 'copilot' / '.meshlocal.yml'}:4:9: error: fault api-abort-1:" in err, err
    assert "Traceback" not in err


def test_up_of_some_services_does_not_judge_faults_on_the_others(make_ws: MakeWorkspace) -> None:
    root = make(make_ws, "      - {service: api, refuse: true, from: front}\n")
    assert check(root, "test", {}, services=["api"]).ok
