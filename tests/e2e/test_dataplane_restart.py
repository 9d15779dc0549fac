"""A data plane that comes back: after a crash by itself, after a stop or removal with `up -d`.

One mesh for the module (the `single` workspace: one replica, container data
plane). Docker restarts a data plane whose process dies (restart policy
`unless-stopped`); it never restarts one it was told to kill or stop, and
a removed one is gone. Then `ps` says so, lists the replicas the engine
has and fails, and `up -d` brings the data plane back on the address the
replicas use, adopting them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshlocal.deployment import Deployment
from meshlocal.errors import MeshlocalError
from meshlocal.runtime import labels as L

from .conftest import cli_env, copy_workspace, leftovers, ok, project_of, run_cli, wait_for

pytestmark = pytest.mark.docker

DOWN = "error: the data plane is not running"
HINT = "hint: `meshlocal up -d` restores it"


@dataclass
class Mesh:
    workspace: Path
    project: str

    @property
    def plane_name(self) -> str:
        return L.dataplane_name(self.project, "test")


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> Iterator[Mesh]:
    ws = copy_workspace(tmp_path_factory, "single")
    project = project_of(ws)
    try:
        ok(run_cli(ws, "up", "-d", "--timeout", "120"))
        yield Mesh(ws, project)
    finally:
        run_cli(ws, "down", "--rmi")
        assert leftovers(docker_client, project) == []


def replica_ids(client: Any, project: str) -> set[str]:
    label = {"label": [f"{L.PROJECT}={project}", f"{L.ROLE}=replica"]}
    return {c.id for c in client.containers.list(filters=label)}


def ready_state(mesh: Mesh) -> dict[str, Any] | None:
    dep = Deployment(mesh.workspace, "test")
    try:
        state = dep.state()
    except MeshlocalError:  # (re)starting: the admin API does not answer yet
        return None
    finally:
        dep.close()
    return state if state.get("ready") else None


def assert_restored(mesh: Mesh, client: Any, replicas: set[str], address: str) -> None:
    """`up -d` brought the data plane back where the replicas look, and kept them."""
    ok(run_cli(mesh.workspace, "up", "-d", "--timeout", "120"))
    state = json.loads(ok(run_cli(mesh.workspace, "ps", "--json")).stdout)
    assert state["ready"] is True
    assert state["address"] == address  # the replicas' DNS server, as before
    assert replica_ids(client, mesh.project) == replicas  # adopted, not replaced


def test_the_data_plane_restarts_by_itself_after_a_crash(mesh: Mesh, docker_client: Any) -> None:
    plane = docker_client.containers.get(mesh.plane_name)
    assert plane.attrs["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    replicas = replica_ids(docker_client, mesh.project)
    started = plane.attrs["State"]["StartedAt"]
    # A crash, as an OOM kill is: the process dies, nobody asked Docker to stop it.
    try:
        os.kill(int(plane.attrs["State"]["Pid"]), signal.SIGKILL)
    except PermissionError:
        pytest.skip("needs the engine's processes in reach (root on the Docker host)")

    def restarted() -> bool:
        plane.reload()
        return bool(plane.attrs["State"]["StartedAt"] != started and ready_state(mesh))

    wait_for("Docker to restart the data plane", restarted, timeout=60, interval=0.3)
    assert plane.attrs["RestartCount"] >= 1
    ok(run_cli(mesh.workspace, "ps"))
    assert replica_ids(docker_client, mesh.project) == replicas


def test_a_killed_data_plane_stays_down_ps_says_so_and_up_restores_it(
    mesh: Mesh, docker_client: Any
) -> None:
    replicas = replica_ids(docker_client, mesh.project)
    address = json.loads(ok(run_cli(mesh.workspace, "ps", "--json")).stdout)["address"]
    # `docker kill` is a stop on purpose: Docker leaves the container exited.
    docker_client.containers.get(mesh.plane_name).kill()
    wait_for(
        "the data plane to exit",
        lambda: docker_client.containers.get(mesh.plane_name).status == "exited",
        timeout=30,
    )
    proc = run_cli(mesh.workspace, "ps")
    assert proc.returncode == 1, proc
    assert f"{DOWN} (its container {mesh.plane_name} is exited, exit code 137)" in proc.stderr
    assert "1 replica(s) run and are unreachable by name" in proc.stderr
    assert HINT in proc.stderr and "Traceback" not in proc.stderr
    assert "web-1" in proc.stdout and "running" in proc.stdout, proc.stdout
    assert_restored(mesh, docker_client, replicas, address)


def test_a_removed_data_plane_ps_lists_the_replicas_and_up_restores_it(
    mesh: Mesh, docker_client: Any
) -> None:
    replicas = replica_ids(docker_client, mesh.project)
    before = json.loads(ok(run_cli(mesh.workspace, "ps", "--json")).stdout)
    address = before["address"]
    docker_client.containers.get(mesh.plane_name).remove(force=True)

    proc = run_cli(mesh.workspace, "ps")
    assert proc.returncode == 1, proc
    assert f"{DOWN} (its container was removed)" in proc.stderr, proc.stderr
    assert HINT in proc.stderr and "Traceback" not in proc.stderr
    assert "no mesh is running" not in proc.stderr
    assert "web-1" in proc.stdout and address.rsplit(".", 1)[0] in proc.stdout, proc.stdout

    as_json = run_cli(mesh.workspace, "ps", "--json")
    assert as_json.returncode == 1 and DOWN in as_json.stderr
    doc = json.loads(as_json.stdout)
    assert doc["dataplane_running"] is False
    assert {r["container_id"] for r in doc["replicas"]} == replicas
    assert [(r["name"], r["state"]) for r in doc["replicas"]] == [("web-1", "running")]

    # Every other command that needs the data plane says the same; logs reads the engine.
    for args in (("stats",), ("scale", "web=1"), ("resolve", "web", "--from", "web")):
        other = run_cli(mesh.workspace, *args)
        assert other.returncode == 1 and DOWN in other.stderr, (args, other.stderr)
    logs = ok(run_cli(mesh.workspace, "logs", "web"))
    assert "web-1" in logs.stdout and "web ready on" in logs.stdout, logs.stdout

    assert_restored(mesh, docker_client, replicas, address)
    # The public endpoint comes back on the URL a browser tab still has open.
    after = json.loads(ok(run_cli(mesh.workspace, "ps", "--json")).stdout)
    assert after["public_url"] == before["public_url"] is not None, (before, after)


def test_a_dead_host_mode_agent_is_no_data_plane(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any
) -> None:
    """A stale host-mode admin file (its agent SIGKILLed) is not a running mesh."""
    ws = copy_workspace(tmp_path_factory, "single")
    state_home = tmp_path_factory.mktemp("state")
    dead = subprocess.Popen(["true"])
    dead.wait()
    admin = state_home / "meshlocal" / f"{project_of(ws)}-test.admin"
    admin.parent.mkdir(parents=True)
    admin.write_text(json.dumps({"admin_url": "http://127.0.0.1:9", "pid": dead.pid}))
    proc = run_cli(ws, "ps", env=cli_env(XDG_STATE_HOME=str(state_home)))
    assert proc.returncode == 1, proc
    assert "error: no mesh is running for environment test" in proc.stderr, proc.stderr


def test_up_restores_on_the_replicas_address_even_when_docker_would_pick_another(
    mesh: Mesh, docker_client: Any, busybox_image: str
) -> None:
    """The fallback when that address is taken (replicas roll), then the pin itself."""
    network = L.network_name(mesh.project, "test")
    first = json.loads(ok(run_cli(mesh.workspace, "ps", "--json")).stdout)["address"]
    docker_client.containers.get(mesh.plane_name).remove(force=True)
    # Something else takes the freed address while the data plane is away.
    squatter = docker_client.containers.run(
        busybox_image, ["sleep", "300"], network=network, detach=True, name=f"{mesh.project}-sq"
    )
    try:
        squatter.reload()
        assert squatter.attrs["NetworkSettings"]["Networks"][network]["IPAddress"] == first
        ok(run_cli(mesh.workspace, "up", "-d", "--timeout", "120"))
        second = json.loads(ok(run_cli(mesh.workspace, "ps", "--json")).stdout)["address"]
        assert second != first  # it came back elsewhere, and the replicas followed
    finally:
        squatter.remove(force=True)
    # Now the lowest free address (Docker's pick) is `first`, not the replicas' DNS server.
    replicas = replica_ids(docker_client, mesh.project)
    docker_client.containers.get(mesh.plane_name).remove(force=True)
    assert_restored(mesh, docker_client, replicas, second)
