"""A client task sees the Service Connect endpoints that existed when it started.

ECS (Service Connect deployments): existing tasks can't resolve an endpoint
added later until they are replaced. `up -d` says which services must be
replaced, and `up -d --replace SVC` replaces them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import cli_env, container_of, copy_workspace, nslookup, ok, project_of, run_cli

pytestmark = pytest.mark.docker


@pytest.fixture
def workspace(
    tmp_path_factory: pytest.TempPathFactory, busybox_image: str, dataplane_image: str
) -> Iterator[Path]:
    ws = copy_workspace(tmp_path_factory, "snapshot")
    try:
        yield ws
    finally:
        run_cli(ws, "down", "--rmi", env=cli_env(BUSYBOX_IMAGE=busybox_image))


def test_an_endpoint_added_later_is_seen_only_by_replaced_clients(
    workspace: Path, docker_client: Any, busybox_image: str
) -> None:
    env = cli_env(BUSYBOX_IMAGE=busybox_image)
    ok(run_cli(workspace, "up", "-d", env=env))
    project = project_of(workspace)
    old = container_of(docker_client, project, "cli", 1)
    assert nslookup(docker_client, old, "srv")[0] == "NXDOMAIN"

    manifest = workspace / "copilot" / "srv" / "manifest.yml"
    manifest.write_text(manifest.read_text().replace("connect: false", "connect: true"))
    up = ok(run_cli(workspace, "up", "-d", env=env))
    assert "cli: replicas started before Service Connect endpoint(s) srv" in up.stderr, up.stderr
    assert "--replace cli" in up.stderr
    # srv's own tasks were redeployed by the change (as on ECS): they see it.
    assert "srv: replicas started before" not in up.stderr, up.stderr
    # The client that started before the endpoint existed still can't resolve it...
    assert container_of(docker_client, project, "cli", 1) == old
    assert nslookup(docker_client, old, "srv")[0] == "NXDOMAIN"
    resolved = run_cli(workspace, "resolve", "srv", "--from", "cli", env=env)
    assert resolved.returncode == 1 and "NXDOMAIN" in resolved.stdout, resolved.stdout
    ps = ok(run_cli(workspace, "ps", "--json", env=env))
    assert '"unresolved_endpoints": [\n        "srv"\n      ]' in ps.stdout

    # ...until it is replaced.
    replaced = ok(run_cli(workspace, "up", "-d", "--replace", "cli", env=env))
    assert "cli: replicas started before" not in replaced.stderr, replaced.stderr
    new = container_of(docker_client, project, "cli", 1)
    assert new != old
    status, answers = nslookup(docker_client, new, "srv")
    assert status == "NOERROR" and len(answers) == 1
    code, out = docker_client.containers.get(new).exec_run(
        ["sh", "-c", "timeout 10 wget -q -O - http://srv/"]
    )
    assert code == 0 and out.decode().strip() == "srv"

    # The endpoint keeps its address across a data-plane restart (adoption).
    vip = answers[0]
    plane = docker_client.containers.list(
        filters={"label": [f"meshlocal.project={project}", "meshlocal.role=dataplane"]}
    )[0]
    plane.restart(timeout=5)
    ok(run_cli(workspace, "up", "-d", env=env))  # waits until the mesh is ready again
    assert nslookup(docker_client, new, "srv") == ("NOERROR", [vip])
    ps = json.loads(ok(run_cli(workspace, "ps", "--json", env=env)).stdout)
    assert ps["services"]["srv"]["connect"]["vip"] == vip


def test_replace_of_an_unknown_service_is_a_clear_error(
    workspace: Path, busybox_image: str
) -> None:
    proc = run_cli(
        workspace, "up", "-d", "--replace", "nope", env=cli_env(BUSYBOX_IMAGE=busybox_image)
    )
    assert proc.returncode == 1, proc
    assert 'no service "nope" in environment test of application snap' in proc.stderr
    assert "hint: services: cli, srv" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_network_without_a_vip_block_is_a_clear_error_and_starts_nothing(
    workspace: Path, docker_client: Any, busybox_image: str
) -> None:
    # A network as an older meshlocal made it: labelled, but no ip_range.
    from meshlocal.runtime import labels as L

    project = project_of(workspace)
    name = L.network_name(project, "test")
    labels = L.base_labels(project, "test", L.Role.NETWORK, workspace)
    net = docker_client.networks.create(name, driver="bridge", labels=labels)
    try:
        proc = run_cli(workspace, "up", "-d", env=cli_env(BUSYBOX_IMAGE=busybox_image))
        assert proc.returncode != 0
        assert "no range reserved for Service Connect addresses" in proc.stderr, proc.stderr
        assert "meshlocal down" in proc.stderr
        assert "Traceback" not in proc.stderr
        running = docker_client.containers.list(
            all=True, filters={"label": f"{L.PROJECT}={project}"}
        )
        assert running == []
        # `down` finds the old network by its label and removes it.
        ok(run_cli(workspace, "down", env=cli_env(BUSYBOX_IMAGE=busybox_image)))
        assert docker_client.networks.list(names=[name]) == []
    finally:
        if docker_client.networks.list(names=[name]):
            net.remove()
