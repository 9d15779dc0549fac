"""`up --env-var-override` and `--port-override` on a real engine.

One mesh: the `single` workspace (one Load Balanced Web Service on port
8080) with a GREETING variable in its manifest. The overrides reach the
replica and the host port, `ps` shows them, and an `up -d` without them
rolls them back.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    container_of,
    copy_workspace,
    failed,
    leftovers,
    ok,
    project_of,
    run_cli,
    sh,
    wait_for,
)

pytestmark = pytest.mark.docker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(client: Any, container: str) -> dict[str, str]:
    code, out = sh(client, container, "env")
    assert code == 0, out
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def _get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return str(resp.read().decode())
    except OSError:
        return None


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> Iterator[tuple[Path, str, int]]:
    """The workspace, its project, and the host port given with --port-override."""
    ws = copy_workspace(tmp_path_factory, "single")
    manifest = ws / "copilot" / "web" / "manifest.yml"
    manifest.write_text(manifest.read_text() + "\nvariables:\n  GREETING: manifest\n")
    project = project_of(ws)
    port = _free_port()
    try:
        ok(
            run_cli(
                ws,
                "up",
                "-d",
                "--env-var-override",
                "web:GREETING=hi",
                "--env-var-override",
                "DSN=a=b:c",
                "--port-override",
                f"{port}:8080",
                "--timeout",
                "120",
            )
        )
        yield ws, project, port
    finally:
        run_cli(ws, "down", "--rmi", timeout=120)
        assert leftovers(docker_client, project) == []


def test_overrides_reach_the_replica_the_host_port_and_ps(
    mesh: tuple[Path, str, int], docker_client: Any
) -> None:
    ws, project, port = mesh
    first = container_of(docker_client, project, "web")
    env = _env(docker_client, first)
    assert env["GREETING"] == "hi"  # over the manifest's
    assert env["DSN"] == "a=b:c"  # no prefix: every container
    assert env["COPILOT_LB_DNS"] == f"localhost:{port}"
    page = wait_for(
        "the public endpoint on the overridden port", lambda: _get(f"http://127.0.0.1:{port}/"), 30
    )
    assert page.strip() == _env(docker_client, first)["HOSTNAME"]

    ps = ok(run_cli(ws, "ps"))
    assert (
        f"overrides: web: GREETING=hi; all containers: DSN=a=b:c; public endpoint "
        f"127.0.0.1:{port} (--port-override {port}:8080)"
    ) in ps.stdout
    state = json.loads(ok(run_cli(ws, "ps", "--json")).stdout)
    assert state["overrides"] == {
        "env": [
            {"target": "web", "key": "GREETING", "value": "hi"},
            {"target": None, "key": "DSN", "value": "a=b:c"},
        ],
        "ports": [{"host": port, "service_port": 8080}],
    }
    assert state["public_url"] == f"http://127.0.0.1:{port}"

    # Mistakes fail before anything starts: the running replica is untouched.
    stderr = failed(run_cli(ws, "up", "-d", "--port-override", f"{port}:81"))
    assert "no service listens on port 81" in stderr
    assert "ports that can be overridden: 8080 (web)" in stderr
    stderr = failed(run_cli(ws, "up", "-d", "--env-var-override", "nope:X=1"))
    assert 'no service "nope" in environment test of application single' in stderr
    proc = run_cli(ws, "up", "-d", "--env-var-override", "web:GREETING")
    assert proc.returncode == 2 and "has no '='" in proc.stderr, proc.stderr
    assert container_of(docker_client, project, "web") == first


def test_up_without_them_rolls_them_back(mesh: tuple[Path, str, int], docker_client: Any) -> None:
    ws, project, port = mesh
    before = container_of(docker_client, project, "web")
    ok(run_cli(ws, "up", "-d", "--timeout", "120"))
    after = container_of(docker_client, project, "web")
    assert after != before  # rolled: its environment changed
    env = _env(docker_client, after)
    assert env["GREETING"] == "manifest"
    assert "DSN" not in env
    # Kept only while given: the public endpoint leaves the overridden port.
    ps = ok(run_cli(ws, "ps"))
    assert "overrides:" not in ps.stdout
    state = json.loads(ok(run_cli(ws, "ps", "--json")).stdout)
    assert state["overrides"] == {"env": [], "ports": []}
    assert state["public_url"] != f"http://127.0.0.1:{port}"
    assert wait_for("the public endpoint", lambda: _get(state["public_url"] + "/"), 30)
    assert env["COPILOT_LB_DNS"] == "localhost:" + state["public_url"].rsplit(":", 1)[1]
