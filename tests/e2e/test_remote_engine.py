"""meshlocal against a remote engine: a second Docker engine reached over TCP.

The engine is Debian's docker.io in a container (nodes.py), so nothing the
mesh runs can land on the local engine by mistake, and its 127.0.0.1 is not
this machine's: the admin API, the public endpoint and `forward` must go
through the engine's API. The smoke checks of the e2e suite run there:
Service Connect round robin, Service Discovery answers, NXDOMAIN for
non-clients, scale, down leaving nothing.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from .nodes import Node, ensure_node_image, node_network, remove_leftover_nodes

pytestmark = [pytest.mark.docker, pytest.mark.slow]

NETWORK = "meshlocal-test-nodes"


@pytest.fixture(scope="module")
def node(docker_client: Any, busybox_image: str, dataplane_image: str) -> Iterator[Node]:
    remove_leftover_nodes(docker_client)
    image = ensure_node_image(docker_client)
    net = node_network(docker_client, NETWORK)
    engine = Node(docker_client, "meshlocal-test-node-1", NETWORK, image)
    try:
        # No registry: the images a mesh needs go over by save/load, as a user
        # would copy them (the data plane's would otherwise be built there).
        engine.load([busybox_image, dataplane_image])  # the latter holds the Python base
        yield engine
    finally:
        engine.remove()
        net.remove()


@pytest.fixture(scope="module")
def remote_mesh(
    node: Node, tmp_path_factory: pytest.TempPathFactory, docker_client: Any
) -> Iterator[tuple[Path, str, dict[str, str]]]:
    ws = copy_workspace(tmp_path_factory, "mini")
    project = project_of(ws)
    env = cli_env(DOCKER_HOST=node.url)
    try:
        ok(run_cli(ws, "up", "-d", "--timeout", "120", env=env))
        yield ws, project, env
    finally:
        run_cli(ws, "down", env=env)
        assert leftovers(node.client, project) == [], "down left something on the remote engine"
        assert leftovers(docker_client, project) == [], "the local engine got containers"


def ps_json(ws: Path, env: dict[str, str]) -> dict[str, Any]:
    state: dict[str, Any] = json.loads(ok(run_cli(ws, "ps", "--json", env=env)).stdout)
    return state


def wget(node: Node, container: str, url: str) -> str:
    result = node.client.containers.get(container).exec_run(
        ["sh", "-c", f"timeout 10 wget -q -O - {url}"]  # -T segfaults this busybox
    )
    assert result.exit_code == 0, result.output
    return bytes(result.output).decode().strip()


def replica(node: Node, project: str, service: str, index: int = 1) -> str:
    return f"{project}-test-{service}-{index}"


def test_ps_says_the_mesh_runs_on_the_remote_engine(
    remote_mesh: tuple[Path, str, dict[str, str]], node: Node, docker_client: Any
) -> None:
    ws, project, env = remote_mesh
    state = ps_json(ws, env)
    assert state["engine"]["url"] == node.url
    assert state["engine"]["remote"] is True
    assert state["engine"]["host"] == node.name
    assert state["ready"]
    assert {r["name"] for r in state["services"]["api"]["replicas"]} == {"api-1", "api-2", "api-3"}
    # The admin URL is this machine's loopback (a tunnel), not the engine's published port.
    assert state["page_url"].startswith("http://127.0.0.1:")
    table = ok(run_cli(ws, "ps", env=env)).stdout
    assert f"Engine: {node.url}" in table and "`meshlocal forward`" in table
    # Nothing of this mesh on the local engine.
    assert leftovers(docker_client, project) == []


def test_service_connect_round_robin_and_discovery_on_the_remote_engine(
    remote_mesh: tuple[Path, str, dict[str, str]], node: Node
) -> None:
    ws, project, env = remote_mesh
    client = replica(node, project, "client")
    # A connection per wget, so TCP Service Connect cycles through the replicas.
    seen = [wget(node, client, "http://api/").split()[0] for _ in range(6)]
    assert len(set(seen)) == 3, seen
    assert seen[:3] == seen[3:], f"not round robin: {seen}"
    vip = json.loads(
        ok(run_cli(ws, "resolve", "api", "--from", "client", "--json", env=env)).stdout
    )
    assert vip["rcode"] == "NOERROR" and len(vip["answers"]) == 1
    assert "service connect endpoint" in vip["meaning"]
    legacy = run_cli(ws, "resolve", "api", "--from", "legacy", env=env)
    assert legacy.returncode == 1 and "NXDOMAIN" in legacy.stdout, legacy.stdout + legacy.stderr
    sd = json.loads(
        ok(
            run_cli(ws, "resolve", "api.test.mini.local", "--from", "legacy", "--json", env=env)
        ).stdout
    )
    state = ps_json(ws, env)
    assert sorted(sd["answers"]) == sorted(
        r["address"] for r in state["services"]["api"]["replicas"]
    )


def test_scale_and_a_killed_replica_leave_dns(
    remote_mesh: tuple[Path, str, dict[str, str]], node: Node
) -> None:
    ws, project, env = remote_mesh
    ok(run_cli(ws, "scale", "api=4", env=env))
    assert len(ps_json(ws, env)["services"]["api"]["replicas"]) == 4
    victim = node.client.containers.get(replica(node, project, "api", 4))
    victim.reload()
    address = next(iter(victim.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    victim.kill()

    def gone() -> bool:
        found = json.loads(
            run_cli(
                ws, "resolve", "api.test.mini.local", "--from", "legacy", "--json", env=env
            ).stdout
        )
        return address not in found["answers"]

    wait_for("the killed replica to leave DNS", gone, timeout=30, interval=0.5)
    ok(run_cli(ws, "scale", "api=3", env=env))


def test_forward_reaches_the_public_endpoint_and_the_mesh_page(
    remote_mesh: tuple[Path, str, dict[str, str]], node: Node
) -> None:
    ws, project, env = remote_mesh
    with forwarded(ws, env) as (public, page):
        hosts = set()
        for _ in range(4):
            with urllib.request.urlopen(public + "/", timeout=10) as resp:
                hosts.add(resp.read().decode().strip())
        assert hosts == {replica(node, project, "web", 1), replica(node, project, "web", 2)}
        with urllib.request.urlopen(page + "v1/state", timeout=10) as resp:
            assert json.loads(resp.read())["ready"] is True


def test_a_docker_context_selects_the_remote_engine(
    remote_mesh: tuple[Path, str, dict[str, str]], node: Node, tmp_path: Path
) -> None:
    ws, _, env = remote_mesh
    config = tmp_path / "docker-config"
    meta = config / "contexts" / "meta"
    import hashlib

    folder = meta / hashlib.sha256(b"node").hexdigest()
    folder.mkdir(parents=True)
    (folder / "meta.json").write_text(
        json.dumps(
            {
                "Name": "node",
                "Metadata": {},
                "Endpoints": {"docker": {"Host": node.url, "SkipTLSVerify": False}},
            }
        )
    )
    plain = {k: v for k, v in env.items() if k != "DOCKER_HOST"}
    plain["DOCKER_CONFIG"] = str(config)
    state = json.loads(ok(run_cli(ws, "--context", "node", "ps", "--json", env=plain)).stdout)
    assert state["engine"]["context"] == "node" and state["engine"]["url"] == node.url
    # Without it, the local engine has no such mesh.
    assert "no mesh is running" in failed(run_cli(ws, "ps", env=plain))
    assert "no Docker context named nope" in failed(
        run_cli(ws, "--context", "nope", "ps", env=plain)
    )


def test_host_mode_and_open_say_why_not_on_a_remote_engine(
    remote_mesh: tuple[Path, str, dict[str, str]],
) -> None:
    ws, _, env = remote_mesh
    assert "is remote" in failed(run_cli(ws, "open", "--print", env=env))
    err = failed(run_cli(ws, "up", "-d", "--dataplane", "host", env=env))
    assert "host mode" in err and "remote" in err


def test_exec_logs_and_run_reach_the_remote_engine(
    remote_mesh: tuple[Path, str, dict[str, str]], node: Node
) -> None:
    ws, project, env = remote_mesh
    out = ok(run_cli(ws, "exec", "-T", "api", "--", "hostname", env=env)).stdout.strip()
    assert out == replica(node, project, "api", 1)
    logs = ok(run_cli(ws, "logs", "api", env=env)).stdout
    assert "api up:" in logs
    # A one-off task is a Service Connect client of its service: `api` resolves for it.
    ran = run_cli(ws, "run", "-T", "client", "--", "nslookup", "api", env=env)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "172." in ran.stdout or "10." in ran.stdout, ran.stdout
