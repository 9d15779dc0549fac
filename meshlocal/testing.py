"""A live mesh for integration tests: the handle behind the pytest `mesh` fixture.

`Mesh` is a plain context manager, usable without pytest::

    with Mesh("path/to/workspace", env="test") as mesh:
        calls = mesh.get("front-end", "/api/calls?n=6").json()

Entering runs `meshlocal up -d` (Deployment.up); leaving always runs `down`.
Each handle gets its own project id (`<app>-<hash>-t-<host>-<pid>-<n>`), so
pytest-xdist workers and parallel CI jobs on one Docker engine never share
containers or networks. Safety nets for the cases a `with` cannot cover:
SIGTERM is turned into KeyboardInterrupt (so `finally` blocks run), an
atexit hook downs what is still up, and `up` reaps meshes whose process on
this host died (SIGKILL) before it starts a new one.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import itertools
import os
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from meshlocal.adminapi import clear_faults, list_faults
from meshlocal.deployment import DataPlane, Deployment
from meshlocal.errors import MeshlocalError
from meshlocal.runtime.engine import Engine
from meshlocal.testfaults import ActiveFault, FaultContext, FaultError, fault_fields
from meshlocal.testvalues import (  # re-exported: the handle's public values
    ExecResult,
    HttpResponse,
    Replica,
    Resolution,
    ServiceStats,
)

if TYPE_CHECKING:
    from meshlocal.pubsub.view import PubSubView, Queue

__all__ = [
    "ActiveFault",
    "ExecResult",
    "FaultError",
    "HttpResponse",
    "Mesh",
    "MeshError",
    "MeshFactory",
    "Replica",
    "Resolution",
    "ServiceStats",
    "WaitTimeout",
    "reap_stale",
]

T = TypeVar("T")
Mode = Literal["container", "host"]


class MeshError(MeshlocalError):
    """The handle was used wrongly (unknown service, no such replica, not started)."""


class WaitTimeout(MeshlocalError, AssertionError):
    """A wait helper gave up; an AssertionError too, so pytest reports a failure."""


class MeshFactory(Protocol):
    """The type of the pytest fixture `meshlocal_factory`."""

    def __call__(
        self, workspace: str | os.PathLike[str], env: str | None = None, **kwargs: Any
    ) -> Mesh: ...


# -- project ids and the safety nets ----------------------------------------

_counter = itertools.count(1)
_SUFFIX = re.compile(r"-t-([0-9a-f]{4})-(\d+)-(\d+)$")
_PID_FILE = re.compile(r"^(.+-t-[0-9a-f]{4}-\d+-\d+)-.+\.pid$")  # <project>-<env>.pid
_live: set[Mesh] = set()
_live_lock = threading.Lock()
_hooks_installed = False
_sigterm_installed = False


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:4]


def session_suffix() -> str:
    """`t-<host>-<pid>-<n>`: unique per handle; says which process owns it."""
    return f"t-{_host_tag()}-{os.getpid()}-{next(_counter)}"


def _pid_alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet, e.g. under a container's PID 1, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def reap_stale(engine: Engine, base_project: str) -> list[str]:
    """Remove test meshes of `base_project` whose owner process on this host is gone.

    They are what a SIGKILLed test run leaves behind; a live owner (another
    xdist worker, a parallel session) is never touched. A host-mode agent
    outlives its owner (it runs in its own session): it is stopped first, or
    it would start the replicas again.
    """
    from meshlocal.statedir import STATE_DIR

    host = _host_tag()
    prefix = base_project + "-t-"
    found = {project for project, _env in engine.projects() if project.startswith(prefix)}
    agents: dict[str, list[Path]] = {}
    for pid_file in STATE_DIR.glob(f"{prefix}*.pid"):
        pm = _PID_FILE.match(pid_file.name)
        if pm is not None:
            agents.setdefault(pm.group(1), []).append(pid_file)
    reaped: list[str] = []
    for project in sorted(found | set(agents)):
        m = _SUFFIX.search(project)
        if m is None or m.group(1) != host or _pid_alive(int(m.group(2))):
            continue
        for pid_file in agents.get(project, []):
            _stop_agent(pid_file)
        engine.remove_all(project)
        reaped.append(project)
    return reaped


def _stop_agent(pid_file: Path, timeout: float = 10.0) -> None:
    """SIGTERM a host-mode agent and wait (bounded) until it is gone."""
    from meshlocal.hostagent import stop_pid_file

    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        pid = 0
    stop_pid_file(pid_file)
    deadline = time.monotonic() + timeout
    while pid > 0 and _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)


def _down_all_live() -> None:
    with _live_lock:
        meshes = list(_live)
    for mesh in meshes:
        with contextlib.suppress(Exception):
            mesh.down()


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Raised in the main thread: `with` blocks and pytest fixture finalizers run.
    raise KeyboardInterrupt(f"signal {signum}")


def _install_hooks() -> None:
    """atexit once; SIGTERM while a mesh is up, from the main thread, if nobody handles it."""
    global _hooks_installed, _sigterm_installed
    if not _hooks_installed:
        _hooks_installed = True
        atexit.register(_down_all_live)
    if _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
            _sigterm_installed = True


def _release_hooks() -> None:
    """The last mesh is down: SIGTERM terminates again, as before."""
    global _sigterm_installed
    if not _sigterm_installed or threading.current_thread() is not threading.main_thread():
        return
    with contextlib.suppress(ValueError, OSError):
        if signal.getsignal(signal.SIGTERM) is _on_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _sigterm_installed = False


# -- the handle ---------------------------------------------------------------


class Mesh:
    """One running environment of a Copilot workspace, for tests.

    `workspace` is any directory inside the workspace (its `copilot/` dir is
    found upwards); `env` the environment (None: the only one). `isolate`
    (default) gives this handle its own project id; `isolate=False` uses the
    workspace's ordinary one, the mesh `meshlocal up` would run.
    """

    def __init__(
        self,
        workspace: str | os.PathLike[str] = ".",
        env: str | None = None,
        *,
        mode: Mode = "container",
        timeout: float = 180.0,
        isolate: bool = True,
        wait_for_ports: bool = True,
        listen_timeout: float | None = None,
        environ: Mapping[str, str] | None = None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.workspace = Path(workspace)
        self.wait_for_ports = wait_for_ports
        self.listen_timeout = timeout if listen_timeout is None else listen_timeout
        self.mode: Mode = mode
        self.timeout = timeout
        self._progress = progress
        self._suffix = session_suffix() if isolate else None
        self.deployment = Deployment(
            self.workspace, env, environ=environ, project_suffix=self._suffix
        )
        self._plane: DataPlane | None = None
        self._started = False

    # -- lifecycle --------------------------------------------------------

    @property
    def project(self) -> str:
        """The Docker label `meshlocal.project` of everything this mesh created."""
        return self.deployment.project

    @property
    def env(self) -> str:
        return self.deployment.env

    @property
    def running(self) -> bool:
        return self._started

    def up(self) -> Mesh:
        """Build, start and wait until every replica is healthy; `down` on any failure."""
        if self._started:
            return self
        dep = self.deployment
        with _live_lock:
            _live.add(self)
        _install_hooks()
        try:
            if self._suffix is not None:
                reap_stale(dep.engine, dep.base_project)
            self._plane = dep.up(
                mode=self.mode,
                timeout=self.timeout,
                wait=True,
                progress=self._progress or (lambda _: None),
            )
            self._started = True
            if self.wait_for_ports:
                self.wait_listening(timeout=self.listen_timeout)
        except BaseException:
            # KeyboardInterrupt half-way through `up` included: leave nothing behind.
            self.down()
            raise
        return self

    def down(self) -> None:
        """Remove every container and network of this mesh; idempotent."""
        self._started = False
        self._plane = None
        try:
            self.deployment.down()
        finally:
            self.deployment.close()
        # Only once removed: an interrupted `down` stays listed for the atexit hook.
        with _live_lock:
            _live.discard(self)
            last = not _live
        if last:
            _release_hooks()

    def __enter__(self) -> Mesh:
        return self.up()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def __repr__(self) -> str:
        state = "running" if self._started else "stopped"
        return f"<Mesh {self.project}/{self.deployment._env_arg or '?'} {state}>"

    def _require(self) -> DataPlane:
        if not self._started or self._plane is None:
            raise MeshError(
                f"the mesh {self.project} is not running",
                hint="use `with Mesh(...) as mesh:` or call mesh.up() first",
            )
        return self._plane

    # -- state ------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The agent's full /v1/state JSON (what `meshlocal ps --json` prints)."""
        self._require()
        return self.deployment.state()

    def services(self) -> list[str]:
        return sorted(self.state()["services"])

    def _service(self, state: Mapping[str, Any], service: str) -> Mapping[str, Any]:
        services: Mapping[str, Any] = state["services"]
        if service not in services:
            raise MeshError(
                f"no service named {service!r} runs in {self.env}",
                hint=f"the services are: {', '.join(sorted(services)) or 'none'}",
            )
        found: Mapping[str, Any] = services[service]
        return found

    def replicas(self, service: str) -> list[Replica]:
        """The service's live replicas, by index (draining ones included)."""
        svc = self._service(self.state(), service)
        out = [Replica.from_state(service, r) for r in svc["replicas"]]
        return sorted(out, key=lambda r: r.index)

    def replica(self, service: str, index: int = 1) -> Replica:
        reps = self.replicas(service)
        for r in reps:
            if r.index == index:
                return r
        raise MeshError(
            f"{service} has no replica {index}",
            hint=f"its replicas are {', '.join(str(r.index) for r in reps) or 'none'}",
        )

    # -- the public endpoint ----------------------------------------------

    def url(self, service: str, path: str = "") -> str:
        """`http://127.0.0.1:<port><http.path><path>` of a Load Balanced Web Service."""
        plane = self._require()
        state = self.state()
        self._service(state, service)
        rules = [str(p) for p, s in state.get("public_rules", []) if s == service]
        if not rules or plane.public_url is None:
            raise MeshError(
                f"{service} has no public endpoint",
                hint="only a Load Balanced Web Service with http.path is published to the host; "
                "reach other services from inside the mesh with mesh.exec(...)",
            )
        base = plane.public_url + rules[0]
        if not path:
            return base
        return base.rstrip("/") + "/" + path.lstrip("/")

    def get(
        self,
        service: str,
        path: str = "",
        *,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        """GET from a public endpoint; never through an HTTP proxy of the environment."""
        return self.request("GET", service, path, timeout=timeout, headers=headers)

    def request(
        self,
        method: str,
        service: str,
        path: str = "",
        *,
        body: bytes | None = None,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
    ) -> HttpResponse:
        url = self.url(service, path)
        req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
        try:
            with _OPENER.open(req, timeout=timeout) as resp:
                return HttpResponse(resp.status, _headers(resp.headers), resp.read(), url)
        except urllib.error.HTTPError as exc:
            return HttpResponse(exc.code, _headers(exc.headers), exc.read(), url)

    # -- inside the mesh --------------------------------------------------

    def resolve(self, name: str, *, from_: str, qtype: str = "A") -> Resolution:
        """Ask DNS for `name` exactly as a replica of `from_` would (its netns, its resolver)."""
        from meshlocal.probe import resolve_from

        self._require()
        raw = resolve_from(self.deployment, name, from_, qtype)
        return Resolution(
            name=str(raw["name"]),
            type=str(raw["type"]),
            rcode=str(raw["rcode"]),
            answers=tuple(str(a) for a in raw["answers"]),
            client=str(raw.get("client", from_)),
            meaning=str(raw.get("meaning", "")),
            raw=raw,
        )

    def exec(
        self, service: str, cmd: str | Sequence[str], index: int = 1, *, timeout: float = 30.0
    ) -> ExecResult:
        """Run a command in one replica (a string runs under `sh -c`)."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        target = self.replica(service, index)
        code, output = self.deployment.engine.exec(target.container_id, argv, timeout=timeout)
        return ExecResult(code, output)

    def logs(self, service: str, index: int = 1, *, tail: int = 50) -> list[str]:
        target = self.replica(service, index)
        return self.deployment.engine.logs(target.container_id, tail=tail)

    # -- breaking things --------------------------------------------------

    def kill(self, service: str, index: int, *, signal: str = "SIGKILL") -> Replica:
        """Kill one replica, like a task crash; the mesh replaces it by itself."""
        target = self.replica(service, index)
        self.deployment.engine.kill(target.container_id, signal)
        return target

    def scale(self, service: str, count: int, *, wait: bool = True) -> list[Replica]:
        """Set the desired count; with `wait`, return once `count` replicas are in rotation."""
        self._require()
        self._service(self.state(), service)
        self.deployment.scale(service, count)
        if wait:
            return self.wait_replicas(service, count)
        return self.replicas(service)

    def stats(self, service: str) -> ServiceStats:
        """Service Connect metrics of `service` (zeros before its first request)."""
        self._require()
        self._service(self.state(), service)
        snapshot: Mapping[str, Any] = self.deployment.call("/stats")
        return ServiceStats.from_snapshot(snapshot.get(service, {}))

    # -- faults -----------------------------------------------------------

    def _admin_url(self) -> str:
        self._require()
        return self.deployment.dataplane().admin_url  # found again: a restarted data plane

    def fault(self, service: str, **fields: Any) -> FaultContext:
        """A fault on `service` for the `with` block: added on entry, removed on exit
        (also when the block raises). Yields an ActiveFault (`.id`, `.hits()`, `.seen()`).

        `fields` are the CLI's (`latency="200ms"`, `jitter=50`, `abort=503`,
        `percent=30`, `seed=7`, `from_="front-end"`, `replica=2`, `refuse=True`...);
        numbers are milliseconds. A bad field raises FaultError before anything changes.
        """
        self._require()
        return FaultContext(self._admin_url, fault_fields(service, fields))

    def faults(self) -> list[dict[str, Any]]:
        """Every active fault (declared ones included), with `seen` and `hits`."""
        return list_faults(self._admin_url())

    def clear_faults(self) -> list[dict[str, Any]]:
        """Remove every fault (declared ones come back with the next `up`); the removed."""
        return clear_faults(self._admin_url())

    # -- SNS and SQS ------------------------------------------------------

    def _pubsub(self) -> PubSubView:
        self._require()
        from meshlocal.pubsub.view import PubSubView

        return PubSubView(self.deployment)

    @property
    def aws_endpoint(self) -> str:
        """The local SNS/SQS from the host (`http://127.0.0.1:PORT`), for boto3's endpoint_url."""
        return self._pubsub().host_url

    def publish(
        self,
        service: str,
        topic: str,
        message: str,
        attributes: Mapping[str, str] | None = None,
        *,
        group: str | None = None,
    ) -> str:
        """Publish to `service`'s topic (its manifest name) as the service would; the id."""
        return self._pubsub().publish(service, topic, message, dict(attributes or {}), group=group)

    def queue(self, service: str, topic: str | None = None, *, dead_letter: bool = False) -> Queue:
        """A worker's default queue, its own queue for `topic`, or (`dead_letter`) their DLQ."""
        view = self._pubsub()
        from meshlocal.pubsub.view import Queue

        return Queue(view, view.queue(service, topic, dead_letter))

    # -- waiting ----------------------------------------------------------

    def wait_until(
        self,
        predicate: Callable[[], T],
        timeout: float = 30.0,
        interval: float = 0.2,
        *,
        message: str | None = None,
    ) -> T:
        """Poll until `predicate()` is truthy and return its value.

        An AssertionError, OSError or MeshlocalError inside the predicate counts
        as "not yet"; the last one is chained to the WaitTimeout.
        """
        return wait_until(predicate, timeout=timeout, interval=interval, message=message)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Until every service has its desired count healthy and in rotation."""
        self._require()
        self.deployment.wait_ready(self.timeout if timeout is None else timeout)

    def wait_listening(
        self, services: Sequence[str] | None = None, *, timeout: float = 60.0
    ) -> None:
        """Until every desired replica of `services` (default: all) is in rotation.

        Rotation implies listening: the data plane admits a replica only once
        its health check passes or, without one, once its port accepts a
        connection, so traffic sent after this never meets a starting server.
        """
        self._require()

        def ready() -> bool:
            state = self.state()["services"]
            wanted = set(services) if services is not None else set(state)
            return all(
                sum(1 for r in state[name]["replicas"] if r["in_rotation"])
                >= state[name]["desired"]
                for name in wanted
                if name in state
            )

        self.wait_until(ready, timeout=timeout, message="replicas to be in rotation")

    def wait_replicas(
        self, service: str, count: int, timeout: float = 60.0, *, listening: bool = True
    ) -> list[Replica]:
        """Until exactly `count` replicas of `service` are in rotation; returns them.

        With `listening` (default), also until each accepts connections.
        """

        def check() -> tuple[list[Replica]] | None:
            reps = [r for r in self.replicas(service) if r.in_rotation]
            # A 1-tuple is truthy even when count is 0.
            return (reps,) if len(reps) == count else None

        found = self.wait_until(
            check,
            timeout=timeout,
            message=f"{service} to have {count} replica(s) in rotation",
        )
        assert found is not None
        if listening and count:
            self.wait_listening([service], timeout=timeout)
        return found[0]


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _headers(message: Any) -> dict[str, str]:
    """Header names lower-cased, so lookups need not guess the server's spelling."""
    return {str(k).lower(): str(v) for k, v in message.items()}


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    interval: float = 0.2,
    *,
    message: str | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy (see Mesh.wait_until)."""
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    last_value: object = None
    while True:
        try:
            value = predicate()
        except (AssertionError, OSError, MeshlocalError) as exc:
            last_error = exc
        else:
            if value:
                return value
            last_value = value
            last_error = None
        if time.monotonic() >= deadline:
            what = message or getattr(predicate, "__name__", "the condition")
            detail = f"last error: {last_error}" if last_error else f"last value: {last_value!r}"
            raise WaitTimeout(
                f"timed out after {timeout:g}s waiting for {what}",
                hint=detail,
            ) from last_error
        time.sleep(interval)
