"""The mesh page's HTTP side, on the data plane's admin API (same guard).

- `GET /` and `GET /ui/<file>`: the page (static/, shipped in the package);
- `GET /v1/topology`: the page's document;
- `GET /v1/events`: Server-Sent Events: `hello`, then `topology` whenever the
  document changes (checked every second, and 0.2 s after a change is
  observed), and `timeline` events, each with an id a reconnecting client
  resumes from;
- `GET /v1/logs/<container id>?tail=N`: a replica's last lines, from the
  controller, secrets taken out (dashboard/logs.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from meshlocal.dashboard.edges import EdgeWindow
from meshlocal.dashboard.logs import DEFAULT_TAIL, tail_of
from meshlocal.dashboard.timeline import Event, Timeline
from meshlocal.dashboard.topology import Changes, Directory, document
from meshlocal.naming import NamingModel
from meshlocal.proxy.metrics import EdgeMetrics
from meshlocal.registry import Replica

log = logging.getLogger("meshlocal.dashboard")

STATIC = Path(__file__).parent / "static"
TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".txt": "text/plain",
}
# The page runs only its own script; it may style itself inline (the SVG).
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
RETRY_MS = 1000  # EventSource reconnects after this: a restarted data plane is back in ~1 s
KEEPALIVE_S = 15.0  # a comment line, so idle streams are not cut by anything in between
QUEUE = 512  # a stream this far behind is closed; its page reconnects and catches up
SETTLE_S = 0.2  # changes observed within this are pushed as one document
WRITE_TIMEOUT_S = 10.0

AskLogs = Callable[[str, int], Awaitable[dict[str, Any]]]


def frame(event: str, data: Any, ident: str | None = None) -> bytes:
    """One Server-Sent Event (the data is one line of JSON)."""
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Dashboard:
    def __init__(
        self,
        *,
        state: Callable[[], dict[str, Any]],
        naming: Callable[[], NamingModel | None],
        edges: Callable[[], Mapping[tuple[str, str], EdgeMetrics]],
        faults: Callable[[], list[dict[str, Any]]],
        ask_logs: AskLogs,
        window_s: float = 60.0,
        tick_s: float = 1.0,
    ) -> None:
        self._state, self._naming, self._edges, self._faults = state, naming, edges, faults
        self._ask_logs = ask_logs
        self.tick_s = tick_s
        self.timeline = Timeline()
        self.directory = Directory()
        self.changes = Changes(self.timeline, self.directory)
        self.window = EdgeWindow(window_s)
        self._streams: set[asyncio.Queue[bytes | None]] = set()
        self._last: bytes = b""
        self._doc: dict[str, Any] | None = None
        self._soon: asyncio.TimerHandle | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._stopped = False
        self.timeline.listen(self._on_event)

    # -- what the data plane observes ------------------------------------------------

    def replica_changed(self, before: Replica | None, after: Replica | None) -> None:
        self.changes.replica(before, after)
        self.changed()

    def ejected(self, replica: Replica, client: str, seconds: float) -> None:
        self.changes.ejected(replica, client, seconds)
        self.changed()

    def status_changed(self, status: dict[str, Any]) -> None:
        self.changes.status(status)
        self.changed()

    def faults_changed(self) -> None:
        self.changes.faults(self._faults())
        self.changed()

    def changed(self) -> None:
        """Something the page shows changed: push a document shortly."""
        if self._soon is not None or not self._streams:
            return
        with contextlib.suppress(RuntimeError):  # no loop: nothing listens either
            loop = asyncio.get_running_loop()
            self._soon = loop.call_later(SETTLE_S, self._push_now)

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick())

    async def stop(self) -> None:
        self._stopped = True
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._soon is not None:
            self._soon.cancel()
        for queue in list(self._streams):
            self._close(queue)

    async def _tick(self) -> None:
        while True:
            try:
                self.window.sample(self._edges())
                if self._streams:
                    self._push_now()
            except Exception:  # a bug here must not stop the page for good
                log.exception("the mesh page's sampler failed; it goes on")
            await asyncio.sleep(self.tick_s)

    def snapshot(self) -> dict[str, Any]:
        return document(
            self._state(),
            naming=self._naming(),
            edges=self.window.edges(self.directory.node),
            directory=self.directory,
            faults=self._faults(),
            epoch=self.timeline.epoch,
            window_s=self.window.window_s,
        )

    def _push_now(self) -> bytes:
        """The current document as a frame; sent to every stream if it changed."""
        self._soon = None
        doc = self.snapshot()
        generated = doc.pop("generated")
        same = json.dumps(doc, sort_keys=True).encode()
        doc["generated"] = generated
        data = frame("topology", doc)
        if same != self._last:
            self._last = same
            self._broadcast(data)
        return data

    def _on_event(self, event: Event) -> None:
        self._broadcast(frame("timeline", event.to_json(), self.timeline.event_id(event)))

    def _broadcast(self, data: bytes) -> None:
        for queue in list(self._streams):
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:
                self._close(queue)  # too slow: it reconnects and resumes from its last id

    def _close(self, queue: asyncio.Queue[bytes | None]) -> None:
        self._streams.discard(queue)
        while True:  # make room for the end mark
            try:
                queue.get_nowait()
            except asyncio.QueueEmpty:
                break
        queue.put_nowait(None)

    # -- HTTP --------------------------------------------------------------------------

    @staticmethod
    async def _write(response: web.StreamResponse, data: bytes) -> None:
        # A page that stops reading fills its socket: give up on it (it reconnects).
        async with asyncio.timeout(WRITE_TIMEOUT_S):
            await response.write(data)

    def add_routes(self, app: web.Application, prefix: str = "/v1") -> None:
        app.router.add_get("/", self._index)
        app.router.add_get("/ui/{name}", self._asset)
        app.router.add_get(f"{prefix}/topology", self._topology)
        app.router.add_get(f"{prefix}/events", self._events)
        app.router.add_get(f"{prefix}/logs/{{container_id}}", self._logs)

    async def _index(self, _: web.Request) -> web.StreamResponse:
        return self._file("index.html")

    async def _asset(self, request: web.Request) -> web.StreamResponse:
        return self._file(request.match_info["name"])

    def _file(self, name: str) -> web.StreamResponse:
        # Only the files shipped beside this module, by plain name: no traversal.
        path = STATIC / name
        if "/" in name or "\\" in name or name.startswith(".") or not path.is_file():
            raise web.HTTPNotFound()
        kind = TYPES.get(path.suffix, "application/octet-stream")
        return web.Response(
            body=path.read_bytes(),
            content_type=kind,
            charset="utf-8" if kind.startswith("text") or kind.endswith("xml") else None,
            headers=PAGE_HEADERS,
        )

    async def _topology(self, _: web.Request) -> web.Response:
        return web.json_response(self.snapshot(), headers={"Cache-Control": "no-cache"})

    async def _logs(self, request: web.Request) -> web.Response:
        cid = request.match_info["container_id"]
        answer = await self._ask_logs(cid, tail_of(request.query.get("tail", DEFAULT_TAIL)))
        status = 404 if answer.get("ours") is False else 200
        return web.json_response(
            {"lines": answer.get("lines") or [], "error": answer.get("error")}, status=status
        )

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if self._stopped:
            raise web.HTTPServiceUnavailable(text="the data plane is stopping")
        last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(QUEUE)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        await response.prepare(request)
        # What it missed and the registration with no await between: an event
        # is either in the replay or in the queue, never in neither or both.
        full, missed = self.timeline.since(last)
        self._streams.add(queue)
        try:
            hello = {"epoch": self.timeline.epoch, "replay": "full" if full else "since"}
            first = [
                f"retry: {RETRY_MS}\n\n".encode(),
                frame("hello", hello),
                # The others get it too if it changed: every page shows the same one.
                self._push_now(),
                *(frame("timeline", e.to_json(), self.timeline.event_id(e)) for e in missed),
            ]
            await self._write(response, b"".join(first))
            while True:
                try:
                    async with asyncio.timeout(KEEPALIVE_S):
                        data = await queue.get()
                except TimeoutError:
                    data = b": keep-alive\n\n"
                if data is None:
                    break
                await self._write(response, data)
        except (ConnectionError, TimeoutError):
            pass  # the page went away, or stopped reading
        finally:
            self._streams.discard(queue)
        return response
