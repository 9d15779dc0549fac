"""`meshlocal up --engine swarm`: the e2e checks on a swarm, then on two nodes.

The local engine becomes a swarm manager for this module (and leaves it
after); a second engine (nodes.py) joins as a worker for the two-node
checks. In their own CI step: `swarm init` changes the engine under every
other test (scripts/test.sh).
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from .conftest import (
    cli_env,
    copy_workspace,
    failed,
    forwarded,
    leftovers,
    ok,
    project_of,
    run_cli,
    wait_for,
)
from .nodes import SWARM_MARKS, Node, Swarm

pytestmark = SWARM_MARKS


@pytest.fixture(scope="module")
def swarm(swarm_cluster: Swarm, busybox_image: str, dataplane_image: str) -> Swarm:
    return swarm_cluster


@pytest.fixture(scope="module")
def mesh(
    swarm: Swarm, tmp_path_factory: pytest.TempPathFactory, docker_client: Any
) -> Iterator[tuple[Path, str]]:
    ws = copy_workspace(tmp_path_factory, "mini")
    project = project_of(ws)
    try:
        ok(run_cli(ws, "up", "-d", "--engine", "swarm", "--timeout", "120"))
        yield ws, project
    finally:
        run_cli(ws, "down")
        assert leftovers(docker_client, project) == []
        assert docker_client.api.services(filters={"label": f"meshlocal.project={project}"}) == []


def ps_json(ws: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(ok(run_cli(ws, "ps", "--json", env=env)).stdout)
    return state


def tasks_of(client: Any, project: str, service: str) -> list[dict[str, Any]]:
    name = f"{project}-test-{service}"
    return [
        t
        for t in client.api.tasks(filters={"service": name, "desired-state": "running"})
        if t["Status"]["State"] == "running"
    ]


def fetch_from(client: Any, container: str, url: str, times: int) -> list[str]:
    # `timeout` bounds it: this static busybox's `wget -T` segfaults (docker-notes §6).
    script = (
        f"i=0; while [ $i -lt {times} ]; do timeout 10 wget -q -O - {url} || echo FAIL; "
        "i=$((i+1)); done"
    )
    result = client.containers.get(container).exec_run(["sh", "-c", script])
    return bytes(result.output).decode().split("\n")[:-1]


def resolve(ws: Path, name: str, from_: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(
        ok(run_cli(ws, "resolve", name, "--from", from_, "--json")).stdout
    )
    return found


def test_services_become_swarm_services_with_count_tasks(
    mesh: tuple[Path, str], docker_client: Any
) -> None:
    ws, project = mesh
    state = ps_json(ws)
    assert state["ready"]
    assert {n: len(s["replicas"]) for n, s in state["services"].items()} == {
        "api": 3,
        "client": 1,
        "legacy": 1,
        "web": 2,
    }
    names = {s["Spec"]["Name"] for s in docker_client.api.services()}
    assert {f"{project}-test-{n}" for n in ("api", "client", "legacy", "web")} <= names
    # The tasks keep Copilot's variables and meshlocal's labels.
    task = tasks_of(docker_client, project, "api")[0]
    spec = task["Spec"]["ContainerSpec"]
    env = dict(e.split("=", 1) for e in spec["Env"])
    assert env["COPILOT_SERVICE_NAME"] == "api" and env["COPILOT_ENVIRONMENT_NAME"] == "test"
    assert env["COPILOT_SERVICE_DISCOVERY_ENDPOINT"] == "test.mini.local"
    assert spec["Labels"]["meshlocal.service"] == "api"


def test_service_connect_round_robin_discovery_and_nxdomain(
    mesh: tuple[Path, str], docker_client: Any
) -> None:
    ws, project = mesh
    client = tasks_of(docker_client, project, "client")[0]["Status"]["ContainerStatus"][
        "ContainerID"
    ]
    pages = [p.split()[0] for p in fetch_from(docker_client, client, "http://api/", 6)]
    assert len(set(pages)) == 3 and pages[:3] == pages[3:], pages
    vip = resolve(ws, "api", "client")
    assert "service connect endpoint" in vip["meaning"], vip
    legacy = run_cli(ws, "resolve", "api", "--from", "legacy")
    assert legacy.returncode == 1 and "NXDOMAIN" in legacy.stdout, legacy.stdout
    sd = resolve(ws, "api.test.mini.local", "legacy")
    state = ps_json(ws)
    assert sorted(sd["answers"]) == sorted(
        r["address"] for r in state["services"]["api"]["replicas"]
    )


def test_a_killed_task_leaves_dns_and_scale_follows(
    mesh: tuple[Path, str], docker_client: Any
) -> None:
    ws, project = mesh
    ok(run_cli(ws, "scale", "api=4"))
    assert len(resolve(ws, "api.test.mini.local", "legacy")["answers"]) == 4
    victim = tasks_of(docker_client, project, "api")[0]
    address = victim["NetworksAttachments"][0]["Addresses"][0].split("/")[0]
    docker_client.api.kill(victim["Status"]["ContainerStatus"]["ContainerID"])

    def gone() -> bool:
        return address not in resolve(ws, "api.test.mini.local", "legacy")["answers"]

    wait_for("the killed task to leave DNS", gone, timeout=20, interval=0.3)
    # The swarm replaces it, and the new task joins once healthy.
    wait_for(
        "the replacement to join",
        lambda: len(resolve(ws, "api.test.mini.local", "legacy")["answers"]) == 4,
        timeout=60,
        interval=0.5,
    )
    ok(run_cli(ws, "scale", "api=3"))
    assert len(resolve(ws, "api.test.mini.local", "legacy")["answers"]) == 3


def test_forward_reaches_the_public_endpoint(mesh: tuple[Path, str]) -> None:
    ws, project = mesh
    with forwarded(ws, cli_env()) as (public, page):
        hosts = set()
        for _ in range(4):
            with urllib.request.urlopen(public + "/", timeout=10) as resp:
                hosts.add(resp.read().decode().strip())
        assert hosts == {f"{project}-test-web-1", f"{project}-test-web-2"}
        with urllib.request.urlopen(page + "v1/state", timeout=10) as resp:
            assert json.loads(resp.read())["ready"] is True


def test_run_replace_and_what_is_refused(mesh: tuple[Path, str], docker_client: Any) -> None:
    ws, project = mesh
    # A one-off on the manager is a Service Connect client of its service.
    ran = run_cli(ws, "run", "-T", "client", "--", "nslookup", "api")
    assert ran.returncode == 0 and "10.224.3." in ran.stdout, ran.stdout + ran.stderr
    # --replace returns once every old task is gone and new ones serve.
    before = {t["ID"] for t in tasks_of(docker_client, project, "api")}
    ok(run_cli(ws, "up", "-d", "--replace", "api", "--timeout", "120"))
    after = {t["ID"] for t in tasks_of(docker_client, project, "api")}
    assert len(after) == 3 and not before & after, (before, after)
    state = ps_json(ws)
    assert len(state["services"]["api"]["replicas"]) == 3 and state["ready"]
    # The mesh runs on the swarm: another engine mode, or host mode, is refused.
    err = failed(run_cli(ws, "up", "-d", "--engine", "docker"))
    assert "runs with --engine swarm" in err and "meshlocal down" in err, err
    err = failed(run_cli(ws, "up", "-d", "--dataplane", "host"))
    assert "host mode can't serve a swarm" in err, err
    assert ps_json(ws)["ready"]  # and the mesh is untouched


@pytest.fixture(scope="module")
def node(swarm_worker: Node) -> Node:
    return swarm_worker


def test_two_nodes_tasks_on_both_reached_through_service_connect_from_either(
    node: Node, docker_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ws = copy_workspace(tmp_path_factory, "mini")
    project = project_of(ws)
    env = cli_env(MESHLOCAL_NODE_ENGINE="tcp://{address}:2375")
    try:
        up = ok(run_cli(ws, "up", "-d", "--engine", "swarm", "--timeout", "180", env=env))
        assert f"copied to node {node.name}" in up.stderr + up.stdout
        ok(run_cli(ws, "scale", "api=6", env=env))
        tasks = tasks_of(docker_client, project, "api")
        nodes = {t["NodeID"] for t in tasks}
        assert len(nodes) == 2, tasks
        replicas = {r["address"] for r in ps_json(ws, env)["services"]["api"]["replicas"]}
        assert len(replicas) == 6
        manager_id = docker_client.info()["Swarm"]["NodeID"]
        for here in (True, False):
            task = next(t for t in tasks if (t["NodeID"] == manager_id) == here)
            engine = docker_client if here else node.client
            container = task["Status"]["ContainerStatus"]["ContainerID"]
            pages = fetch_from(engine, container, "http://api/", 6)
            assert "FAIL" not in pages, pages
            seen = {p.split()[1] for p in pages}  # each page names its replica's address
            assert len(seen) == 6 and seen <= replicas, (here, pages)
        # A non-client gets NXDOMAIN for Service Connect names, on whichever node it is.
        task = tasks_of(docker_client, project, "legacy")[0]
        engine = docker_client if task["NodeID"] == manager_id else node.client
        looked = engine.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
        out = bytes(looked.exec_run(["nslookup", "api"]).output).decode()
        assert "NXDOMAIN" in out, out
    finally:
        ok(run_cli(ws, "down", "--rmi", env=env))
        assert leftovers(docker_client, project) == []
        # The worker removes its task containers once the swarm tells it the service is gone.
        wait_for(
            "the worker's task containers to go",
            lambda: leftovers(node.client, project) == [],
            timeout=30,
            interval=0.5,
        )


def test_a_built_image_goes_to_every_node_and_down_rmi_takes_it_back(
    node: Node, docker_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ws = copy_workspace(tmp_path_factory, "rebuild")
    project = project_of(ws)
    env = cli_env(MESHLOCAL_NODE_ENGINE="tcp://{address}:2375")
    ok(run_cli(ws, "up", "-d", "--engine", "swarm", "--timeout", "180", env=env))
    image = tasks_of(docker_client, project, "app")[0]["Spec"]["ContainerSpec"]["Image"]
    tag = image.split("@")[0]
    assert node.client.images.get(tag).id == docker_client.images.get(tag).id
    ok(run_cli(ws, "down", "--rmi", env=env))
    with pytest.raises(docker.errors.ImageNotFound):
        node.client.images.get(tag)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(tag)


def test_a_crash_loop_fails_up_at_once_and_leaves_nothing(
    swarm: Swarm, docker_client: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ws = copy_workspace(tmp_path_factory, "crashloop")
    project = project_of(ws)
    env = cli_env(MESHLOCAL_NODE_ENGINE="tcp://{address}:2375")  # a worker may have joined
    up = run_cli(ws, "up", "-d", "--engine", "swarm", "--timeout", "120", env=env)
    err = up.stderr
    assert up.returncode != 0 and "Traceback" not in err, err
    assert "boom-1 keeps crashing" in err and "exit code 3" in err, err
    assert leftovers(docker_client, project) == []
    assert docker_client.api.services(filters={"label": f"meshlocal.project={project}"}) == []
