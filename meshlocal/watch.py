"""`up --watch` and `meshlocal watch`: rebuild and roll a service when its files change.

A change is classified by path: under copilot/ or an env file it is a
manifest change (a full `up`); in a build context (after that context's
`.dockerignore`, read with the rules the build reads it with) or a
Dockerfile it belongs to that service. Either way one iteration is a fresh
`Deployment` and its `up`, which rebuilds only what changed and rolls only
what it rebuilt (new replicas in rotation before old ones leave); a failed
build or a replica that won't start leaves the old replicas serving.

`watchfiles` (inotify, FSEvents) reports the changes; it is imported only
when watching starts. The detached watcher of `up -d --watch` is a
`meshlocal watch --background` process with a pid file next to the other
state files, which `down` stops.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from meshlocal.errors import MeshlocalError

if TYPE_CHECKING:
    from meshlocal.deployment import Deployment
    from meshlocal.manifest.model import BuildSpec, EnvironmentSpec
    from meshlocal.overrides import EnvOverride, PortOverride
    from meshlocal.undo import Snapshot

Say = Callable[[str], None]

# Changes are reported once nothing more changed for STEP_MS (so several saves
# that close together are one rebuild), and at the latest after DEBOUNCE_MS.
STEP_MS = 300
DEBOUNCE_MS = 2000
_POLL = 0.2  # seconds: how often the loop looks at its stop event
_STOP_WAIT = 10.0  # seconds a watcher gets to stop after SIGTERM before SIGKILL
BACKGROUND_FLAG = "--background"  # marks a detached watcher's command line


# -- what a path means ------------------------------------------------------


class ContextRules:
    """One build context: which of its paths the build sends, as docker-py decides it."""

    def __init__(self, service: str, build: BuildSpec) -> None:
        from docker.utils.build import PatternMatcher

        from meshlocal.runtime.images import dockerignore

        self.service = service
        self.root = _real(build.context)
        self.dockerfile = _real(build.dockerfile)
        # exclude_paths' own addition: the Dockerfile is always sent.
        patterns = [*(dockerignore(build.context) or []), f"!{build.dockerfile.name}"]
        self._matcher: Any = PatternMatcher(patterns)
        self._keep = [p.cleaned_pattern for p in self._matcher.patterns if p.exclusion]

    def sends(self, path: str) -> bool:
        """Whether `path` (absolute) is part of what the build sends."""
        if path == self.dockerfile:
            return True
        rel = _relative(path, self.root)
        if rel is None:
            return False
        if rel == "":
            return True  # the context itself (created, removed)
        parts = rel.split("/")
        # PatternMatcher.walk skips an excluded directory unless a `!` pattern
        # reaches inside it: the same test per ancestor, without walking the tree.
        for depth in range(1, len(parts)):
            ancestor = "/".join(parts[:depth])
            if self._matcher.matches(ancestor) and not any(
                keep.startswith(ancestor) for keep in self._keep
            ):
                return False
        return not bool(self._matcher.matches(rel))


@dataclass(frozen=True)
class Batch:
    """The changes of one iteration: manifest paths, and paths per service (as shown)."""

    manifest: tuple[str, ...] = ()
    services: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.manifest or self.services)


class Targets:
    """What to watch for one environment, and what a changed path means."""

    def __init__(self, root: Path, spec: EnvironmentSpec | None) -> None:
        self.root = _real(root)
        self.copilot = _real(root / "copilot")
        self.env_files: set[str] = set()
        self.contexts: list[ContextRules] = []
        for svc in spec.services if spec is not None else ():
            if svc.env_file is not None:
                self.env_files.add(_real(svc.env_file))
            builds = [svc.build, *(sc.build for sc in svc.sidecars)]
            self.contexts += [ContextRules(svc.name, b) for b in builds if b is not None]
        trees = _outermost([self.copilot, *(c.root for c in self.contexts)])
        self.recursive = tuple(t for t in trees if os.path.isdir(t))
        # Single files outside every tree: their directory, not the file, is
        # watched, since an editor's save that renames over the file ends a
        # watch on the file itself.
        files = {*self.env_files, *(c.dockerfile for c in self.contexts)}
        self.flat = tuple(
            sorted(
                {
                    os.path.dirname(f)
                    for f in files
                    if not any(_relative(f, t) is not None for t in self.recursive)
                    and os.path.isdir(os.path.dirname(f))
                }
            )
        )

    @classmethod
    def of(cls, dep: Deployment) -> Targets:
        return cls(dep.workspace.root, dep.spec)

    @property
    def paths(self) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """(trees watched recursively, directories watched flat): a watcher restarts on change."""
        return self.recursive, self.flat

    def classify(self, paths: Iterable[str]) -> Batch:
        manifest: list[str] = []
        services: dict[str, list[str]] = {}
        for raw in sorted(set(paths)):
            path = _real(Path(raw))
            if path in self.env_files or _relative(path, self.copilot) is not None:
                manifest.append(self.show(path))
                continue
            for ctx in self.contexts:
                if ctx.sends(path):
                    found = services.setdefault(ctx.service, [])
                    if self.show(path) not in found:
                        found.append(self.show(path))
        return Batch(tuple(manifest), {k: tuple(v) for k, v in services.items()})

    def show(self, path: str) -> str:
        """`path` relative to the workspace when inside it."""
        rel = _relative(path, self.root)
        return rel if rel else path


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _relative(path: str, root: str) -> str | None:
    """`path` relative to `root` ("" for root itself), None when outside it."""
    if path == root:
        return ""
    prefix = root.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else None


def _outermost(paths: Iterable[str]) -> list[str]:
    kept: list[str] = []
    for path in sorted(set(paths), key=len):
        if not any(_relative(path, k) is not None for k in kept):
            kept.append(path)
    return sorted(kept)


# -- the loop ----------------------------------------------------------------


class _Feed:
    """watchfiles in threads, one per recursion mode, pushing changed paths onto a queue.

    Changes keep being collected while an iteration runs: the loop picks them
    up afterwards.
    """

    def __init__(self, out: queue.Queue[set[str]]) -> None:
        self._out = out
        self._threads: list[tuple[threading.Thread, threading.Event]] = []
        self.paths: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())

    def start(self, targets: Targets) -> None:
        """Watch `targets`' paths; the old watches stop only once the new ones run."""
        if targets.paths == self.paths and self._threads:
            return
        old = self._threads
        self._threads = []
        for paths, recursive in ((targets.recursive, True), (targets.flat, False)):
            if paths:
                stop = threading.Event()
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._run,
                    args=(paths, recursive, stop, ready),
                    name="watch",
                    daemon=True,
                )
                thread.start()
                ready.wait(5.0)
                self._threads.append((thread, stop))
        self.paths = targets.paths
        self._stop(old)

    def close(self) -> None:
        self._stop(self._threads)
        self._threads = []

    @staticmethod
    def _stop(threads: list[tuple[threading.Thread, threading.Event]]) -> None:
        for _, stop in threads:
            stop.set()
        for thread, _ in threads:
            thread.join(timeout=2.0)

    def _run(
        self,
        paths: tuple[str, ...],
        recursive: bool,
        stop: threading.Event,
        ready: threading.Event,
    ) -> None:
        from watchfiles import watch

        try:
            # No filter: .dockerignore decides, not watchfiles' defaults (.git, *.swp...).
            changes = watch(
                *paths,
                watch_filter=None,
                debounce=DEBOUNCE_MS,
                step=STEP_MS,
                stop_event=stop,
                recursive=recursive,
                rust_timeout=int(_POLL * 1000),
                yield_on_timeout=True,
            )
            for batch in changes:
                ready.set()
                if batch:
                    self._out.put({path for _, path in batch})
        except (OSError, RuntimeError):
            ready.set()  # a watched directory removed meanwhile: the next targets say


def watch_loop(
    targets: Targets,
    iterate: Callable[[Batch], Targets | None],
    *,
    say: Say,
    stop: threading.Event | None = None,
    since: float | None = None,
) -> None:
    """Until `stop` is set (or Ctrl-C/SIGTERM raise): one `iterate` per batch of changes.

    `iterate` applies a batch and returns the targets to watch next (None: the
    same); MeshGone from it ends the loop. `since` (a wall-clock time: when
    `up --watch` started) makes files saved before the watches ran a first batch.
    """
    changes: queue.Queue[set[str]] = queue.Queue()
    feed = _Feed(changes)
    stop = stop or threading.Event()
    try:
        feed.start(targets)
        say(f"[watch] watching {_describe(targets)} for changes")
        if since is not None:
            missed = modified_since(targets, since)
            if missed:
                changes.put(missed)
        while not stop.is_set():
            try:
                paths = changes.get(timeout=_POLL)
            except queue.Empty:
                continue
            with contextlib.suppress(queue.Empty):
                while True:  # what arrived during the last iteration, as one batch
                    paths |= changes.get_nowait()
            batch = targets.classify(paths)
            if not batch:
                continue
            try:
                found = iterate(batch)
            except MeshGone as gone:
                say(f"[watch] stopping: {gone}")
                return
            if found is not None:
                before = targets.paths
                targets = found
                feed.start(targets)
                if targets.paths != before:
                    say(f"[watch] watching {_describe(targets)} for changes")
    finally:
        feed.close()


_SCAN_LIMIT = 100_000  # files looked at for saves made while `up --watch` started


def modified_since(targets: Targets, since: float) -> set[str]:
    """The watched files changed after `since` (saves the watches were not there for)."""
    found: set[str] = set()
    seen = 0

    def check(path: str) -> None:
        with contextlib.suppress(OSError):
            if os.stat(path).st_mtime > since:
                found.add(path)

    for top in targets.recursive:
        for directory, _dirs, files in os.walk(top):
            for name in files:
                seen += 1
                if seen > _SCAN_LIMIT:
                    return found
                check(os.path.join(directory, name))
    for path in targets.flat:
        if os.path.isdir(path):
            with contextlib.suppress(OSError):
                for entry in os.scandir(path):
                    if entry.is_file():
                        check(entry.path)
        else:
            check(path)
    return found


def _describe(targets: Targets) -> str:
    shown = [targets.show(p) or "." for p in (*targets.recursive, *targets.flat)]
    return ", ".join(shown) if shown else "nothing"


# -- one iteration: `up` again -----------------------------------------------


@dataclass(frozen=True)
class UpOptions:
    """What the watcher passes to every `up`: the options the user gave."""

    mode: Literal["container", "host"] = "container"
    public_port: int = 0
    timeout: float = 180.0
    env_overrides: tuple[EnvOverride, ...] = ()
    port_overrides: tuple[PortOverride, ...] = ()


class _Failed(Exception):
    """An iteration's `up` failed and was undone."""

    def __init__(self, error: MeshlocalError, undone: str) -> None:
        super().__init__(error.message)
        self.error = error
        self.undone = undone


class MeshGone(Exception):
    """The mesh was removed under the watcher: it stops rather than start a new one."""


class Rebuilder:
    """`iterate` for watch_loop: reload the workspace and run `up`, saying what happened."""

    def __init__(
        self,
        root: Path,
        load: Callable[[], AbstractContextManager[Deployment]],
        options: UpOptions,
        say: Say,
    ) -> None:
        self._root = root
        self._load = load
        self._options = options
        self._say = say

    def targets(self) -> Targets:
        """The first targets: copilot/ alone while the manifests don't load."""
        try:
            with self._load() as dep:
                return Targets.of(dep)
        except MeshlocalError as error:
            self._say(f"[watch] watching copilot/ only until the manifests load:\n{error.render()}")
            return Targets(self._root, None)

    def __call__(self, batch: Batch) -> Targets | None:
        what = "manifest" if batch.manifest else ", ".join(sorted(batch.services))
        started = time.monotonic()
        self._announce(batch)
        try:
            with self._load() as dep:
                _require_running(dep)
                targets = Targets.of(dep)  # a manifest change may move contexts
                before = {s: _replicas(dep, s) for s in batch.services}
                port = dep.use_overrides(
                    self._options.env_overrides,
                    self._options.port_overrides,
                    self._options.public_port,
                )
                from meshlocal.undo import snapshot

                found = snapshot(dep)  # what this `up` undoes to when it fails
                try:
                    self._up(dep, port)
                except MeshlocalError as error:
                    raise _Failed(error, self._undo(dep, found)) from None
                after = {s: _replicas(dep, s) for s in batch.services}
        except (MeshlocalError, _Failed) as failure:
            took = time.monotonic() - started
            cause, undone = (
                (failure.error, failure.undone) if isinstance(failure, _Failed) else (failure, "")
            )
            self._say(
                f"[watch] {what}: failed after {took:.1f} s; the running replicas keep serving"
                f"{undone}\n{cause.render()}"
            )
            return None
        except Exception as error:  # the watcher outlives a bug in one iteration
            self._say(f"[watch] {what}: failed: {type(error).__name__}: {error}")
            return None
        took = time.monotonic() - started
        if batch.manifest:
            self._say(f"[watch] manifest: applied in {took:.1f} s")
        for service in sorted(batch.services):
            if after[service] and after[service] <= before[service]:  # no new replica
                # Content-based build key: a save that changed nothing rolls nothing.
                self._say(f"[watch] {service}: image unchanged, nothing to roll")
            else:
                self._say(f"[watch] {service}: rebuilt and rolled in {took:.1f} s")
        return targets

    def _up(self, dep: Deployment, port: int) -> None:
        dep.up(
            mode=self._options.mode,
            public_port=port,
            timeout=self._options.timeout,
            wait=True,
            progress=self._say,
        )

    def _undo(self, dep: Deployment, before: Snapshot) -> str:
        """As a failed `up`: the controller gets its previous configuration back (the
        new replicas that crash stop being retried) and the image tag goes back to the
        image the serving replicas run."""
        from meshlocal.undo import describe, undo

        try:
            removed = undo(dep, before)
        except Exception as error:  # the watcher reports, and goes on watching
            return f" (undo failed: {error})"
        what = describe(removed)
        return "" if what == "nothing to remove" else f"; undo: {what}"

    def _announce(self, batch: Batch) -> None:
        def shown(paths: Sequence[str]) -> str:
            more = f" and {len(paths) - 3} more" if len(paths) > 3 else ""
            return ", ".join(paths[:3]) + more

        if batch.manifest:
            self._say(f"[watch] manifest: {shown(batch.manifest)} changed, applying")
        for service, paths in sorted(batch.services.items()):
            self._say(f"[watch] {service}: {shown(paths)} changed, rebuilding")


def _require_running(dep: Deployment) -> None:
    from meshlocal.errors import DataPlaneDown, MeshNotRunning

    try:
        dep.dataplane()
    except DataPlaneDown:
        return  # replicas without their data plane: `up` restores it
    except MeshNotRunning as gone:
        raise MeshGone(gone.message) from None


def _replicas(dep: Deployment, service: str) -> frozenset[str]:
    """The containers of the service's replicas: new ones after `up` mean it rolled."""
    try:
        replicas = dep.state()["services"][service]["replicas"]
    except (MeshlocalError, KeyError, TypeError):
        return frozenset()
    return frozenset(str(r.get("container_id")) for r in replicas)


# -- the detached watcher -------------------------------------------------------


@dataclass(frozen=True)
class Watcher:
    pid: int
    log: Path


def pid_file(dep: Deployment) -> Path:
    return dep._state_file(".watch.pid")


def log_file(dep: Deployment) -> Path:
    return dep._state_file(".watch.log")


def running(dep: Deployment) -> Watcher | None:
    """The detached watcher of this environment, when its process is alive."""
    pid = _watcher_pid(pid_file(dep))
    return Watcher(pid, log_file(dep)) if pid is not None else None


def args_of(pid: int) -> list[str] | None:
    """The options a running detached watcher was started with (None: unknown)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    if BACKGROUND_FLAG not in argv:
        return None
    rest = argv[argv.index(BACKGROUND_FLAG) + 1 :]
    return rest[:-1] if rest and rest[-1] == "" else rest


def _watcher_pid(path: Path) -> int | None:
    """The pid in `path` when it is alive and really a meshlocal watcher (pids get reused)."""
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return None  # Linux: that pid is gone
        try:  # no /proc (macOS): alive is the best we know
            os.kill(pid, 0)
        except (ProcessLookupError, PermissionError):
            return None
        return pid
    except OSError:
        return None
    ours = b"meshlocal" in argv and b"watch" in argv and BACKGROUND_FLAG.encode() in argv
    return pid if ours else None


def stop(path: Path, *, log: bool = False) -> int | None:
    """Stop the watcher `path` names (SIGTERM, SIGKILL after a bound); remove the file.

    `log`: remove its log too (`down`). Returns the pid that was stopped, if one ran.
    """
    pid = _watcher_pid(path)
    if pid is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
            if not _gone(pid, _STOP_WAIT):
                os.kill(pid, signal.SIGKILL)
                _gone(pid, 2.0)
    path.unlink(missing_ok=True)
    if log:
        path.with_name(path.name.removesuffix(".pid") + ".log").unlink(missing_ok=True)
    return pid


def stop_all(project: str) -> int:
    """Every detached watcher of a project (`down` without a loadable environment)."""
    from meshlocal.statedir import STATE_DIR

    files = list(STATE_DIR.glob(f"{project}-*.watch.pid"))
    for path in files:
        stop(path, log=True)
    return len(files)


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # Started by this process (a test, `up` itself): reap it, or its zombie stays.
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if _zombie(pid):
            return True
        time.sleep(0.05)
    return False


def _zombie(pid: int) -> bool:
    """A zombie someone else must reap has stopped all the same."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[:1] == ["Z"]


def start(dep: Deployment, args: Sequence[str]) -> Watcher:
    """Start `meshlocal watch --background ARGS` detached, replacing a running one."""
    stop(pid_file(dep))
    log = log_file(dep)
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "meshlocal",
        "-C",
        str(dep.workspace.root),
        "watch",
        BACKGROUND_FLAG,
        *args,
    ]
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in the shell that ran `up -d` doesn't reach it
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    pid_file(dep).write_text(str(proc.pid))
    _wait_watching(proc, log, offset)
    return Watcher(proc.pid, log)


class WatcherError(MeshlocalError):
    """The detached watcher did not start watching."""


_START_WAIT = 30.0  # seconds: imports, loading the manifests, the first watches


def _wait_watching(proc: subprocess.Popen[bytes], log: Path, offset: int) -> None:
    """Return once the watcher watches: a save right after `up -d --watch` is seen."""
    deadline = time.monotonic() + _START_WAIT
    while time.monotonic() < deadline:
        with log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if "[watch] watching " in text:
            return
        if proc.poll() is not None:
            tail = "\n".join(f"    {line}" for line in text.splitlines()[-15:])
            raise WatcherError(
                f"the watcher exited at start (status {proc.returncode})",
                hint=f"its log {log} ends with:\n{tail}",
            )
        time.sleep(0.05)
    raise WatcherError(
        f"the watcher (pid {proc.pid}) was not watching after {_START_WAIT:.0f} s",
        hint=f"its log: {log}; `meshlocal down` stops it",
    )
