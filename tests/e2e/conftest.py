"""Acceptance tests for `meshlocal up/down/ps/logs/resolve/scale` against the real engine.

Every test workspace is copied to a temporary directory first: the project
id hashes the workspace root, so each copy is its own project and nothing
here collides with a mesh someone runs from the repository.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meshlocal.runtime import labels as L

WORKSPACES = Path(__file__).parent / "workspaces"
MESHLOCAL = Path(sys.executable).with_name("meshlocal")
T = TypeVar("T")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "ws(name): the test workspace a fixture copies")


def copy_workspace(factory: pytest.TempPathFactory, name: str) -> Path:
    dest = factory.mktemp(f"ws-{name}") / name
    shutil.copytree(WORKSPACES / name, dest)
    return dest


def project_of(workspace: Path) -> str:
    from meshlocal.manifest import find_workspace

    return L.project_id(find_workspace(workspace).app, find_workspace(workspace).root)


def _not_removing(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Containers whose removal the engine has not accepted.

    Docker 20.10 on fuse-overlayfs at times never finishes a removal it
    accepted ("Removal In Progress" for good, no name left; seen on two busybox
    replicas of test_watch's mesh after `down`, until the engine restarts).
    meshlocal asked, and the engine took it on: that is not a leftover.
    """
    return [r for r in rows if r.get("State") != "removing"]


def leftovers(client: Any, project: str) -> list[str]:
    """Everything still labelled with the project: containers, networks, volumes."""
    label = f"{L.PROJECT}={project}"
    # One list call each (no per-item inspect): containers may vanish meanwhile.
    rows = _not_removing(client.api.containers(all=True, filters={"label": label}))
    names = [str((r.get("Names") or [r["Id"][:12]])[0]).lstrip("/") for r in rows]
    names += [f"network {n['Name']}" for n in client.api.networks(filters={"label": label})]
    volumes = client.api.volumes(filters={"label": label}).get("Volumes") or []
    names += [f"volume {v['Name']}" for v in volumes]
    return names


def labelled(client: Any, project: str) -> dict[str, set[str]]:
    """Ids of the containers, networks and images labelled with the project."""
    label = f"{L.PROJECT}={project}"
    rows = _not_removing(client.api.containers(all=True, filters={"label": label}))
    return {
        "containers": {str(r["Id"]) for r in rows},
        "networks": {str(n["Id"]) for n in client.api.networks(filters={"label": label})},
        "images": {str(i["Id"]) for i in client.api.images(filters={"label": label})},
    }


def counts(found: Mapping[str, set[str]]) -> dict[str, int]:
    return {kind: len(ids) for kind, ids in found.items()}


ZERO = {"containers": 0, "networks": 0, "images": 0}


@pytest.fixture
def workspace(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> Iterator[Path]:
    """A fresh copy of the workspace named by the test's `ws` mark, downed afterwards.

    Nothing labelled with its project may be left: containers, networks, images.
    """
    marker = request.node.get_closest_marker("ws")
    ws = copy_workspace(tmp_path_factory, marker.args[0] if marker else "single")
    yield ws
    run_cli(ws, "down", "--rmi")  # a temporary workspace: its images go too
    assert counts(labelled(docker_client, project_of(ws))) == ZERO


def cli_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **extra}
    env.pop("MESHLOCAL_DATAPLANE", None)
    return env


def run_cli(
    workspace: Path,
    *args: str,
    timeout: float = 180.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`meshlocal -C <workspace> ARGS` as a user runs it."""
    return subprocess.run(
        [str(MESHLOCAL), "-C", str(workspace), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(env) if env is not None else cli_env(),
        check=False,
    )


@contextlib.contextmanager
def detached_mesh(
    factory: pytest.TempPathFactory, docker_client: Any, name: str, *, rmi: bool = False
) -> Iterator[tuple[Path, str, subprocess.CompletedProcess[str]]]:
    """A copy of workspace `name` brought up with `up -d`: (workspace, project, up's
    output); `down` after, which must leave nothing labelled with the project."""
    ws = copy_workspace(factory, name)
    project = project_of(ws)
    try:
        yield ws, project, ok(run_cli(ws, "up", "-d", "--timeout", "120"))
    finally:
        run_cli(ws, "down", *(["--rmi"] if rmi else []))
        left = leftovers(docker_client, project)
        assert left == [], f"down left behind: {left}"


def popen_cli(workspace: Path, *args: str) -> subprocess.Popen[str]:
    """`meshlocal -C <workspace> ARGS` in the background, stdout and stderr merged."""
    return subprocess.Popen(
        [str(MESHLOCAL), "-C", str(workspace), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=cli_env(PYTHONUNBUFFERED="1"),
    )


@contextlib.contextmanager
def forwarded(workspace: Path, env: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    """`meshlocal forward` running: (public endpoint URL, mesh page URL) on 127.0.0.1."""
    proc = subprocess.Popen(
        [str(MESHLOCAL), "-C", str(workspace), "forward"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**env, "PYTHONUNBUFFERED": "1"},
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 30
        assert proc.stdout is not None
        while time.monotonic() < deadline and not any("Ctrl-C" in line for line in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
        text = "".join(lines)
        public = re.search(r"Public endpoint: (http://127\.0\.0\.1:\d+)", text)
        page = re.search(r"Mesh page: (http://127\.0\.0\.1:\d+/)", text)
        assert public and page, text
        yield public.group(1), page.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def failed(proc: subprocess.CompletedProcess[str]) -> str:
    """A failure as a user sees it: non-zero, a message, no traceback. Returns stderr."""
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert "error:" in proc.stderr, proc.stderr
    return proc.stderr


def ok(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
    """Bounded wait until fn() returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def sh(client: Any, container: str, script: str, timeout: float = 30.0) -> tuple[int, str]:
    """Run a busybox shell script inside a container: (exit code, output)."""
    del timeout  # docker exec has no timeout; scripts here are bounded themselves
    result = client.containers.get(container).exec_run(["sh", "-c", script])
    return int(result.exit_code), bytes(result.output).decode(errors="replace")


_ADDR = re.compile(r"^Address:\s*(\S+)", re.M)


def nslookup(client: Any, container: str, name: str) -> tuple[str, list[str]]:
    """busybox nslookup through the container's own resolver: (status, IPv4 answers).

    Status is NXDOMAIN, NOERROR, or the raw output when it is neither.
    """
    code, out = sh(client, container, f"nslookup {name}")
    if "NXDOMAIN" in out:
        return "NXDOMAIN", []
    # The first Address line is the server (127.0.0.11:53); answers follow `Name:`.
    _, _, answers = out.partition("Name:")
    found = [a for a in _ADDR.findall(answers) if re.fullmatch(r"[\d.]+", a)]
    return ("NOERROR" if code == 0 else out), sorted(found)


def replica_containers(client: Any, project: str, service: str) -> list[Any]:
    filters = {"label": [f"{L.PROJECT}={project}", f"{L.SERVICE}={service}", f"{L.ROLE}=replica"]}
    return sorted(client.containers.list(filters=filters), key=lambda c: int(c.labels[L.REPLICA]))


def container_of(client: Any, project: str, service: str, index: int = 1) -> str:
    for c in replica_containers(client, project, service):
        if c.labels[L.REPLICA] == str(index):
            return str(c.id)
    raise AssertionError(f"no running {service}-{index} in {project}")


@pytest.fixture
def assert_clean(docker_client: Any) -> Iterator[Callable[[str], None]]:
    def check(project: str) -> None:
        left = leftovers(docker_client, project)
        assert left == [], f"left behind: {left}"

    yield check


# -- a swarm, for the swarm step only (scripts/test.sh): one per session --------------------


@pytest.fixture(scope="session")
def swarm_cluster(docker_client: Any) -> Iterator[Any]:
    """This engine as a swarm manager for the session; left as it was after."""
    from .nodes import Swarm, ensure_node_image, remove_leftover_nodes

    remove_leftover_nodes(docker_client)
    ensure_node_image(docker_client)
    try:
        cluster = Swarm(docker_client, "meshlocal-test-swarm")
    except RuntimeError as exc:
        pytest.skip(str(exc))
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture(scope="session")
def swarm_worker(swarm_cluster: Any, docker_client: Any) -> Any:
    """A second node, joined on first use: the tests before run on one node."""
    from .nodes import Node, ensure_node_image

    worker = Node(
        docker_client,
        "meshlocal-test-swarm-worker",
        "meshlocal-test-swarm",
        ensure_node_image(docker_client),
    )
    swarm_cluster.join(worker)  # removed by the cluster's close()
    return worker
