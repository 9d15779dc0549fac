"""docker compose style log prefixes: `front-end-1  | line`, one colour per replica."""

from __future__ import annotations

import threading
from typing import TextIO

# compose's palette order, so a person used to compose sees familiar colours.
_COLOURS = ("36", "33", "32", "35", "34", "96", "93", "92", "95", "94")


class LogPrinter:
    """Writes lines from many replicas to one stream without interleaving them.

    Thread-safe: log followers run in threads (the docker SDK streams are
    blocking), so one lock keeps each line whole.
    """

    def __init__(self, stream: TextIO, *, colour: bool, width: int = 0) -> None:
        self._stream = stream
        self._colour = colour
        self._width = width
        self._assigned: dict[str, str] = {}
        self._lock = threading.Lock()

    def widen(self, names: list[str]) -> None:
        """Align prefixes to the longest replica name known so far."""
        with self._lock:
            self._width = max([self._width, *(len(n) for n in names)])

    def prefix(self, name: str) -> str:
        code = self._assigned.setdefault(name, _COLOURS[len(self._assigned) % len(_COLOURS)])
        text = f"{name.ljust(self._width)}  | "
        return f"\x1b[{code}m{text}\x1b[0m" if self._colour else text

    def line(self, name: str, text: str) -> None:
        with self._lock:
            self._stream.write(self.prefix(name) + text.rstrip("\r\n") + "\n")
            self._stream.flush()
