"""`meshlocal down` leaves zero containers, networks and images after every way `up` can end.

Driven through the `meshlocal` executable as a user runs it. Each scenario
counts what meshlocal created for the project before `down` (what the
interrupted `up` left) and after it (what leaked: must be zero).

Images: `down --rmi` removes the service images meshlocal built for the
workspace (`meshlocal/<project>-<svc>:<env>`); a plain `down` keeps them, as
compose does. The shared caches (busybox, the Python
base, the data-plane image) are kept on purpose, like compose keeps pulled
images; they are not counted as leaks.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlocal.runtime import labels as L

from . import figures
from .conftest import MESHLOCAL, copy_workspace, leaked, project_of, wait_for

pytestmark = pytest.mark.docker

RESULTS: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def write_results(results_fallback: Path) -> Iterator[None]:
    yield
    if RESULTS:
        figures.write("cleanup", {"scenarios": RESULTS}, results_fallback)


def _env(busybox: str) -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", "BUSYBOX_IMAGE": busybox}
    env.pop("MESHLOCAL_DATAPLANE", None)
    return env


def _cli(
    ws: Path, busybox: str, *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MESHLOCAL), "-C", str(ws), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(busybox),
        check=False,
    )


def _popen(ws: Path, busybox: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(MESHLOCAL), "-C", str(ws), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(busybox),
    )


def _count(left: dict[str, list[str]]) -> dict[str, int]:
    return {kind: len(names) for kind, names in left.items()}


def _down_and_record(
    name: str, ws: Path, busybox: str, client: Any, command: str, *, expect_images: bool = True
) -> None:
    project = project_of(ws)
    before = leaked(client, project)
    # `down` without BUSYBOX_IMAGE: it must not need the manifests to load.
    env = {k: v for k, v in _env(busybox).items() if k != "BUSYBOX_IMAGE"}
    down = subprocess.run(
        [str(MESHLOCAL), "-C", str(ws), "down", "--rmi"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    after = leaked(client, project)
    RESULTS[name] = {
        "command": command,
        "left_before_down": _count(before),
        "leaked_after_down": _count(after),
        "down_exit_code": down.returncode,
    }
    assert down.returncode == 0, down.stderr
    assert "Traceback" not in down.stderr, down.stderr
    assert not any(after.values()), f"down left behind: {after}"
    if expect_images:
        # The scenario did create something for `down` to remove: it can fail.
        assert before["images"], before


def _dataplane_exists(client: Any, project: str) -> bool:
    labels = [f"{L.PROJECT}={project}", f"{L.ROLE}=dataplane"]
    return bool(client.api.containers(all=True, filters={"label": labels}))


def test_down_after_a_normal_exit(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> None:
    ws = copy_workspace(tmp_path_factory, "cleanup")
    up = _cli(ws, busybox_image, "up", "-d", "--timeout", "120")
    assert up.returncode == 0, up.stderr
    _down_and_record(
        "normal exit", ws, busybox_image, docker_client, "meshlocal up -d; meshlocal down"
    )


def test_down_after_ctrl_c_during_foreground_up(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> None:
    ws = copy_workspace(tmp_path_factory, "cleanup")
    project = project_of(ws)
    proc = _popen(ws, busybox_image, "up")
    try:
        # Mid-start: as soon as the data plane exists, replicas still starting.
        wait_for(
            "the data plane to be created", lambda: _dataplane_exists(docker_client, project), 120
        )
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "Traceback" not in stderr, stderr
    _down_and_record(
        "Ctrl-C (SIGINT) during foreground up",
        ws,
        busybox_image,
        docker_client,
        "meshlocal up & (SIGINT once the data plane exists); meshlocal down",
        expect_images=False,
    )
    # Ctrl-C itself tears everything down, even mid-start; `down` finds nothing.
    assert RESULTS["Ctrl-C (SIGINT) during foreground up"]["left_before_down"] == {
        "containers": 0,
        "networks": 0,
        "images": 0,
    }


def test_down_after_sigkill_of_up_mid_start(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> None:
    ws = copy_workspace(tmp_path_factory, "cleanup")
    project = project_of(ws)
    proc = _popen(ws, busybox_image, "up", "-d")
    try:
        wait_for(
            "the data plane to be created", lambda: _dataplane_exists(docker_client, project), 120
        )
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # The data plane runs on without its client and keeps starting replicas.
    time.sleep(1.0)
    _down_and_record(
        "SIGKILL of meshlocal up mid-start",
        ws,
        busybox_image,
        docker_client,
        "meshlocal up -d & (SIGKILL once the data plane exists); meshlocal down",
    )


def test_down_after_a_failed_image_build(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> None:
    ws = copy_workspace(tmp_path_factory, "buildfail")
    up = _cli(ws, busybox_image, "up", "-d")
    assert up.returncode != 0
    assert "Traceback" not in up.stderr, up.stderr
    assert "worker" in up.stderr and "non-zero code: 7" in up.stderr, up.stderr
    # api's, built (in parallel) before worker failed.
    assert re.search(r"undo: removed .*\b1 image", up.stderr), up.stderr
    _down_and_record(
        "failed image build",
        ws,
        busybox_image,
        docker_client,
        "meshlocal up -d (worker's build fails after api's succeeded); meshlocal down",
        expect_images=False,
    )
    # The failed `up` undid itself: api's image is gone before `down` runs.
    assert RESULTS["failed image build"]["left_before_down"] == {
        "containers": 0,
        "networks": 0,
        "images": 0,
    }
