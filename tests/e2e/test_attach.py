"""Foreground `up`: attach to a running mesh or own a new one; Ctrl-C exits 130 in every phase."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from meshlocal.runtime import labels as L

from .conftest import ZERO, counts, labelled, ok, popen_cli, project_of, run_cli, wait_for

pytestmark = pytest.mark.docker


def read_until(proc: subprocess.Popen[str], text: str, lines: list[str], timeout: float) -> None:
    """Collect the merged output in `lines` (from a thread: reads block) until one holds `text`."""
    if not any(isinstance(t, _Reader) and t.proc is proc for t in threading.enumerate()):
        _Reader(proc, lines).start()

    def seen() -> bool:
        return any(text in line for line in list(lines)) or _ended(proc, text, lines)

    wait_for(repr(text), seen, timeout=timeout, interval=0.05)


class _Reader(threading.Thread):
    def __init__(self, proc: subprocess.Popen[str], lines: list[str]) -> None:
        super().__init__(daemon=True)
        self.proc = proc
        self.lines = lines

    def run(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)


def _ended(proc: subprocess.Popen[str], text: str, lines: list[str]) -> bool:
    if proc.poll() is not None:
        time.sleep(0.2)  # the reader's last lines
        if not any(text in line for line in list(lines)):
            raise AssertionError(f"exited ({proc.returncode}) first: {''.join(lines)}")
    return False


def interrupt(proc: subprocess.Popen[str], lines: list[str]) -> str:
    """SIGINT, then the rest of the output; the process must end by itself."""
    try:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        for reader in threading.enumerate():
            if isinstance(reader, _Reader) and reader.proc is proc:
                reader.join(timeout=10)  # every line, up to the end of the pipe
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    out = "".join(lines)
    assert "Traceback" not in out, out
    return out


def test_attach_to_a_running_mesh_then_ctrl_c_leaves_it_running(
    workspace: Path, docker_client: Any
) -> None:
    project = project_of(workspace)
    ok(run_cli(workspace, "up", "-d", "--timeout", "60"))
    before = labelled(docker_client, project)
    proc = popen_cli(workspace, "up")
    lines: list[str] = []
    read_until(proc, "attaching to the running mesh single/test", lines, timeout=60)
    assert "Ctrl-C detaches and leaves it running" in "".join(lines), lines
    out = interrupt(proc, lines)
    assert proc.returncode == 130, out
    assert "detached; single/test keeps running" in out, out
    assert "removing containers" not in out, out
    assert labelled(docker_client, project) == before
    assert json.loads(ok(run_cli(workspace, "ps", "--json")).stdout)["ready"] is True


def test_ctrl_c_in_a_foreground_up_that_started_the_mesh_removes_it_and_exits_130(
    workspace: Path, docker_client: Any
) -> None:
    project = project_of(workspace)
    proc = popen_cli(workspace, "up")
    lines: list[str] = []
    read_until(
        proc,
        "Attached. Press Ctrl-C to stop and remove the containers and network.",
        lines,
        timeout=60,
    )
    out = interrupt(proc, lines)
    assert proc.returncode == 130, out
    assert "Interrupted (Ctrl-C) while attached: single/test was removed" in out, out
    assert counts(labelled(docker_client, project)) == ZERO


@pytest.mark.ws("rebuild")
def test_ctrl_c_during_a_foreground_build_undoes_it_and_exits_130(
    workspace: Path, docker_client: Any
) -> None:
    project = project_of(workspace)
    dockerfile = workspace / "app" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "RUN sleep 20\n")
    proc = popen_cli(workspace, "up")
    lines: list[str] = []
    read_until(proc, "RUN sleep 20", lines, timeout=60)  # the build's own output: it is building
    started = time.monotonic()
    out = interrupt(proc, lines)
    assert time.monotonic() - started < 15, out
    assert proc.returncode == 130, out
    assert "Interrupted (Ctrl-C) during `up`, before the mesh was up (building images)" in out, out
    assert counts(labelled(docker_client, project)) == ZERO
    # The build the daemon was running is cancelled, not tagged later.
    time.sleep(2)
    assert counts(labelled(docker_client, project)) == ZERO
    assert not docker_client.images.list(name=f"meshlocal/{project}-app")


@pytest.mark.ws("rebuild")
def test_down_removes_superseded_images_and_keeps_the_current_one(
    workspace: Path, docker_client: Any
) -> None:
    project = project_of(workspace)
    ok(run_cli(workspace, "up", "-d", "--timeout", "60"))
    (workspace / "app" / "index.html").write_text("version 2\n")
    ok(run_cli(workspace, "up", "-d", "--timeout", "60"))  # rebuilt and rolled
    images = docker_client.api.images(filters={"label": f"{L.PROJECT}={project}"})
    tagged = sorted(len(set(i.get("RepoTags") or ()) - {"<none>:<none>"}) for i in images)
    assert tagged == [0, 1], images  # the predecessor is untagged, and labelled
    current = docker_client.images.get(f"meshlocal/{project}-app:test").id
    down = ok(run_cli(workspace, "down")).stderr
    assert "(superseded)" in down, down
    # The predecessor is gone; the current image is kept, as compose keeps it.
    assert labelled(docker_client, project)["images"] == {current}


def test_ls_shows_the_workspace_of_a_mesh_that_has_only_its_network(
    workspace: Path, docker_client: Any
) -> None:
    from meshlocal.runtime.engine import Engine

    project = project_of(workspace)
    Engine(docker_client).ensure_network(project, "test", workspace)
    listed = json.loads(ok(run_cli(workspace, "ls", "--json")).stdout)
    row = next(r for r in listed if r["project"] == project)
    assert (row["workspace"], row["workspace_exists"], row["containers"]) == (
        str(workspace),
        True,
        0,
    )
    table = ok(run_cli(workspace, "ls")).stdout
    line = next(ln for ln in table.splitlines() if project in ln)
    assert str(workspace) in line and "unknown" not in line and "gone" not in line, table
