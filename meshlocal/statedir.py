"""Where an environment keeps its files on this host: one directory, one name prefix.

Apart from Deployment because the host-mode agent, the public port, the
remembered addresses and the watcher all keep files there, and `down` and
the pytest plugin find them by the project's prefix alone, without an
environment that loads.
"""

from __future__ import annotations

import os
from pathlib import Path

from meshlocal.runtime import labels as L

STATE_DIR = Path(os.environ.get("XDG_STATE_HOME", Path.home() / ".local" / "state")) / "meshlocal"


def state_file(project: str, env: str, suffix: str) -> Path:
    """The environment's file `suffix` (".pid", ".admin", ".ports", ...)."""
    return STATE_DIR / f"{project}-{L.slug(env)}{suffix}"
