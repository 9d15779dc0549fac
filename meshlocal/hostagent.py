"""The host-mode agent: a detached `meshlocal agent` process and the files it is known by.

Apart from Deployment because a host-mode agent is a process, not a
container: it is started, found and stopped through its files in the state
directory (its pid, configuration, admin address and control socket), and
`down` and the pytest plugin's reaper stop agents by their pid files alone,
with no environment that loads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from meshlocal.errors import DataPlaneError, MeshNotRunning
from meshlocal.statedir import STATE_DIR

if TYPE_CHECKING:
    from meshlocal.agentconfig import AgentConfig
    from meshlocal.dataplanes import DataPlane


class HostAgent:
    """One environment's host-mode agent, by its state files.

    `files` names the environment's state file of a suffix (Deployment's
    `_state_file`): asked only when a file is needed, as the environment
    may load only then.
    """

    def __init__(self, files: Callable[[str], Path]) -> None:
        self._file = files

    def start(self, config: AgentConfig, *, log_file: Path) -> int:
        """A `meshlocal agent` process on the gateway address, detached; its pid."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self.stop()
        cfg_path = self._file(".json")
        cfg_path.write_text(config.to_json())
        with log_file.open("ab") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "meshlocal",
                    "agent",
                    "--config-file",
                    str(cfg_path),
                    "--admin-file",
                    str(self._file(".admin")),
                    "--control-socket",
                    str(self.control_path()),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._file(".pid").write_text(str(proc.pid))
        return proc.pid

    def stop(self) -> bool:
        """Stop the agent (SIGTERM, SIGKILL after 10 s) and remove its files; False: none ran."""
        pid_file = self._file(".pid")
        self._file(".admin").unlink(missing_ok=True)
        self._file(".json").unlink(missing_ok=True)
        try:
            pid = int(pid_file.read_text())
        except (OSError, ValueError):
            return False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                # Started by this very process (in-process `up`, the pytest plugin):
                # reap it, or its zombie answers kill(pid, 0) until the deadline.
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        break
                os.kill(pid, 0)
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
        pid_file.unlink(missing_ok=True)
        self._file(".admin").unlink(missing_ok=True)
        self.control_path().unlink(missing_ok=True)  # left by a controller SIGKILLed
        return True

    def control_path(self) -> Path:
        """The controller's socket; short, as a unix socket path must be."""
        path = self._file(".control")
        if len(str(path)) < 100:
            return path
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"meshlocal-{os.getuid()}" / f"{digest}.control"

    def record_admin(self, admin_url: str, public_url: str | None, control: str) -> None:
        """Where an agent running in this process answers (`up --dataplane host`, attached)."""
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        self._file(".admin").write_text(
            json.dumps(
                {
                    "admin_url": admin_url,
                    "public_url": public_url,
                    "pid": os.getpid(),
                    "control": control,
                }
            )
        )

    def wait(self, find: Callable[[], DataPlane], timeout: float, pid: int | None) -> DataPlane:
        """Until `find` finds the agent started as `pid`; one that died fails with its log."""
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(MeshNotRunning):
                return find()
            # An agent that died (a taken port, a bad config) fails at once, not at the deadline.
            if time.monotonic() > deadline or exited(pid):
                log = self._file(".log")
                tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
                raise DataPlaneError(
                    "the host-mode data plane did not start",
                    hint="its last log lines:\n" + "\n".join(f"    {t}" for t in tail),
                )
            time.sleep(0.1)


def stop_host_agents(project: str) -> int:
    """Stop every host-mode agent of a project, by its pid files."""
    files = list(STATE_DIR.glob(f"{project}-*.pid"))
    for pid_file in files:
        stop_pid_file(pid_file)
    return len(files)


def stop_pid_file(pid_file: Path) -> None:
    with contextlib.suppress(OSError, ValueError, ProcessLookupError, PermissionError):
        os.kill(int(pid_file.read_text()), signal.SIGTERM)
    pid_file.unlink(missing_ok=True)


def exited(pid: int | None) -> bool:
    """Whether a process this one started has ended (and reap it)."""
    if pid is None:
        return False
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:  # not our child: fall back to asking the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
