"""Where things are, for the modules that must stay light (quickup: stdlib only)."""

from __future__ import annotations

from pathlib import Path

COPILOT_DIR = "copilot"
WORKSPACE_FILE = ".workspace"
# The controller container's copy of its configuration (what `up` last applied).
CONTAINER_STATE_FILE = "/var/lib/meshlocal/agent.json"


def locate_root(start: Path) -> Path | None:
    """The nearest directory at or above `start` holding copilot/.workspace, or None."""
    start = start.resolve()
    for directory in (start, *start.parents):
        if (directory / COPILOT_DIR / WORKSPACE_FILE).is_file():
            return directory
    return None
