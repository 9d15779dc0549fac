"""What the controller's and the data plane's processes share, kept apart from both.

The controller must not import the data plane (aiohttp, the DNS server)
to stop on a signal: its start-up is on the critical path of `up -d`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal


def stop_on_signals() -> asyncio.Event:
    """An event SIGTERM and SIGINT set: a process's main waits on it, then cleans up."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    return stop
