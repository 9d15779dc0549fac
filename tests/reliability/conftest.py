"""Fixtures for the reliability suite: images, workspace copies, leak accounting.

Each workspace is copied to a temporary directory, so each run is its own
project (the project id hashes the workspace root) and collides with nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meshlocal.manifest import find_workspace
from meshlocal.runtime import images
from meshlocal.runtime import labels as L

WORKSPACES = Path(__file__).parent / "workspaces"
MESHLOCAL = Path(sys.executable).with_name("meshlocal")
T = TypeVar("T")


def seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


@pytest.fixture(scope="session")
def busybox_image(docker_client: Any) -> str:
    tag = images.ensure_busybox_image(docker_client)
    os.environ["BUSYBOX_IMAGE"] = tag
    return tag


@pytest.fixture(scope="session")
def dataplane_image(docker_client: Any) -> str:
    base = images.ensure_python_base(docker_client)
    return images.ensure_dataplane_image(docker_client, base)


@pytest.fixture(scope="session")
def results_fallback(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("reliability-results")


def copy_workspace(factory: pytest.TempPathFactory, name: str, source: Path | None = None) -> Path:
    dest = factory.mktemp(f"rel-{name}") / name
    shutil.copytree(source or WORKSPACES / name, dest)
    return dest


def project_of(workspace: Path) -> str:
    ws = find_workspace(workspace)
    return L.project_id(ws.app, ws.root)


def leaked(client: Any, project: str) -> dict[str, list[str]]:
    """What meshlocal created for the project and is still there: by label, and images by tag."""
    label = f"{L.PROJECT}={project}"
    return {
        "containers": sorted(
            c.name for c in client.containers.list(all=True, filters={"label": label})
        ),
        "networks": sorted(n.name for n in client.networks.list(filters={"label": label})),
        "images": sorted(
            tag
            for row in client.api.images()
            for tag in row.get("RepoTags") or ()
            if tag.startswith(f"meshlocal/{project}-")
        ),
    }


def wait_for(what: str, fn: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """Bounded wait until fn() returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
