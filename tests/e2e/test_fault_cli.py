"""`meshlocal fault add/ls/rm`, and the faults `ps` and `stats` show, on a real mesh.

One mesh of the mini workspace for the module (api: a TCP Service Connect
endpoint with 3 replicas; client and web: Service Connect clients; legacy:
not one); each test starts with no fault.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    ZERO,
    container_of,
    copy_workspace,
    counts,
    failed,
    labelled,
    ok,
    project_of,
    run_cli,
    sh,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

# One connection through the proxy; bounded by `timeout` (this busybox wget -T segfaults).
WGET = "timeout 10 wget -q -O - http://api/"


@pytest.fixture(scope="module")
def mini(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> Iterator[Path]:
    ws = copy_workspace(tmp_path_factory, "mini")
    try:
        ok(run_cli(ws, "up", "-d", timeout=300))
        yield ws
    finally:
        run_cli(ws, "down", "--rmi")
    assert counts(labelled(docker_client, project_of(ws))) == ZERO


@pytest.fixture
def ws(mini: Path) -> Path:
    ok(run_cli(mini, "fault", "rm", "--all"))
    return mini


def listed(ws: Path) -> list[dict[str, Any]]:
    faults: list[dict[str, Any]] = json.loads(ok(run_cli(ws, "fault", "ls", "--json")).stdout)
    return faults


def call_from(docker_client: Any, ws: Path, service: str) -> tuple[int, str]:
    return sh(docker_client, container_of(docker_client, project_of(ws), service), WGET)


def test_add_shows_in_ls_ps_and_stats(ws: Path) -> None:
    added = ok(
        run_cli(
            ws,
            *("fault", "add", "api", "--latency", "200ms", "--jitter", "50ms"),
            *("--percent", "30", "--from", "client", "--seed", "7", "--replica", "2"),
        )
    )
    (doc,) = listed(ws)
    ident = doc["id"]
    assert added.stdout.strip() == (f"added {ident}: client -> api-2, latency 200ms ±50ms (30%)")
    assert {k: doc[k] for k in ("service", "kind", "latency_ms", "jitter_ms", "percent")} == {
        "service": "api",
        "kind": "latency",
        "latency_ms": 200,
        "jitter_ms": 50,
        "percent": 30,
    }
    assert (doc["source"], doc["replica"], doc["seed"], doc["declared"]) == ("client", 2, 7, False)
    assert (doc["seen"], doc["hits"]) == (0, 0)

    table = ok(run_cli(ws, "fault", "ls")).stdout
    for column in ("ID", "SCOPE", "FAULT", "DECLARED", "HITS/SEEN"):
        assert column in table
    row = next(line for line in table.splitlines() if ident in line)
    for cell in ("client -> api-2", "latency 200ms ±50ms (30%)", "no", "0/0"):
        assert cell in row, table

    ps = ok(run_cli(ws, "ps")).stdout
    assert "faults:" in ps
    assert f"  {ident}: client -> api-2, latency 200ms ±50ms (30%); hit 0 of 0" in ps
    state = json.loads(ok(run_cli(ws, "ps", "--json")).stdout)
    assert [f["id"] for f in state["faults"]] == [ident]

    stats = ok(run_cli(ws, "stats")).stdout
    assert "Faults" in stats and "client -> api-2" in stats
    doc_stats = json.loads(ok(run_cli(ws, "stats", "--json")).stdout)
    assert [(f["id"], f["hits"], f["seen"]) for f in doc_stats["injected_faults"]] == [
        (ident, 0, 0)
    ]

    as_json = json.loads(
        ok(run_cli(ws, "fault", "add", "api", "--reset-after", "100", "--id", "j", "--json")).stdout
    )
    assert (as_json["id"], as_json["kind"], as_json["after_bytes"]) == ("j", "reset", 100)
    assert as_json["description"] == "reset after 100 B"
    assert [f["id"] for f in listed(ws)] == [ident, "j"]


def test_hits_counted_per_client_and_removal_restores_traffic(ws: Path, docker_client: Any) -> None:
    assert call_from(docker_client, ws, "client")[0] == 0
    ok(run_cli(ws, "fault", "add", "api", "--refuse", "--from", "client", "--id", "cut"))
    code, output = call_from(docker_client, ws, "client")
    assert code != 0, output  # refused: the client sees the connection fail
    # Another client is not affected, nor counted.
    code, output = call_from(docker_client, ws, "web")
    assert code == 0, output
    (doc,) = listed(ws)
    assert (doc["id"], doc["hits"], doc["seen"]) == ("cut", 1, 1)
    assert "1/1" in ok(run_cli(ws, "fault", "ls")).stdout
    assert "cut: client -> api, refuse; hit 1 of 1" in ok(run_cli(ws, "ps")).stdout

    removed = ok(run_cli(ws, "fault", "rm", "cut")).stdout
    assert removed.strip() == "removed cut: client -> api, refuse; hit 1 of 1"
    code, output = call_from(docker_client, ws, "client")  # at once: no wait
    assert code == 0, output
    assert listed(ws) == []


def test_rm_by_id_all_or_nothing_and_rm_all(ws: Path) -> None:
    ok(run_cli(ws, "fault", "add", "api", "--reset", "--id", "a"))
    ok(run_cli(ws, "fault", "add", "api", "--bandwidth", "64KB/s", "--id", "b"))
    ok(run_cli(ws, "fault", "add", "api", "--latency", "10ms", "--id", "c"))
    assert ok(run_cli(ws, "fault", "rm", "a")).stdout.startswith("removed a: * -> api, reset")
    assert [f["id"] for f in listed(ws)] == ["b", "c"]

    # An unknown id among them: nothing is removed.
    err = failed(run_cli(ws, "fault", "rm", "b", "nope"))
    assert "error: no fault 'nope': nothing removed" in err
    assert "hint: faults: b, c" in err
    assert [f["id"] for f in listed(ws)] == ["b", "c"]

    gone = ok(run_cli(ws, "fault", "rm", "--all")).stdout.splitlines()
    assert [line.split(":")[0] for line in gone] == ["removed b", "removed c"]
    assert listed(ws) == []
    assert ok(run_cli(ws, "fault", "rm", "--all")).stdout.strip() == "no faults to remove"
    assert ok(run_cli(ws, "fault", "ls")).stdout.strip() == "no faults"
    # Neither or both: a usage error.
    assert run_cli(ws, "fault", "rm").returncode == 2
    assert run_cli(ws, "fault", "rm", "b", "--all").returncode == 2


def test_numbers_without_a_unit_read_as_the_docs_say(ws: Path) -> None:
    # KB/s for a rate and milliseconds for a duration, as in copilot/.meshlocal.yml.
    bw = ok(run_cli(ws, "fault", "add", "api", "--bandwidth", "64", "--id", "bw"))
    lat = ok(run_cli(ws, "fault", "add", "api", "--latency", "200", "--jitter", "1.5"))
    faults = {f["kind"]: f for f in listed(ws)}
    assert faults["bandwidth"]["rate"] == 64_000, bw.stdout
    assert (faults["latency"]["latency_ms"], faults["latency"]["jitter_ms"]) == (200, 1.5)
    assert "bandwidth 64KB/s" in bw.stdout and "latency 200ms" in lat.stdout


def test_a_replica_above_the_count_is_added_with_a_warning(ws: Path) -> None:
    above = ok(run_cli(ws, "fault", "add", "api", "--refuse", "--replica", "5", "--id", "r5"))
    assert above.stdout.strip() == "added r5: * -> api-5, refuse"
    assert above.stderr.strip() == (
        "warning: api runs 3 replicas: replica 5 gets no calls until api is scaled up to 5"
    )
    assert [f["id"] for f in listed(ws)] == ["r5"]  # still added: a scale-up may come
    within = ok(run_cli(ws, "fault", "add", "api", "--refuse", "--replica", "3", "--json"))
    assert "warning" not in within.stderr and json.loads(within.stdout)["replica"] == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope", "--latency", "10ms"), "error: no service 'nope' in this environment"),
        (("api", "--latency", "-5ms"), "error: latency can't be negative (-5ms)"),
        (("api", "--latency", "5ms", "--percent", "150"), "percent must be between 0 and 100"),
        (("api", "--abort", "503"), "proxies TCP (no AppProtocol): there is no request to abort"),
        (("api", "--partition"), "a partition is between two services: name the client"),
        (("api", "--latency", "5ms", "--from", "legacy"), "legacy is no Service Connect client"),
        (("api", "--latency", "5ms", "--reset"), "one fault injects one thing"),
        (("api", "--dns", "delay"), "a dns delay needs its length"),
        (("client", "--dns", "nxdomain"), "client has no Service Discovery name"),
        (("api", "--abort", "204"), "abort 204: that answer has no body"),
        (("api", "--abort", "304"), "abort 304: that answer has no body"),
        (("api", "--abort", "101"), "abort must be between 200 and 599, not 101"),
    ],
)
def test_bad_input_says_why_and_changes_nothing(
    ws: Path, args: tuple[str, ...], message: str
) -> None:
    ok(run_cli(ws, "fault", "add", "api", "--latency", "1ms", "--id", "keep"))
    before = listed(ws)
    err = failed(run_cli(ws, "fault", "add", *args))
    assert message in err, err
    assert "error: error:" not in err
    assert err.count("error:") == 1, err
    assert listed(ws) == before


def test_no_mesh_says_what_ps_says(
    tmp_path_factory: pytest.TempPathFactory, busybox_image: str
) -> None:
    idle = copy_workspace(tmp_path_factory, "mini")  # its own project: never up
    expected = failed(run_cli(idle, "ps"))
    assert "no mesh is running" in expected
    for args in (("ls",), ("add", "api", "--latency", "10ms"), ("rm", "--all")):
        assert failed(run_cli(idle, "fault", *args)) == expected
