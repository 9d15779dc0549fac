"""The controller's copy of the data plane's fault report, on disk.

The data plane holds the faults; the controller keeps its last report so a
data plane that restarts gets them back (faultstore.py), and keeps it on
disk for a restart of both. Counters are not kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

from meshlocal.agentconfig import AgentConfig
from meshlocal.faultparse import read_report
from meshlocal.link import FaultReport
from meshlocal.statedir import state_file

log = logging.getLogger("meshlocal.controller")


def path_for(config: AgentConfig) -> Path | None:
    """Beside the kept configuration (container mode); a host-mode agent has none (its
    configuration comes from `up` each time) and keeps it in the environment's state
    directory instead, which `down` clears."""
    if config.state_file:
        return Path(config.state_file).with_suffix(".faults.json")
    if config.mode == "host":
        return state_file(config.project, config.spec.env, ".faults.json")
    return None


def load(path: Path | None) -> FaultReport | None:
    with contextlib.suppress(OSError, ValueError):
        if path is not None:
            raw = json.loads(path.read_text())
            return read_report(raw, lambda note: log.warning("%s: %s", path, note))
    return None


def save(path: Path | None, report: FaultReport) -> None:
    if path is None:
        return
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(report.to_message()))
        tmp.replace(path)  # atomic, as the configuration
