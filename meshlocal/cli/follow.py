"""Following the logs of every container of an environment, as compose's `logs -f` does."""

from __future__ import annotations

import contextlib
import threading
from pathlib import Path
from typing import Any, BinaryIO

from meshlocal.cli.logprefix import LogPrinter
from meshlocal.runtime import labels as L
from meshlocal.runtime.backoff import KEPT_SUFFIX
from meshlocal.runtime.engine import ContainerInfo, Engine


def _display_name(info: ContainerInfo) -> str:
    if info.role == L.Role.DATAPLANE.value:
        return "meshlocal"
    if info.role == L.Role.CONTROLLER.value:
        return "meshlocal-controller"
    if info.role == L.Role.PUBSUB.value:
        return "meshlocal-pubsub"
    base = f"{info.service}-{info.index}"
    if info.name.endswith(KEPT_SUFFIX):
        base += KEPT_SUFFIX  # the last crashed container of that replica, kept for this
    sidecar = info.labels.get(L.SIDECAR)
    return f"{base}-{sidecar}" if sidecar else base


class LogFollower:
    """Streams every container of an environment, attaching to new ones as they start.

    New replicas (replacements, scale-out) are found from Docker's event
    stream; each container's logs are followed in its own thread because
    the docker SDK's log streams block.
    """

    def __init__(
        self,
        engine: Engine,
        project: str,
        env: str,
        printer: LogPrinter,
        *,
        services: set[str] | None = None,
        tail: int | str = "all",
        follow: bool = True,
        dataplane: bool = True,
    ) -> None:
        self.engine = engine
        self.project = project
        self.env = env
        self.printer = printer
        self.services = services
        self.tail = tail
        self.follow = follow
        self.dataplane = dataplane
        self._attached: set[str] = set()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._events: Any = None

    @property
    def attached(self) -> int:
        """How many containers' logs are shown."""
        return len(self._attached)

    def _wanted(self, info: ContainerInfo) -> bool:
        if info.role in (L.Role.DATAPLANE.value, L.Role.CONTROLLER.value, L.Role.PUBSUB.value):
            return self.dataplane
        if info.role not in (L.Role.REPLICA.value, L.Role.SIDECAR.value):
            return False
        return self.services is None or info.service in self.services

    def attach(self, info: ContainerInfo) -> None:
        if info.id in self._attached or not self._wanted(info):
            return
        self._attached.add(info.id)
        name = _display_name(info)
        self.printer.widen([name])
        thread = threading.Thread(target=self._pump, args=(info.id, name), daemon=True)
        thread.start()
        self._threads.append(thread)

    def _pump(self, container_id: str, name: str) -> None:
        try:
            stream = self.engine.api.logs(
                container_id, stream=True, follow=self.follow, tail=self.tail
            )
            pending = b""
            for chunk in stream:
                if self._stop.is_set():
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.printer.line(name, line.decode(errors="replace"))
            if pending:
                self.printer.line(name, pending.decode(errors="replace"))
        except Exception:  # the container went away: its stream simply ends
            return

    def start(self) -> None:
        existing = self.engine.list_containers(self.project, self.env)
        self.printer.widen([_display_name(c) for c in existing if self._wanted(c)])
        for info in existing:
            self.attach(info)
        if self.follow:
            thread = threading.Thread(target=self._watch, daemon=True)
            thread.start()

    def _watch(self) -> None:
        filters = {"label": L.filters(self.project, self.env), "type": "container"}
        try:
            self._events = self.engine.client.events(decode=True, filters=filters)
            for event in self._events:
                if self._stop.is_set():
                    break
                if event.get("status") == "start" or event.get("Action") == "start":
                    info = self.engine.inspect(str(event.get("id")))
                    if info is not None:
                        self.attach(info)
        except Exception:
            return

    def wait(self) -> None:
        for thread in list(self._threads):
            thread.join()

    def stop(self) -> None:
        self._stop.set()
        if self._events is not None:
            with contextlib.suppress(Exception):
                self._events.close()


class FileFollower:
    """A log file's lines under a prefix: its tail, then (with `follow`) what is appended.

    For the background watcher of `up -d --watch`, whose log is a file, not a
    container's; new lines are found with watchfiles (inotify), like the
    watcher's own changes.
    """

    def __init__(
        self, path: Path, name: str, printer: LogPrinter, *, tail: int | str, follow: bool
    ) -> None:
        self.path, self.name, self.printer = path, name, printer
        self.tail, self.follow = tail, follow
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="follow-file", daemon=True)

    def start(self) -> None:
        self.printer.widen([self.name])
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)

    def wait(self) -> None:
        self._thread.join()

    def _run(self) -> None:
        try:
            with self.path.open("rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
                keep = len(lines) if self.tail == "all" else int(self.tail)
                shown = lines[max(0, len(lines) - keep) :] if keep else []
                for line in shown:
                    self.printer.line(self.name, line)
                if self.follow:
                    self._follow(f)
        except OSError:
            return  # the watcher stopped and its log went with it

    def _follow(self, f: BinaryIO) -> None:
        from watchfiles import watch

        pending = b""
        for _ in watch(self.path, stop_event=self._stop, rust_timeout=1000, yield_on_timeout=True):
            pending += f.read()
            *complete, pending = pending.split(b"\n")
            for line in complete:
                self.printer.line(self.name, line.decode(errors="replace"))
