"""`meshlocal exec` and `meshlocal run`: a command in a replica, or in a one-off task.

exec runs a process inside a running replica (or one of its sidecars), as
`docker compose exec` does. run starts a one-off task of a service, as
`docker compose run --rm` does: the image and environment its replicas run
with, on the mesh network, the data plane as DNS server.

A one-off must be a Service Connect client of its service: the data plane's
DNS knows clients by their source address in the registry. So it is two
containers, as an ECS task with its pause container: a holder (busybox,
labelled role `run`) owns the network namespace, and the controller records
it as a client-only member (registry.py, never a replica: no rotation, no
Service Discovery, no restart); once the data plane lists it, the command
starts in the holder's namespace (role `run-command`), so its first query is
already answered as a client's. Both carry the project's labels: `down`
removes one left behind.
"""

from __future__ import annotations

import contextlib
import posixpath
import shlex
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meshlocal.errors import CommandNotFound, MeshlocalError, ReplicaNotFound, RuntimeFailure
from meshlocal.runtime import labels as L
from meshlocal.runtime.backoff import KEPT_SUFFIX
from meshlocal.runtime.engine import ContainerInfo, ContainerSpec, Engine, engine_errors
from meshlocal.runtime.pump import Resize, pump, raw_socket, raw_terminal
from meshlocal.runtime.tasks import NETNS, NO_HEALTHCHECK, TASK

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SHELL = "/bin/sh"
# Per-container variables of the replica copied: they would describe it, not the one-off.
_NOT_COPIED = ("ECS_CONTAINER_METADATA_URI", "ECS_CONTAINER_METADATA_URI_V4", "HOSTNAME")
REGISTER_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Terminal:
    """How the caller's terminal takes part: stdin's fd (None: not attached) and a TTY."""

    stdin: int | None
    tty: bool


def _interact(
    sock: socket.socket,
    terminal: Terminal,
    resize: Resize,
    before: Callable[[], object] | None = None,
) -> None:
    """The terminal and the container's stream joined until it ends (raw mode when a TTY)."""
    try:
        if before is not None:
            before()
        with raw_terminal(terminal.stdin if terminal.tty else None):
            pump(
                sock,
                tty=terminal.tty,
                stdin=terminal.stdin,
                resize=resize if terminal.tty else None,
            )
    finally:
        sock.close()


# -- finding containers -------------------------------------------------------------


def replicas_of(engine: Engine, project: str, env: str, service: str) -> list[ContainerInfo]:
    """The running replicas of a service, by index (a crashed one kept for its logs is not)."""
    infos = engine.list_containers(project, env, role=L.Role.REPLICA, service=service)
    live = [i for i in infos if i.running and i.index and not i.name.endswith(KEPT_SUFFIX)]
    return sorted(live, key=lambda i: i.index or 0)


def target(
    engine: Engine, project: str, env: str, service: str, index: int, sidecar: str | None
) -> ContainerInfo:
    """Replica `index` of `service` (what `ps` calls api-2), or its sidecar; ReplicaNotFound."""
    replicas = replicas_of(engine, project, env, service)
    found = [r for r in replicas if r.index == index]
    if not found:
        running = ", ".join(f"{service}-{r.index}" for r in replicas) or "none"
        raise ReplicaNotFound(
            f"no replica {service}-{index} runs in environment {env}",
            hint=f"running replicas of {service}: {running} (`meshlocal ps` lists them)",
        )
    replica = found[0]
    if sidecar is None:
        return replica
    task = replica.labels.get(TASK)
    sidecars = [
        s
        for s in engine.list_containers(project, env, role=L.Role.SIDECAR, service=service)
        if (s.labels.get(TASK) == task if task else s.index == index) and s.running
    ]
    for s in sidecars:
        if s.labels.get(L.SIDECAR) == sidecar:
            return s
    names = ", ".join(sorted(str(s.labels.get(L.SIDECAR)) for s in sidecars)) or "none"
    raise ReplicaNotFound(
        f'no sidecar "{sidecar}" runs in {service}-{index}',
        hint=f"its running sidecars: {names}",
    )


# -- is the program there? ------------------------------------------------------------


def _exists(engine: Engine, container_id: str, path: str) -> bool:
    """Whether `path` exists in a container's filesystem (created or running): a HEAD, no copy."""
    api = engine.api
    url = api._url("/containers/{0}/archive", container_id)  # what get_archive calls
    with engine_errors(f"looking for {path} in {container_id[:12]}"):
        response = api.head(url, params={"path": path})
    return bool(response.status_code == 200)


def _variables(raw: Mapping[str, Any]) -> dict[str, str]:
    pairs = (raw.get("Config") or {}).get("Env") or []
    out: dict[str, str] = {}
    for pair in pairs:
        key, _, value = str(pair).partition("=")
        out[key] = value
    return out


def check_program(
    engine: Engine, container_id: str, raw: Mapping[str, Any], program: str, what: str, hint: str
) -> None:
    """CommandNotFound unless `program` is in the image: a path, or a name on its PATH.

    Checked before anything runs, so the message is meshlocal's and the
    engine's OCI error never reaches the terminal.
    """
    config = raw.get("Config") or {}
    if "/" in program:
        path = posixpath.join(str(config.get("WorkingDir") or "/"), program)
        if _exists(engine, container_id, path):
            return
        missing = f"no {program}"
    else:
        dirs = [d for d in _variables(raw).get("PATH", DEFAULT_PATH).split(":") if d]
        if any(_exists(engine, container_id, posixpath.join(d, program)) for d in dirs):
            return
        missing = f"no {program} on its PATH ({':'.join(dirs)})"
    raise CommandNotFound(f"the image of {what} has {missing}", hint=hint)


def main_program(raw: Mapping[str, Any]) -> str | None:
    """The program the container's main process runs: a command the image surely has."""
    config = raw.get("Config") or {}
    words = [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]
    return str(words[0]) if words else None


def no_program_hint(cli: str, raw: Mapping[str, Any]) -> str:
    program = main_program(raw)
    example = f"{cli} -- {program} --help" if program else f"{cli} -- /path/to/program"
    return f"name a command the image has: `{example}`"


# -- exec -------------------------------------------------------------------------------


def exec_in(
    engine: Engine,
    info: ContainerInfo,
    command: Sequence[str] | None,
    terminal: Terminal,
    *,
    what: str,
    cli: str,
) -> int:
    """Run `command` (None: a shell) in a running container; its exit status."""
    api = engine.api
    with engine_errors(f"inspecting {info.name}"):
        raw = api.inspect_container(info.id)
    argv = list(command) if command else [SHELL]
    hint = no_program_hint(cli, raw)
    if not command:
        hint = f"{hint}; without a shell, a command must be named"
    check_program(engine, info.id, raw, argv[0], what, hint)
    with engine_errors(f"exec in {info.name}"):
        exec_id = str(
            api.exec_create(
                info.id,
                argv,
                stdin=terminal.stdin is not None,
                tty=terminal.tty,
                stdout=True,
                stderr=True,
            )["Id"]
        )
        stream = api.exec_start(exec_id, socket=True, tty=terminal.tty)
    _interact(
        raw_socket(stream),
        terminal,
        lambda rows, columns: api.exec_resize(exec_id, height=rows, width=columns),
    )
    # The stream ends a moment before the engine records the exit.
    deadline = time.monotonic() + 10
    while True:
        with engine_errors(f"exec in {info.name}"):
            state = api.exec_inspect(exec_id)
        if not state.get("Running") or time.monotonic() > deadline:
            code = state.get("ExitCode")
            return int(code) if code is not None else 1
        time.sleep(0.05)


# -- run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class OneOff:
    """What `meshlocal run` needs to know about the mesh it runs a task in."""

    project: str
    env: str
    service: str
    holder_image: str  # busybox: holds the network namespace
    workspace: str | None = None


def one_off_name(project: str, env: str, service: str) -> str:
    """`kudos-1a2b3c4d-test-api-run-0f3a9c21`: never a mesh name, never a replica's."""
    return f"{project}-{L.slug(env)}-{L.slug(service)}-run-{uuid.uuid4().hex[:8]}"


def run_one_off(
    engine: Engine,
    job: OneOff,
    command: Sequence[str] | None,
    environment: Mapping[str, str],
    terminal: Terminal,
    *,
    registered: Callable[[str], bool],
    say: Callable[[str], None] = lambda _line: None,
) -> int:
    """Run `command` in a new one-off task of the service and remove it; its exit status.

    `registered(holder_id)` tells whether the data plane knows the holder as
    a client yet (the status the controller sends lists it).
    """
    replicas = replicas_of(engine, job.project, job.env, job.service)
    if not replicas:
        raise RuntimeFailure(
            f"no replica of {job.service} runs in environment {job.env}: a one-off takes "
            "the image and variables the replicas run with",
            hint=f"`meshlocal scale {job.service}=1` starts one",
        )
    api = engine.api
    with engine_errors(f"inspecting {replicas[0].name}"):
        source = api.inspect_container(replicas[0].id)
    name = one_off_name(job.project, job.env, job.service)
    network = L.network_name(job.project, job.env)
    labels = {
        **L.base_labels(
            job.project, job.env, L.Role.RUN, Path(job.workspace) if job.workspace else None
        ),
        L.SERVICE: job.service,
    }
    holder = ContainerSpec(
        name=f"{name}-net",
        image=job.holder_image,
        labels=labels,
        command=("sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"),
        network=network,
        hostname=L.hostname_for(name),
        dns=_dns_of(engine, source),
        healthcheck=NO_HEALTHCHECK,
    )
    created: list[str] = []
    try:
        holder_id = engine.create_container(holder)
        created.append(holder_id)
        engine.start(holder_id)
        _wait_registered(registered, holder_id, job.service)
        config = source.get("Config") or {}
        variables = {k: v for k, v in _variables(source).items() if k not in _NOT_COPIED}
        variables.update(environment)
        argv = list(command) if command else list(config.get("Cmd") or [])
        with engine_errors(f"creating container {name}"):
            cid = str(
                api.create_container(
                    image=str(source["Image"]),  # the very image the replicas run
                    command=argv or None,
                    entrypoint=config.get("Entrypoint"),
                    name=name,
                    environment=variables,
                    labels={**labels, L.ROLE: L.Role.RUN_COMMAND.value, NETNS: holder_id},
                    working_dir=config.get("WorkingDir") or None,
                    user=config.get("User") or None,
                    tty=terminal.tty,
                    stdin_open=terminal.stdin is not None,
                    healthcheck={"test": ["NONE"]},
                    host_config=api.create_host_config(network_mode=f"container:{holder_id}"),
                )["Id"]
            )
        created.append(cid)
        program = main_program({"Config": {**config, "Cmd": argv}})
        if program is None:
            raise CommandNotFound(
                f"the image of {job.service} names no command to run",
                hint=f"name one: `meshlocal run {job.service} -- COMMAND`",
            )
        with engine_errors(f"inspecting {name}"):
            raw = api.inspect_container(cid)
        check_program(
            engine,
            cid,
            raw,
            program,
            job.service,
            no_program_hint(f"meshlocal run {job.service}", source),
        )
        say(f"[+] one-off {name} of {job.service}: {shlex.join(argv)}")
        return _attach_and_run(engine, cid, terminal)
    finally:
        with _uninterrupted():  # a second Ctrl-C must not leave the one-off behind
            for cid in reversed(created):  # the command before the namespace it joined
                with contextlib.suppress(Exception):
                    engine.remove(cid)


@contextlib.contextmanager
def _uninterrupted() -> Iterator[None]:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _attach_and_run(engine: Engine, cid: str, terminal: Terminal) -> int:
    api = engine.api
    params = {"stdin": int(terminal.stdin is not None), "stdout": 1, "stderr": 1, "stream": 1}
    with engine_errors("attaching to the one-off"):
        stream = api.attach_socket(cid, params=params)
    _interact(
        raw_socket(stream),
        terminal,
        lambda rows, columns: api.resize(cid, height=rows, width=columns),
        before=lambda: engine.start(cid),  # attached first: no output is lost
    )
    with engine_errors("waiting for the one-off"):
        result = api.wait(cid, timeout=30)
    return int(result.get("StatusCode", 1))


def _wait_registered(registered: Callable[[str], bool], holder_id: str, service: str) -> None:
    deadline = time.monotonic() + REGISTER_TIMEOUT_S
    while not registered(holder_id):
        if time.monotonic() > deadline:
            raise RuntimeFailure(
                f"the data plane did not take the one-off as a client of {service} "
                f"within {REGISTER_TIMEOUT_S:.0f} s",
                hint="`meshlocal logs` shows what the controller says",
            )
        time.sleep(0.1)


def _dns_of(engine: Engine, raw: Mapping[str, Any]) -> tuple[str, ...]:
    """The replica's DNS servers (the data plane); in a pause container's namespace, its."""
    servers = (raw.get("HostConfig") or {}).get("Dns") or []
    owner = ((raw.get("Config") or {}).get("Labels") or {}).get(NETNS)
    if not servers and owner:
        with contextlib.suppress(MeshlocalError), engine_errors():
            servers = (engine.api.inspect_container(owner).get("HostConfig") or {}).get("Dns")
    return tuple(str(s) for s in servers or ())
