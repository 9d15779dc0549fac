"""Recent events of the mesh page, numbered so a client that reconnects
gets exactly what it missed (Server-Sent Events' Last-Event-ID).

An id is `<epoch>-<seq>`: the epoch is drawn when the data plane starts, so
a page that reconnects to a restarted data plane (whose numbers begin
again) is told to start its timeline over instead of missing events.
"""

from __future__ import annotations

import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KINDS = (
    "added",
    "removed",
    "replaced",
    "health",
    "draining",
    "ejected",
    "died",
    "fault",
    "controller",
)


@dataclass(frozen=True)
class Event:
    seq: int
    time: float  # unix seconds
    kind: str
    text: str
    service: str | None = None
    replica: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "time": round(self.time, 3),
            "kind": self.kind,
            "service": self.service,
            "replica": self.replica,
            "text": self.text,
        }


class Timeline:
    """The last `keep` events; listeners hear each one as it is added."""

    def __init__(
        self,
        keep: int = 500,
        *,
        epoch: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.epoch = epoch or secrets.token_hex(4)
        self.clock = clock
        self._events: deque[Event] = deque(maxlen=keep)
        self._seq = 0
        self._listeners: list[Callable[[Event], None]] = []

    def add(
        self, kind: str, text: str, *, service: str | None = None, replica: str | None = None
    ) -> Event:
        assert kind in KINDS, kind
        self._seq += 1
        event = Event(self._seq, self.clock(), kind, text, service, replica)
        self._events.append(event)
        for listener in list(self._listeners):
            listener(event)
        return event

    def listen(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def event_id(self, event: Event) -> str:
        return f"{self.epoch}-{event.seq}"

    def events(self) -> list[Event]:
        return list(self._events)

    def since(self, last_event_id: str | None) -> tuple[bool, list[Event]]:
        """(full, events) for a client that last saw `last_event_id`.

        full: the client must drop its timeline first (no id, another
        epoch, an id we never gave, or older than what we still keep).
        """
        kept = list(self._events)
        epoch, _, seq_text = (last_event_id or "").strip().rpartition("-")
        if epoch != self.epoch or not (seq_text.isascii() and seq_text.isdecimal()):
            return True, kept
        seq = int(seq_text)
        if seq > self._seq:
            return True, kept
        if kept and seq < kept[0].seq - 1:
            return True, kept  # some were dropped since: start over
        return False, [e for e in kept if e.seq > seq]
