"""Fixtures for the plugin's own tests: pytester, the busybox image, a tiny workspace."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshlocal.runtime import labels as L

HERE = Path(__file__).parent
KUDOS = HERE.parent.parent / "compose-examples" / "kudos"


def pytest_configure(config: pytest.Config) -> None:
    # pytester is a builtin plugin, off by default; a non-root conftest may not
    # set pytest_plugins, so it is loaded here for these tests only.
    if not config.pluginmanager.has_plugin("pytester"):
        config.pluginmanager.import_plugin("pytester")


@pytest.fixture
def tiny(tmp_path: Path, busybox_image: str, dataplane_image: str) -> Path:
    """A private copy of the tiny workspace (its own project id)."""
    dest = tmp_path / "tiny"
    shutil.copytree(HERE / "workspaces" / "tiny", dest)
    return dest


@pytest.fixture
def leftovers(docker_client: Any) -> Callable[[str], list[str]]:
    """leftovers(project): containers and networks still labelled with it."""

    def find(project: str) -> list[str]:
        label = f"{L.PROJECT}={project}"
        names = [c.name for c in docker_client.containers.list(all=True, filters={"label": label})]
        names += [
            f"network {n.name}" for n in docker_client.networks.list(filters={"label": label})
        ]
        return names

    return find
