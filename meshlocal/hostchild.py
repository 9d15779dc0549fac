"""Host mode: the data plane runs as the controller's child process, unprivileged.

The child drops root before it listens (privileges.py) and talks to its
parent over a socket pair (link.py); it inherits nothing but how to run Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import sys
from typing import TYPE_CHECKING

from meshlocal.link import LINE_LIMIT

if TYPE_CHECKING:
    from meshlocal.serving import Listen


class DataPlaneChild:
    """One run of the data-plane process, and the link to it."""

    def __init__(self, listen: Listen) -> None:
        self.listen = listen
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        ours, theirs = socket.socketpair()
        listen = json.dumps(dataclasses.asdict(self.listen))
        with ours, theirs:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "meshlocal.serving",
                "--listen",
                listen,
                "--link-fd",
                str(theirs.fileno()),
                "--drop-privileges",
                pass_fds=(theirs.fileno(),),
                stdin=asyncio.subprocess.DEVNULL,
                cwd="/",  # `-m` puts the cwd first on sys.path; `nobody` may not read it
                env=child_environment(),
            )
            theirs.close()
            return await asyncio.open_connection(sock=ours.dup(), limit=LINE_LIMIT)

    async def stop(self) -> int | None:
        """Terminate it (killed after 10 s); its exit code."""
        proc = self.proc
        if proc is None:
            return None
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        return proc.returncode


def child_environment() -> dict[str, str]:
    """What the host-mode data plane inherits: how to run Python, nothing else.

    No credentials, no DOCKER_HOST, no AWS_*: it runs as nobody and faces replicas.
    """
    keep = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "TZ")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env["PYTHONUNBUFFERED"] = "1"
    return env
