"""`up` failures, Ctrl-C, SIGKILL, `down`, and environments side by side.

Each failure must be a clear message and a non-zero exit, never a traceback,
and whatever `up` left must go with one `down`.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from meshlocal.runtime import labels as L

from .conftest import (
    cli_env,
    copy_workspace,
    failed,
    leftovers,
    ok,
    popen_cli,
    project_of,
    run_cli,
    wait_for,
)

pytestmark = pytest.mark.docker


@pytest.mark.ws("buildfail")
def test_image_build_error_names_the_service_and_shows_the_build_output(
    workspace: Path, docker_client: Any
) -> None:
    err = failed(run_cli(workspace, "up", "-d", "--timeout", "60"))
    assert "broken/manifest.yml" in err and "building image" in err, err
    assert "returned a non-zero code: 7" in err, err
    assert "compiling the broken service" in err, err  # the build's own output
    assert leftovers(docker_client, project_of(workspace)) == []  # failed before starting


@pytest.mark.ws("crashloop")
def test_crash_loop_names_the_service_and_shows_its_last_log_lines(workspace: Path) -> None:
    err = failed(run_cli(workspace, "up", "-d", "--timeout", "90"))
    assert "boom-1 keeps crashing" in err and "exit code 3" in err, err
    last_logs = err.split("last log lines:", 1)[1]
    assert "boom" in last_logs, err


@pytest.mark.parametrize("mode", ["container", "host"])
def test_taken_public_port_is_reported(workspace: Path, mode: str) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        started = time.monotonic()
        err = failed(
            run_cli(
                workspace, "up", "-d", "--dataplane", mode, "--port", str(port), "--timeout", "60"
            )
        )
        elapsed = time.monotonic() - started
    assert str(port) in err and ("already in use" in err or "address already in use" in err), err
    assert elapsed < 45, f"took {elapsed:.0f} s to report a taken port"


def test_no_docker_engine_is_a_message_and_exit_3(workspace: Path) -> None:
    env = cli_env(DOCKER_HOST="unix:///nonexistent.sock")
    for args in (("up", "-d"), ("ps",), ("down",)):
        proc = run_cli(workspace, *args, env=env, timeout=60)
        assert proc.returncode == 3, (args, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert "no Docker engine answers at unix:///nonexistent.sock" in proc.stderr, proc.stderr


def test_down_is_idempotent(workspace: Path, docker_client: Any) -> None:
    ok(run_cli(workspace, "up", "-d", "--timeout", "60"))
    first = ok(run_cli(workspace, "down")).stderr
    assert "Removed container" in first and "Removed network" in first
    assert leftovers(docker_client, project_of(workspace)) == []
    again = ok(run_cli(workspace, "down")).stderr
    assert "Nothing to remove" in again
    gone = run_cli(workspace, "ps")
    assert gone.returncode != 0 and "no mesh is running" in gone.stderr


@pytest.mark.parametrize("mode", ["container", "host"])
def test_ctrl_c_in_foreground_up_tears_everything_down(
    workspace: Path, docker_client: Any, mode: str
) -> None:
    project = project_of(workspace)
    proc = popen_cli(workspace, "up", "--dataplane", mode)
    lines: list[str] = []
    try:
        assert proc.stdout is not None

        # Attached once the replica's first log line comes through, compose-style.
        def attached() -> bool:
            line = proc.stdout.readline() if proc.stdout else ""
            if line:
                lines.append(line)
            elif proc.poll() is not None:
                raise AssertionError(f"up exited early ({proc.returncode}): {''.join(lines)}")
            return any(re.match(r"web-1 +\| web ready on ", ln) for ln in lines)

        wait_for("the attached log stream", attached, timeout=120, interval=0)
        assert leftovers(docker_client, project) != []
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=60)
        lines.append(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    output = "".join(lines)
    assert "Traceback" not in output, output
    assert "Stopping: removing containers and network" in output, output
    assert leftovers(docker_client, project) == []


@pytest.mark.parametrize("mode", ["container", "host"])
def test_sigkill_mid_start_then_down_leaves_nothing(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
    mode: str,
) -> None:
    """The agent outlives a SIGKILLed CLI (a container, or a process of its own): down ends it."""
    ws = copy_workspace(tmp_path_factory, "mini")
    project = project_of(ws)
    proc = popen_cli(ws, "up", "-d", "--dataplane", mode)
    try:
        # Kill it once the data plane has started creating replicas.
        label = {"label": [f"{L.PROJECT}={project}", f"{L.ROLE}=replica"]}
        wait_for(
            "the first replica container",
            lambda: docker_client.api.containers(all=True, filters=label),
            timeout=120,
            interval=0.05,
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    ok(run_cli(ws, "down"))
    assert leftovers(docker_client, project) == []
    time.sleep(2)  # nothing may come back: no agent survives to replace what down removed
    assert leftovers(docker_client, project) == []


def test_two_workspaces_run_side_by_side(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> None:
    first = copy_workspace(tmp_path_factory, "single")
    second = copy_workspace(tmp_path_factory, "single")
    projects = [project_of(first), project_of(second)]
    assert projects[0] != projects[1]
    procs: list[subprocess.Popen[str]] = []
    try:
        # Both at once: neither may trip over the other's network, names or ports.
        procs += [popen_cli(ws, "up", "-d", "--timeout", "90") for ws in (first, second)]
        for proc in procs:
            out, _ = proc.communicate(timeout=150)
            assert proc.returncode == 0 and "Traceback" not in out, out
        states = [json.loads(ok(run_cli(ws, "ps", "--json")).stdout) for ws in (first, second)]
        assert states[0]["address"] != states[1]["address"]
        urls = [s["public_url"] for s in states]
        assert urls[0] != urls[1]
        for project, url in zip(projects, urls, strict=True):
            with urllib.request.urlopen(url + "/", timeout=5) as resp:
                assert resp.read().decode().strip() == L.container_name(project, "test", "web", 1)
        nets = {n.name for n in docker_client.networks.list(filters={"label": L.PROJECT})}
        assert {f"{p}-test" for p in projects} <= nets
        ok(run_cli(first, "down"))
        assert leftovers(docker_client, projects[0]) == []
        assert json.loads(ok(run_cli(second, "ps", "--json")).stdout)["ready"] is True
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        for ws in (first, second):
            run_cli(ws, "down", "--rmi")
    for project in projects:
        assert leftovers(docker_client, project) == []
