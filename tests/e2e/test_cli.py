"""`meshlocal up -d / ps / resolve / scale / logs / up again / down` as a user runs them.

One mesh for the module (container data plane, the default), driven only
through the `meshlocal` executable in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshlocal.deployment import Deployment
from meshlocal.errors import MeshlocalError
from meshlocal.runtime import labels as L

from .conftest import (
    container_of,
    detached_mesh,
    nslookup,
    ok,
    replica_containers,
    run_cli,
    wait_for,
)

pytestmark = pytest.mark.docker


@dataclass
class Up:
    workspace: Path
    project: str
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def up(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> Iterator[Up]:
    with detached_mesh(tmp_path_factory, docker_client, "mini", rmi=True) as (ws, project, proc):
        yield Up(ws, project, proc.stdout, proc.stderr)


def ps_json(ws: Path) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(ok(run_cli(ws, "ps", "--json")).stdout)
    return state


def state_of(up: Up) -> dict[str, Any]:
    """The agent's state straight from its admin API: cheap enough to poll."""
    dep = Deployment(up.workspace, "test")
    try:
        return dep.state()
    finally:
        dep.close()


def ids(client: Any, project: str, service: str) -> dict[int, str]:
    return {int(c.labels[L.REPLICA]): c.id for c in replica_containers(client, project, service)}


def test_up_detached_returns_healthy_and_prints_the_ps_table(up: Up) -> None:
    row = r"^\W*(\S+-\d+)\s+\W*\s*([\d.]+)\s+\W*\s*(\S+)\s+\W*\s*(\S+)"
    rows = re.findall(row, up.stdout, re.M)
    table = {name: (health, rotation) for name, _, health, rotation in rows}
    expected = {"api-1", "api-2", "api-3", "client-1", "legacy-1", "web-1", "web-2"}
    assert set(table) == expected, up.stdout
    assert all(v == ("healthy", "in") for v in table.values()), table
    assert "Data plane (DNS):" in up.stdout
    assert re.search(r"Public endpoint: http://127\.0\.0\.1:\d+", up.stdout)


def test_ps_json_matches_the_engine(up: Up, docker_client: Any) -> None:
    state = ps_json(up.workspace)
    assert state["ready"] is True and state["mode"] == "container"
    assert state["public_url"].startswith("http://127.0.0.1:")
    for service in ("api", "client", "legacy", "web"):
        running = {
            c.id: c.attrs["NetworkSettings"]["Networks"][f"{up.project}-test"]["IPAddress"]
            for c in replica_containers(docker_client, up.project, service)
        }
        listed = {r["container_id"]: r["address"] for r in state["services"][service]["replicas"]}
        assert listed == running, service
    api = state["services"]["api"]
    assert api["discovery_name"] == "api.test.mini.local" and api["port"] == 80
    assert api["connect_endpoints"] == ["http://api"]
    assert state["services"]["client"]["connect_endpoints"] == []


def test_resolve_from_a_service_connect_client_and_from_a_legacy_one(up: Up) -> None:
    state = ps_json(up.workspace)
    sc = ok(run_cli(up.workspace, "resolve", "api", "--from", "client", "--json"))
    sc = json.loads(sc.stdout)
    vip = state["services"]["api"]["connect"]["vip"]
    assert (sc["rcode"], sc["answers"]) == ("NOERROR", [vip])
    assert vip != state["address"]  # the endpoint's own address, not the data plane's
    assert sc["meaning"] == "service connect endpoint api:80 of api, tcp"
    legacy = run_cli(up.workspace, "resolve", "api", "--from", "legacy")
    assert legacy.returncode == 1 and "NXDOMAIN" in legacy.stdout, legacy


def test_logs_show_compose_style_prefixes(up: Up) -> None:
    out = ok(run_cli(up.workspace, "logs", "api")).stdout
    lines = [line for line in out.splitlines() if line]
    assert lines and all(re.match(r"api-[123]  \| ", line) for line in lines), out
    for i in (1, 2, 3):
        assert re.search(rf"^api-{i}  \| api up: {up.project}-test-api-{i} ", out, re.M), out
    everything = ok(run_cli(up.workspace, "logs")).stdout
    # Names of different lengths align: every prefix is padded to the longest name.
    prefixes = [line.partition(" | ")[0] for line in everything.splitlines() if line]
    names = {p.rstrip() for p in prefixes}
    assert {"meshlocal", "client-1", "legacy-1", "api-1"} <= names, everything
    width = max(len(n) for n in names) + 1
    assert all(len(p) == width for p in prefixes), everything
    assert re.search(r"^client-1 +\| client up$", everything, re.M), everything


def test_scale_out_and_in_drains_and_the_registry_follows(up: Up, docker_client: Any) -> None:
    before = ids(docker_client, up.project, "api")
    ok(run_cli(up.workspace, "scale", "api=4"))
    assert ps_json(up.workspace)["services"]["api"]["desired"] == 4

    def four() -> dict[str, Any] | None:
        api: dict[str, Any] = state_of(up)["services"]["api"]
        in_rotation = sorted(r["index"] for r in api["replicas"] if r["in_rotation"])
        return api if in_rotation == [1, 2, 3, 4] else None

    # The new replica joins once its health check passes (interval 1 s).
    api = wait_for("api-4 in rotation", four, timeout=30, interval=0.3)
    legacy = container_of(docker_client, up.project, "legacy")
    assert nslookup(docker_client, legacy, "api.test.mini.local") == (
        "NOERROR",
        sorted(r["address"] for r in api["replicas"]),
    )
    ok(run_cli(up.workspace, "scale", "api=2"))
    api = ps_json(up.workspace)["services"]["api"]
    assert api["desired"] == 2
    assert [r["index"] for r in api["replicas"]] == [1, 2]
    after = ids(docker_client, up.project, "api")
    assert after == {1: before[1], 2: before[2]}  # the survivors were kept
    assert nslookup(docker_client, legacy, "api.test.mini.local") == (
        "NOERROR",
        sorted(r["address"] for r in api["replicas"]),
    )
    ok(run_cli(up.workspace, "scale", "api=3"))
    assert len(ps_json(up.workspace)["services"]["api"]["replicas"]) == 3


def test_bad_scale_argument_is_a_message(up: Up) -> None:
    proc = run_cli(up.workspace, "scale", "api")
    assert proc.returncode != 0 and "SERVICE=COUNT" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli(up.workspace, "scale", "nosuch=2")
    assert proc.returncode != 0 and "nosuch" in proc.stderr
    assert "Traceback" not in proc.stderr and "error: error:" not in proc.stderr


def test_a_restarted_data_plane_adopts_the_running_replicas(up: Up, docker_client: Any) -> None:
    """Docker restarts a crashed data plane; it adopts healthy replicas, replacing none."""
    label = {"label": [f"{L.PROJECT}={up.project}", f"{L.ROLE}=replica"]}
    before = {c.id for c in docker_client.containers.list(filters=label)}
    plane = docker_client.containers.get(f"{up.project}-test-meshlocal")
    # A crash, not `docker kill`: Docker never restarts a container it was told to kill.
    try:
        os.kill(int(plane.attrs["State"]["Pid"]), signal.SIGKILL)
    except PermissionError:
        pytest.skip("needs the engine's processes in reach (root on the Docker host)")

    def ready() -> dict[str, Any] | None:
        try:
            state = state_of(up)
        except MeshlocalError:  # restarting: the admin API does not answer yet
            return None
        return state if state.get("ready") else None

    state = wait_for("the restarted data plane to be ready", ready, timeout=60, interval=0.5)
    listed = {r["container_id"] for svc in state["services"].values() for r in svc["replicas"]}
    assert listed == before
    assert {c.id for c in docker_client.containers.list(filters=label)} == before


def test_up_again_unchanged_keeps_every_container(up: Up, docker_client: Any) -> None:
    label = {"label": f"{L.PROJECT}={up.project}"}
    before = {c.id for c in docker_client.containers.list(filters=label)}
    ok(run_cli(up.workspace, "up", "-d", "--timeout", "120"))
    after = {c.id for c in docker_client.containers.list(filters=label)}
    assert after == before


def test_up_again_changed_rolls_only_that_service(up: Up, docker_client: Any) -> None:
    api_before = ids(docker_client, up.project, "api")
    others = {s: ids(docker_client, up.project, s) for s in ("client", "legacy", "web")}
    manifest = up.workspace / "copilot" / "api" / "manifest.yml"
    manifest.write_text(manifest.read_text().replace('VERSION: "1"', 'VERSION: "2"'))

    # Record the api containers' lifecycle while `up` rolls them.
    events: list[dict[str, Any]] = []
    stream = docker_client.events(
        decode=True,
        filters={
            "label": [f"{L.PROJECT}={up.project}", f"{L.SERVICE}=api", f"{L.ROLE}=replica"],
            "event": ["health_status", "die"],
        },
    )

    def record() -> None:
        for event in stream:
            events.append(event)

    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    try:
        ok(run_cli(up.workspace, "up", "-d", "--timeout", "120"))
    finally:
        stream.close()

    api_after = ids(docker_client, up.project, "api")
    assert sorted(api_after) == [1, 2, 3]
    assert not set(api_after.values()) & set(api_before.values()), "api was not replaced"
    for service, before in others.items():
        assert ids(docker_client, up.project, service) == before, f"{service} was restarted"

    # Rolling: never fewer than 3 healthy api replicas, counting from Docker's events.
    healthy = set(api_before.values())
    lowest = len(healthy)
    for event in events:
        cid, action = event["id"], event["Action"]
        if action == "health_status: healthy":
            healthy.add(cid)
        elif action == "die":
            healthy.discard(cid)
            lowest = min(lowest, len(healthy))
    assert lowest >= 3, f"healthy api replicas fell to {lowest} during the roll: {events}"
    assert sum(e["Action"] == "die" for e in events) >= 3

    state = ps_json(up.workspace)
    assert state["ready"] is True
    pages = [
        docker_client.containers.get(cid).exec_run(["cat", "/www/index.html"]).output.decode()
        for cid in api_after.values()
    ]
    assert all(page.rstrip().endswith("v=2") for page in pages), pages
