"""Faults survive restarts: of the data plane, of the controller; `up` puts back the declared.

One mesh (busybox): `api` and `web` register Service Discovery names; `client`
asks for them. A declared fault (copilot/.meshlocal.yml) answers NXDOMAIN for
api's name to `client`; a runtime one, added through the admin API,
answers SERVFAIL for web's name. Each is seen from inside `client`.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshlocal.adminapi import admin_call
from meshlocal.deployment import Deployment
from meshlocal.errors import MeshlocalError
from meshlocal.hostagent import exited
from meshlocal.runtime import labels as L
from meshlocal.statedir import state_file

from .conftest import container_of, leftovers, ok, project_of, run_cli, sh, wait_for

pytestmark = pytest.mark.docker

APP = "frestart"
SERVER = """\
name: {name}
type: Backend Service
image:
  location: ${{BUSYBOX_IMAGE}}
  port: 80
command:
  - sh
  - -c
  - mkdir -p /www && echo {name} > /www/index.html; trap 'kill $pid; exit 0' TERM;
    httpd -f -p 80 -h /www & pid=$!; wait
network:
  connect: true
"""
CLIENT = """\
name: client
type: Backend Service
image:
  location: ${BUSYBOX_IMAGE}
command: ["sh", "-c", "trap 'exit 0' TERM; sleep 100000 & wait"]
network:
  connect: true
"""
CONFIG = """\
health_check_interval: 1s
environments:
  test:
    faults:
      - {id: api-gone, service: api, dns: nxdomain, from: client}
"""
API_NAME = f"api.test.{APP}.local"

WEB_NAME = f"web.test.{APP}.local"


@dataclass
class Mesh:
    workspace: Path
    project: str

    def admin(self, path: str, body: Any = None, method: str | None = None) -> Any:
        dep = Deployment(self.workspace, "test")
        try:
            return admin_call(dep.dataplane().admin_url, path, body, 10.0, method=method)
        finally:
            dep.close()

    def faults(self) -> dict[str, dict[str, Any]]:
        return {f["id"]: f for f in self.admin("/v1/faults")["faults"]}


def write_workspace(root: Path) -> Path:
    copilot = root / "copilot"
    for rel, text in {
        ".workspace": f"application: {APP}\n",
        ".meshlocal.yml": CONFIG,
        "environments/test/manifest.yml": "name: test\ntype: Environment\n",
        "api/manifest.yml": SERVER.format(name="api"),
        "web/manifest.yml": SERVER.format(name="web"),
        "client/manifest.yml": CLIENT,
    }.items():
        path = copilot / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> Iterator[Mesh]:
    ws = write_workspace(tmp_path_factory.mktemp("ws-fault-restart") / APP)
    project = project_of(ws)
    try:
        ok(run_cli(ws, "up", "-d", "--timeout", "120"))
        yield Mesh(ws, project)
    finally:
        run_cli(ws, "down", "--rmi")
        assert leftovers(docker_client, project) == []


def lookup(client: Any, mesh: Mesh, name: str) -> str:
    """NXDOMAIN, SERVFAIL or NOERROR, as `client`'s own resolver says."""
    _, out = sh(client, container_of(client, mesh.project, "client"), f"nslookup {name}")
    for status in ("NXDOMAIN", "SERVFAIL"):
        if status in out:
            return status
    return "NOERROR" if "Address" in out.partition("Name:")[2] else out


def restart(docker_client: Any, mesh: Mesh, container: str) -> None:
    """Restart a container and wait until the mesh answers, linked, again."""
    box = docker_client.containers.get(container)
    started = box.attrs["State"]["StartedAt"]
    box.restart(timeout=10)

    def back() -> bool:
        box.reload()
        if box.attrs["State"]["StartedAt"] == started:
            return False
        try:
            state = mesh.admin("/v1/state")
        except MeshlocalError:  # (re)starting
            return False
        return bool(state.get("controller_connected") and state.get("ready"))

    wait_for(f"{container} to serve again", back, timeout=60, interval=0.3)


def planes_of(docker_client: Any, mesh: Mesh) -> dict[str, str]:
    """The data plane's and the controller's container ids."""
    roles = (L.Role.DATAPLANE.value, L.Role.CONTROLLER.value)
    found = docker_client.containers.list(filters={"label": f"{L.PROJECT}={mesh.project}"})
    return {c.labels[L.ROLE]: c.id for c in found if c.labels.get(L.ROLE) in roles}


def faults_or_none(mesh: Mesh) -> dict[str, Any]:
    try:
        return mesh.faults()
    except MeshlocalError:  # not serving yet
        return {}


def in_effect(docker_client: Any, mesh: Mesh, *, declared: bool = True) -> None:
    assert lookup(docker_client, mesh, API_NAME) == ("NXDOMAIN" if declared else "NOERROR")
    assert lookup(docker_client, mesh, WEB_NAME) == "SERVFAIL"


def test_declared_and_runtime_faults_survive_a_data_plane_restart(
    mesh: Mesh, docker_client: Any
) -> None:
    faults = mesh.faults()
    assert list(faults) == ["api-gone"] and faults["api-gone"]["declared"] is True
    assert lookup(docker_client, mesh, API_NAME) == "NXDOMAIN"
    assert lookup(docker_client, mesh, WEB_NAME) == "NOERROR"
    added = mesh.admin("/v1/faults", {"service": "web", "dns": "servfail", "id": "web-broken"})
    assert added["fault"]["declared"] is False
    in_effect(docker_client, mesh)
    assert mesh.faults()["api-gone"]["hits"] >= 1

    restart(docker_client, mesh, L.dataplane_name(mesh.project, "test"))
    faults = mesh.faults()
    assert {i: f["declared"] for i, f in faults.items()} == {"api-gone": True, "web-broken": False}
    assert faults["web-broken"]["hits"] == 0  # counters start again (a new process)
    in_effect(docker_client, mesh)
    state = json.loads(ok(run_cli(mesh.workspace, "ps", "--json")).stdout)
    assert sorted(f["id"] for f in state["faults"]) == ["api-gone", "web-broken"]


def test_a_restarted_controller_learns_the_faults_from_the_data_plane(
    mesh: Mesh, docker_client: Any
) -> None:
    if "web-broken" not in mesh.faults():
        mesh.admin("/v1/faults", {"service": "web", "dns": "servfail", "id": "web-broken"})
    mesh.admin("/v1/faults/api-gone", method="DELETE")  # removed until the next `up`
    assert list(mesh.faults()) == ["web-broken"]
    # The controller forgets everything; the data plane keeps its set and tells it.
    restart(docker_client, mesh, L.controller_name(mesh.project, "test"))
    assert list(mesh.faults()) == ["web-broken"]
    # Then the data plane: the controller hands back what it learnt, the removal too.
    restart(docker_client, mesh, L.dataplane_name(mesh.project, "test"))
    assert list(mesh.faults()) == ["web-broken"]
    in_effect(docker_client, mesh, declared=False)

    # `up` puts the declared fault back (even the quick `up` of nothing changed);
    # the runtime one stays (carried over if `up` replaces the data plane).
    proc = ok(run_cli(mesh.workspace, "up", "-d", "--timeout", "120"))
    assert sorted(mesh.faults()) == ["api-gone", "web-broken"], (proc.stdout, proc.stderr)
    in_effect(docker_client, mesh)


def test_faults_survive_a_restart_of_both_the_data_plane_and_the_controller(
    mesh: Mesh, docker_client: Any
) -> None:
    """The controller keeps the data plane's last report on its disk."""
    if "web-broken" not in mesh.faults():
        mesh.admin("/v1/faults", {"service": "web", "dns": "servfail", "id": "web-broken"})
    controller = docker_client.containers.get(L.controller_name(mesh.project, "test"))
    controller.stop(timeout=10)
    try:
        # A new process that serves nothing (not even its admin API) until configured.
        docker_client.containers.get(L.dataplane_name(mesh.project, "test")).restart(timeout=10)
    finally:
        controller.start()
    wait_for("the faults to come back", lambda: "web-broken" in faults_or_none(mesh), timeout=60)
    assert sorted(mesh.faults()) == ["api-gone", "web-broken"]
    in_effect(docker_client, mesh)


def test_up_warns_of_a_runtime_fault_the_new_configuration_drops(
    mesh: Mesh, docker_client: Any
) -> None:
    mesh.admin("/v1/faults", {"service": "api", "refuse": True, "from": "web", "id": "web-to-api"})
    # web leaves the workspace: the fault from it can't stay.
    manifest = mesh.workspace / "copilot" / "web" / "manifest.yml"
    saved = manifest.read_text()
    manifest.unlink()
    try:
        proc = ok(run_cli(mesh.workspace, "up", "-d", "--timeout", "120"))
        assert "warning: fault web-to-api (web -> api: refuse) is removed: no client service" in (
            proc.stdout + proc.stderr
        ), proc.stdout + proc.stderr
        assert "web-to-api" not in mesh.faults() and "web-broken" not in mesh.faults()
    finally:
        manifest.write_text(saved)
    ok(run_cli(mesh.workspace, "up", "-d", "--timeout", "120"))
    assert list(mesh.faults()) == ["api-gone"]


def test_a_restarted_host_mode_agent_takes_back_its_runtime_faults(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> None:
    """Host mode has no kept configuration: the fault report lives in the state directory."""
    ws = write_workspace(tmp_path_factory.mktemp("ws-fault-host") / APP)
    project = project_of(ws)
    host = Mesh(ws, project)
    try:
        ok(run_cli(ws, "up", "-d", "--dataplane", "host", "--timeout", "120"))
        host.admin("/v1/faults", {"service": "web", "dns": "servfail", "id": "web-broken"})
        report = state_file(project, "test", ".faults.json")
        wait_for("the report on disk", lambda: "web-broken" in _text(report), timeout=10)

        # The agent stops (a crash, a reboot): the next `up` starts a new one.
        pid = int(state_file(project, "test", ".pid").read_text())
        os.kill(pid, signal.SIGTERM)
        wait_for("the host agent to stop", lambda: exited(pid), timeout=30, interval=0.2)
        proc = ok(run_cli(ws, "up", "-d", "--dataplane", "host", "--timeout", "120"))
        faults = host.faults()
        assert sorted(faults) == ["api-gone", "web-broken"], (proc.stdout, proc.stderr)
        assert faults["web-broken"]["declared"] is False
        assert lookup(docker_client, host, WEB_NAME) == "SERVFAIL"
    finally:
        run_cli(ws, "down")
    assert not state_file(project, "test", ".faults.json").exists()  # `down` clears it
    assert leftovers(docker_client, project) == []


def _text(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
