"""Point the meshlocal fixtures at this workspace (the directory above tests/).

The plugin is loaded by its pytest11 entry point once meshlocal is
installed; nothing needs importing. Without this file the fixtures would
look for the workspace upwards from the directory pytest runs in.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def meshlocal_workspace() -> Path:
    return Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def meshlocal_env() -> str:
    return "test"
