"""Docker's event and log streams, read in threads and delivered to asyncio.

The event stream is Docker's own (`/events`), read in one thread and handed
to asyncio through a queue: no polling loop anywhere. Apart from engine.py
so that what only calls the engine (the CLI) does not load asyncio.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import docker

from meshlocal.errors import MeshlocalError
from meshlocal.runtime.engine import (
    ContainerEvent,
    Engine,
    engine_errors,
    parse_event,
    split_lines,
)

EVENT_ACTIONS = ("create", "start", "die", "destroy", "health_status", "rename", "oom", "kill")


class EventStream:
    """Docker's event stream for some labels, delivered to an asyncio queue.

    One daemon thread blocks on the HTTP stream; each event is handed to the
    loop with call_soon_threadsafe. `close()` shuts the socket, which ends
    the thread. After the stream ends (closed, or the engine went away) the
    iterator stops; `error` says why when it was not closed by us.
    """

    def __init__(
        self,
        client: docker.DockerClient,
        label_filters: Sequence[str],
        loop: asyncio.AbstractEventLoop,
        actions: Sequence[str] = EVENT_ACTIONS,
    ) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[ContainerEvent | None] = asyncio.Queue()
        self._closed = False
        self.error: BaseException | None = None
        with engine_errors("subscribing to Docker events"):
            self._stream = client.api.events(
                decode=True,
                filters={
                    "type": ["container"],
                    "label": list(label_filters),
                    "event": list(actions),
                },
            )
        self._thread = threading.Thread(target=self._pump, name="meshlocal-events", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for raw in self._stream:
                event = parse_event(raw)
                if event is not None:
                    self._loop.call_soon_threadsafe(self._queue.put_nowait, event)
        except Exception as exc:  # the socket closed under us, or the engine went away
            if not self._closed:
                self.error = exc
        finally:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    async def get(self) -> ContainerEvent | None:
        """The next event; None once the stream has ended."""
        return await self._queue.get()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> ContainerEvent:
        event = await self._queue.get()
        if event is None:
            raise StopAsyncIteration
        return event

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._stream.close()


class LogStream:
    """One container's log lines, read in a thread and delivered to asyncio.

    Iterating ends when the container stops or `close()` is called.
    """

    def __init__(
        self, engine: Engine, container_id: str, loop: asyncio.AbstractEventLoop, **kwargs: Any
    ) -> None:
        self._loop = loop
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._closed = False
        self._raw = engine.open_logs(container_id, **kwargs)
        self._lines = self._with_tail(engine, container_id, kwargs)
        self._thread = threading.Thread(target=self._pump, name="meshlocal-logs", daemon=True)
        self._thread.start()

    def _with_tail(self, engine: Engine, cid: str, kwargs: Mapping[str, Any]) -> Iterator[str]:
        count = 0
        for line in split_lines(self._raw):
            count += 1
            yield line
        if not self._closed:
            yield from engine._unflushed(cid, count, kwargs)

    def _pump(self) -> None:
        try:
            for line in self._lines:
                if self._closed:
                    break
                self._loop.call_soon_threadsafe(self._queue.put_nowait, line)
        except MeshlocalError:
            pass
        finally:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    def __aiter__(self) -> LogStream:
        return self

    async def __anext__(self) -> str:
        line = await self._queue.get()
        if line is None:
            raise StopAsyncIteration
        return line

    def close(self) -> None:
        """Stop delivering; closing the socket ends the reader thread."""
        self._closed = True
        with contextlib.suppress(Exception):
            self._raw.close()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._queue.put_nowait, None)
