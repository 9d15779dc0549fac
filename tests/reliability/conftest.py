"""Fixtures for the reliability suite: images, workspace copies, leak accounting.

Each workspace is copied to a temporary directory, so each run is its own
project (the project id hashes the workspace root) and collides with nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from meshlocal.deployment import Deployment
from meshlocal.errors import MeshlocalError
from meshlocal.manifest import find_workspace
from meshlocal.runtime import labels as L

WORKSPACES = Path(__file__).parent / "workspaces"
MESHLOCAL = Path(sys.executable).with_name("meshlocal")
T = TypeVar("T")


def seconds_from_env(name: str, default: float) -> float:
    raw = os.environ.get(name)
    return float(raw) if raw else default


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
        # The low-level list: no per-container inspect, which fails on a
        # container removed meanwhile (a data plane still at work).
        "containers": sorted(
            str(c["Names"][0]).lstrip("/")
            for c in client.api.containers(all=True, filters={"label": label})
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


# -- the shared mesh: 3 api replicas (busybox httpd + CGI) and a client --------


@dataclass
class Soak:
    dep: Deployment
    client: Any
    started: float

    @property
    def project(self) -> str:
        return self.dep.project

    def replicas(self) -> list[Any]:
        filters = {
            "label": [f"{L.PROJECT}={self.project}", f"{L.SERVICE}=api", f"{L.ROLE}=replica"]
        }
        found = self.client.containers.list(filters=filters)
        return sorted(found, key=lambda c: int(c.labels[L.REPLICA]))

    def plane(self) -> Any:
        return self.client.containers.get(L.dataplane_name(self.project, "test"))

    def ready(self) -> dict[str, Any] | None:
        try:
            state = self.dep.state()
        except MeshlocalError:  # restarting: the admin API does not answer yet
            return None
        return state if state.get("ready") else None


@pytest.fixture(scope="session")
def mesh(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> Iterator[Soak]:
    ws = copy_workspace(tmp_path_factory, "soak")
    dep = Deployment(ws, "test", environ={**os.environ, "BUSYBOX_IMAGE": busybox_image})
    started = time.monotonic()
    try:
        dep.up(timeout=150)
        yield Soak(dep, docker_client, started)
    finally:
        dep.down(images=True)
        project = dep.project
        dep.close()
        left = leaked(docker_client, project)
        assert not any(left.values()), f"down left behind: {left}"
