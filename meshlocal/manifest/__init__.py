"""Copilot workspaces: find them, load one environment, validate it.

Public API:
- :func:`find_workspace` (start dir upward, like git),
- :func:`load_environment` (the merged, typed model; raises every error),
- :func:`check` (every error and note, for `meshlocal validate`).
"""

from __future__ import annotations

from meshlocal.manifest.diagnostics import ManifestErrors, Note
from meshlocal.manifest.envfile import read_env_file
from meshlocal.manifest.validate import Report, check, load_environment
from meshlocal.manifest.workspace import find_workspace

__all__ = [
    "ManifestErrors",
    "Note",
    "Report",
    "check",
    "find_workspace",
    "load_environment",
    "read_env_file",
]
