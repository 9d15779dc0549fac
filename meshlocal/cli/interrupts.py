"""How `up` stops: SIGTERM like Ctrl-C, an undo that runs to its end, exit 130 or 143."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

from meshlocal.cli.app import Interrupted
from meshlocal.cli.render import err
from meshlocal.deployment import Deployment
from meshlocal.undo import Snapshot, describe, undo


class Terminated(KeyboardInterrupt):
    """SIGTERM during `up`: handled like Ctrl-C (undo, or detach), exit status 143."""


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    def on_term(signum: int, frame: object) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def uninterrupted() -> Iterator[None]:
    """Clean-up runs to its end: a second Ctrl-C must not leave half a mesh."""
    previous = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])


def interrupted(exc: KeyboardInterrupt, what: str) -> Interrupted:
    if isinstance(exc, Terminated):
        return Interrupted(f"[+] Stopped by SIGTERM {what}", 143)
    return Interrupted(f"[+] Interrupted (Ctrl-C) {what}", 130)


def undo_attempt(dep: Deployment, before: Snapshot | None, *, say: bool = True) -> str:
    """Remove what this failed `up` created; say what (an already running mesh keeps running).

    Returns the line; `say=False` leaves printing it to the caller.
    """
    if before is None:
        return "nothing was created"
    with uninterrupted():
        try:
            removed = undo(dep, before)
        except Exception as error:  # the undo reports; it never ends in a traceback
            line = f"undo failed ({error}); `meshlocal down` removes what is left"
            err.print(line, markup=False, style="red")
            return line
    what = describe(removed)
    line = f"undo: {what}"
    if before.running:
        # Nothing to remove, yet the data plane may have rolled services back.
        line = "undo: " if what == "nothing to remove" else f"{line}; "
        line += f"the running mesh {dep.workspace.app}/{dep.env} was left running"
        if before.config is not None:
            line += " on its previous configuration"
    if say:
        err.print(line, markup=False)
    return line
