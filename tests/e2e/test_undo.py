"""A failed `up` undoes what that attempt created, and only that.

Counted by meshlocal's labels before and after each failure: containers,
networks and images must be as they were (0 for a fresh mesh), and an
already-running mesh keeps running.
"""

from __future__ import annotations

import json
import re
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from meshlocal.runtime import labels as L

from .conftest import (
    ZERO,
    counts,
    failed,
    labelled,
    ok,
    popen_cli,
    project_of,
    replica_containers,
    run_cli,
    wait_for,
)

pytestmark = pytest.mark.docker


def add_broken_service(ws: Path) -> None:
    """A service whose image build fails, after a pause: app's build (in parallel) is done."""
    (ws / "broken").mkdir()
    (ws / "broken" / "Dockerfile").write_text(
        'ARG BUSYBOX\nFROM ${BUSYBOX}\nRUN sleep 5; echo "compiling the broken service" && exit 7\n'
    )
    (ws / "copilot" / "broken").mkdir()
    (ws / "copilot" / "broken" / "manifest.yml").write_text(
        "name: broken\ntype: Backend Service\nimage:\n  build:\n"
        "    dockerfile: broken/Dockerfile\n    context: broken\n"
        "    args:\n      BUSYBOX: ${BUSYBOX_IMAGE}\n  port: 80\n"
    )


@pytest.mark.ws("rebuild")
def test_failed_build_of_one_service_removes_the_image_built_before_it(
    workspace: Path, docker_client: Any
) -> None:
    project = project_of(workspace)
    add_broken_service(workspace)
    assert counts(labelled(docker_client, project)) == ZERO
    err = failed(run_cli(workspace, "up", "-d", "--timeout", "60"))
    assert "non-zero code: 7" in err, err
    assert re.search(r"undo: removed .*\b1 image", err), err  # app's, built before broken failed
    assert counts(labelled(docker_client, project)) == ZERO


def test_taken_port_leaves_nothing(workspace: Path, docker_client: Any) -> None:
    project = project_of(workspace)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        err = failed(run_cli(workspace, "up", "-d", "--port", str(port), "--timeout", "60"))
    assert f"port {port} on 127.0.0.1 is already in use" in err, err
    assert counts(labelled(docker_client, project)) == ZERO


@pytest.mark.ws("unhealthy")
def test_replicas_not_healthy_in_time_are_undone(workspace: Path, docker_client: Any) -> None:
    project = project_of(workspace)
    err = failed(run_cli(workspace, "up", "-d", "--timeout", "3"))
    assert "not healthy after 3s" in err, err
    network = L.network_name(project, "test")
    # The data plane, its controller and the replicas started (2, or 1 if the
    # second was not yet created).
    assert re.search(rf"undo: removed [34] containers, network {network}\n", err), err
    assert counts(labelled(docker_client, project)) == ZERO


@pytest.mark.ws("unhealthy")
def test_sigint_while_up_d_waits_undoes_and_exits_130(workspace: Path, docker_client: Any) -> None:
    project = project_of(workspace)
    proc = popen_cli(workspace, "up", "-d", "--timeout", "120")
    try:
        replicas = {"label": [f"{L.PROJECT}={project}", f"{L.ROLE}=replica"]}
        wait_for(
            "both replicas running",
            lambda: len(docker_client.api.containers(filters=replicas)) == 2,
            timeout=60,
        )
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 130, out
    assert "Traceback" not in out, out
    assert "Interrupted (Ctrl-C) during `up`, before every replica was healthy" in out, out
    assert re.search(r"undo: removed 4 containers, network \S+\n", out), out
    assert counts(labelled(docker_client, project)) == ZERO


@pytest.mark.ws("rebuild")
def test_a_running_mesh_is_left_as_it_was_after_a_failed_re_up(
    workspace: Path, docker_client: Any
) -> None:
    project = project_of(workspace)
    ok(run_cli(workspace, "up", "-d", "--timeout", "60"))
    before = labelled(docker_client, project)
    assert counts(before) == {"containers": 3, "networks": 1, "images": 1}
    tag = f"meshlocal/{project}-app:test"
    image = docker_client.images.get(tag).id
    # app changes (so it is rebuilt first), then broken's build fails.
    (workspace / "app" / "index.html").write_text("version 2\n")
    add_broken_service(workspace)
    err = failed(run_cli(workspace, "up", "-d", "--timeout", "60"))
    assert "non-zero code: 7" in err, err
    assert "undo: removed 1 image" in err and "left running" in err, err
    assert labelled(docker_client, project) == before
    assert docker_client.images.get(tag).id == image  # the tag names the running image again
    state = json.loads(ok(run_cli(workspace, "ps", "--json")).stdout)
    assert state["ready"] is True


@pytest.mark.ws("rebuild")
def test_a_running_mesh_gets_its_configuration_back_after_a_re_up_that_times_out(
    workspace: Path, docker_client: Any
) -> None:
    project = project_of(workspace)
    ok(run_cli(workspace, "up", "-d", "--timeout", "60"))
    [before] = replica_containers(docker_client, project, "app")
    images = labelled(docker_client, project)["images"]
    # app is rebuilt and its new replicas never listen: the re-up rolls it, then times out.
    (workspace / "app" / "index.html").write_text("version 2\n")
    manifest = workspace / "copilot" / "app" / "manifest.yml"
    text = manifest.read_text()
    command = next(line for line in text.splitlines() if line.startswith("command:"))
    manifest.write_text(text.replace(command, 'command: ["sh", "-c", "sleep 300"]'))
    err = failed(run_cli(workspace, "up", "-d", "--timeout", "5"))
    assert "not healthy after 5s" in err, err
    assert "left running on its previous configuration" in err, err

    def rolled_back() -> bool:
        [now] = replica_containers(docker_client, project, "app") or [None]
        if now is None or now.labels[L.CONFIG_HASH] != before.labels[L.CONFIG_HASH]:
            return False
        assert now.image.id == before.image.id  # the old image, not the rebuilt one
        return bool(json.loads(ok(run_cli(workspace, "ps", "--json")).stdout)["ready"])

    wait_for("app back on its previous configuration", rolled_back, timeout=30, interval=0.5)
    assert labelled(docker_client, project)["images"] == images  # the rebuilt one is gone
