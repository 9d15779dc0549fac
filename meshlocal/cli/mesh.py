"""`up`, `down`, `ps`, `logs`, `resolve`, `scale`, `stats` and the hidden `agent`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from meshlocal.adminapi import admin_call
from meshlocal.cli.app import Context, Interrupted, cli, pass_context
from meshlocal.cli.interrupts import (
    interrupted,
    sigterm_interrupts,
    undo_attempt,
    uninterrupted,
)
from meshlocal.cli.logprefix import LogPrinter
from meshlocal.cli.render import err, out, print_dataplane_down, print_ps, stats_modes
from meshlocal.cli.running import check_down_environment, require_known, running_mesh
from meshlocal.cli.workspace import env_option
from meshlocal.deployment import Deployment, stop_host_agents
from meshlocal.errors import DataPlaneDown, RuntimeFailure
from meshlocal.manifest.loader import select_environment
from meshlocal.runtime import labels as L
from meshlocal.runtime.backoff import KEPT_SUFFIX
from meshlocal.runtime.engine import ContainerInfo, Engine, Removed, engine_errors
from meshlocal.teardown import remove_refs, teardown, used_images
from meshlocal.undo import Snapshot, snapshot


def _display_name(info: ContainerInfo) -> str:
    if info.role == L.Role.DATAPLANE.value:
        return "meshlocal"
    if info.role == L.Role.CONTROLLER.value:
        return "meshlocal-controller"
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
        if info.role in (L.Role.DATAPLANE.value, L.Role.CONTROLLER.value):
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


def _say(line: str) -> None:
    err.print(line, markup=False, style="dim")


@contextlib.contextmanager
def _deployment(
    ctx: Context, env: str | None, services: Sequence[str] = ()
) -> Iterator[Deployment]:
    if services:
        # The running mesh's other services stay: they are loaded as if named.
        probe = Deployment(ctx.directory, env)
        env = select_environment(probe.workspace, env).name
        probe = Deployment(ctx.directory, env)
        try:
            running = probe.running_services()
        finally:
            probe.close()
        services = (*services, *(s for s in running if s not in services))
    dep = Deployment(ctx.directory, env, services=services)
    try:
        for note in dep.load_notes() if services else ():
            _say(note)
        yield dep
    finally:
        dep.close()


# -- up --------------------------------------------------------------------


@cli.command()
@env_option
@click.option("-d", "--detach", is_flag=True, help="Return once every replica is healthy.")
@click.option(
    "--dataplane",
    type=click.Choice(["container", "host"]),
    default=lambda: os.environ.get("MESHLOCAL_DATAPLANE", "container"),
    show_default="container",
    help="Run DNS and proxy in a container on the network, or on the host's gateway "
    "address (Linux, root).",
)
@click.option(
    "--port",
    "public_port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Host port for Load Balanced Web Services (127.0.0.1). 0: any free port.",
)
@click.option("--build", "force_build", is_flag=True, help="Rebuild images even if unchanged.")
@click.option(
    "--replace",
    "replace_services",
    multiple=True,
    metavar="SERVICE",
    help="Replace every replica of SERVICE (rolling), e.g. so a Service Connect client "
    "sees endpoints added after it started. Repeatable.",
)
@click.option(
    "--timeout",
    type=float,
    default=180.0,
    show_default=True,
    help="Seconds to wait for every replica to become healthy.",
)
@click.argument("services", nargs=-1, metavar="[SERVICE]...")
@pass_context
def up(
    ctx: Context,
    env: str | None,
    detach: bool,
    dataplane: str,
    public_port: int,
    force_build: bool,
    replace_services: tuple[str, ...],
    timeout: float,
    services: tuple[str, ...],
) -> None:
    """Build, start and connect every service of an environment, or only SERVICE...

    With names, only those manifests are loaded (another service's broken
    manifest is a warning), as `copilot svc deploy` deploys one service at a
    time; services the running mesh already has keep running.
    """
    with _deployment(ctx, env, services) as dep, sigterm_interrupts():
        require_known(dep, replace_services, (s.name for s in dep.spec.services))
        dep.check_replica_limit()
        for skipped in dep.spec.skipped:
            _say(f"{skipped.name}: {skipped.type.value} is not emulated, skipped")
        before: Snapshot | None = None
        try:
            # What this attempt finds, so a failure undoes only what it created.
            before = snapshot(dep)
            dep.check_public_port(public_port)
            if dataplane == "host" and not detach:
                if before.running:
                    # This path owns what it starts and removes it on exit: never a running mesh.
                    raise RuntimeFailure(
                        f"a mesh is already running for {dep.workspace.app}/{dep.env}",
                        hint="`meshlocal up -d --dataplane host` applies to it and `meshlocal "
                        "logs -f` follows it; or `meshlocal down` first",
                    )
                _up_host_foreground(dep, public_port=public_port, force_build=force_build)
                return
            if any(s.build is not None for s in dep.spec.services):
                built = sum(1 for s in dep.spec.services if s.build is not None)
                err.print(f"[+] Building {built} service image(s)", markup=False)
            plane = dep.up(
                mode="host" if dataplane == "host" else "container",
                public_port=public_port,
                timeout=timeout,
                wait=detach,
                progress=_say,
                force_build=force_build,
                replace_services=replace_services,
            )
        except Interrupted:
            raise  # already handled (host mode's foreground agent)
        except KeyboardInterrupt as exc:
            done = undo_attempt(dep, before, say=False)  # said once, in the last line
            wait = "before every replica was healthy" if detach else "before the mesh was up"
            raise interrupted(exc, f"during `up`, {wait} ({dep.phase}); {done}") from None
        except BaseException:
            undo_attempt(dep, before)
            raise
        err.print(f"[+] Data plane ({plane.mode}) for {dep.project}/{dep.env}", markup=False)
        if detach:
            print_ps(dep.state(), plane.public_url)  # with the unresolved-endpoint notes
            return
        # A mesh that ran before this `up` is attached to, never owned: Ctrl-C leaves it.
        _attach_until_interrupted(dep, plane.public_url, owned=not before.running)


def _up_host_foreground(dep: Deployment, *, public_port: int, force_build: bool) -> None:
    """Host mode in the foreground: the agent runs in this process, for debugging.

    A failure or Ctrl-C while building is undone by `up`; once the agent runs,
    Ctrl-C removes everything, as an attached `up` that started the mesh does.
    """
    err.print(f"[+] Building {len(dep.spec.services)} service image(s)", markup=False)
    public_port = dep.resolve_public_port("host", public_port)
    desired = dep.desired(dep.build(_say, force_build=force_build), public_port)
    network = dep.network()
    config = dep.agent_config(desired, "host", network, public_port=public_port)
    import asyncio  # the foreground host-mode controller only: not for every command

    from meshlocal import control
    from meshlocal.errors import DataPlaneError
    from meshlocal.mesh import Controller

    logging.basicConfig(level=logging.INFO, format="meshlocal  | %(message)s")

    async def main() -> None:
        controller = Controller(config, dep.engine)
        server: asyncio.AbstractServer | None = None
        try:
            await controller.start()
            if controller.link_error and controller.admin_port is None:
                raise DataPlaneError(controller.link_error)
            path = str(dep.control_path())
            server = await control.serve(path, controller.command)
            port = controller.public_port
            public = f"http://127.0.0.1:{port}" if port else None
            dep.record_host_admin(f"http://127.0.0.1:{controller.admin_port}", public, path)
            printer = LogPrinter(sys.stdout, colour=sys.stdout.isatty())
            follower = LogFollower(dep.engine, dep.project, dep.env, printer, dataplane=False)
            await asyncio.to_thread(follower.start)
            if public:
                err.print(f"[+] Public endpoint {public}", markup=False)
            await asyncio.Event().wait()
        finally:
            if server is not None:
                server.close()
            await controller.stop()

    stopped: KeyboardInterrupt | None = None
    try:
        asyncio.run(main())
    except KeyboardInterrupt as exc:
        stopped = exc
    finally:
        with uninterrupted():
            err.print("[+] Stopping: removing containers and network", markup=False)
            removed = dep.down()  # images kept, as `down` keeps them
    if stopped is not None:
        raise interrupted(stopped, f"while attached; removed {_counts(removed)}")


def _counts(removed: Removed) -> str:
    return (
        f"{len(removed.containers)} container(s), "
        f"{len(removed.networks)} network(s), {len(removed.images)} image(s)"
    )


def _attach_until_interrupted(dep: Deployment, public_url: str | None, *, owned: bool) -> None:
    """Stream the logs until Ctrl-C; then remove the mesh if this `up` started it."""
    name = f"{dep.workspace.app}/{dep.env}"
    printer = LogPrinter(sys.stdout, colour=sys.stdout.isatty())
    follower = LogFollower(dep.engine, dep.project, dep.env, printer)
    stopped: KeyboardInterrupt | None = None
    try:
        follower.start()
        if public_url:
            err.print(f"[+] Public endpoint {public_url}", markup=False)
        if owned:
            err.print(
                "[+] Attached. Press Ctrl-C to stop and remove the containers and network.",
                markup=False,
            )
        else:
            err.print(
                f"[+] attaching to the running mesh {name}; Ctrl-C detaches and leaves it running",
                markup=False,
            )
        threading.Event().wait()
    except KeyboardInterrupt as exc:
        stopped = exc
    finally:
        follower.stop()
        if owned:
            with uninterrupted():
                err.print("[+] Stopping: removing containers and network", markup=False)
                removed = dep.down()  # images kept, as `down` keeps them
                err.print(f"[+] Removed {_counts(removed)}", markup=False)
    if stopped is None:
        return
    if owned:
        raise interrupted(stopped, f"while attached: {name} was removed")
    raise interrupted(
        stopped, f"while attached: detached; {name} keeps running (`meshlocal down` removes it)"
    )


# -- down ------------------------------------------------------------------


@cli.command()
@env_option
@click.option(
    "--rmi",
    type=click.Choice(["local", "all"]),
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[local|all]",
    help="Also remove images, as compose's --rmi: `local` (what a bare --rmi means) the "
    "service images built for this workspace; `all` also those its services ran by name "
    "(image.location, sidecars). Shared caches are always kept.",
)
# Images are kept by default now: the old flag still parses, and changes nothing.
@click.option("--keep-images", is_flag=True, hidden=True)
@click.option(
    "--project",
    metavar="PROJECT",
    default=None,
    help="Remove a project by its id (see `meshlocal ls`), without its workspace: "
    "for a mesh whose folder is gone.",
)
@pass_context
def down(
    ctx: Context, env: str | None, rmi: str | None, keep_images: bool, project: str | None
) -> None:
    """Remove every container, network and volume the environment created.

    Found by label, so it works after meshlocal was killed. Images are kept,
    as compose keeps them, so the next `up` builds nothing; `--rmi` removes
    them. The shared caches (Python base, busybox, data-plane image) are kept.
    """
    del keep_images  # the hidden no-op alias of the default
    if project is not None:
        engine = Engine.from_env()
        try:
            ran = used_images(engine, project, env) if rmi == "all" else ()
            stop_host_agents(project)
            removed = teardown(
                engine, project, env, image_prefix=f"meshlocal/{project}-" if rmi else None
            )
            removed = replace(removed, images=(*removed.images, *remove_refs(engine, ran)))
        finally:
            engine.close()
    else:
        check_down_environment(ctx.directory, env)
        dep = Deployment(ctx.directory, env, lenient=True)
        try:
            ran = used_images(dep.engine, dep.project, env) if rmi == "all" else ()
            removed = dep.down(images=rmi is not None)
            removed = replace(removed, images=(*removed.images, *remove_refs(dep.engine, ran)))
        finally:
            dep.close()
    for name in removed.containers:
        err.print(f"[+] Removed container {name}", markup=False)
    for name in removed.networks:
        err.print(f"[+] Removed network {name}", markup=False)
    for name in removed.images:
        err.print(f"[+] Removed image {name}", markup=False)
    if not removed.containers and not removed.networks and not removed.images:
        err.print("[+] Nothing to remove", markup=False)


@cli.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(as_json: bool) -> None:
    """List every mesh on this Docker engine, with its workspace (like `docker compose ls`)."""
    engine = Engine.from_env()
    try:
        rows: list[dict[str, Any]] = []
        for project, env in engine.projects():
            containers = engine.list_containers(project, env or None)
            # The network carries the workspace too: a mesh that has only its
            # network left (no container yet, or none any more) is still known.
            with engine_errors("listing networks"):
                nets = engine.api.networks(filters={"label": L.filters(project, env or None)})
            labelled = [dict(c.labels) for c in containers] + [n.get("Labels") or {} for n in nets]
            workspace = next((lb[L.WORKSPACE] for lb in labelled if lb.get(L.WORKSPACE)), "")
            running = sum(1 for c in containers if c.running)
            rows.append(
                {
                    "project": project,
                    "env": env,
                    "workspace": workspace,
                    "workspace_exists": bool(workspace) and Path(workspace).is_dir(),
                    "running": running,
                    "containers": len(containers),
                }
            )
    finally:
        engine.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table()
    for col in ("PROJECT", "ENV", "RUNNING", "WORKSPACE"):
        table.add_column(col)
    for row in rows:
        table.add_row(
            row["project"],
            row["env"],
            f"{row['running']}/{row['containers']}",
            row["workspace"]
            if row["workspace_exists"]
            else f"{row['workspace'] or '(unknown)'} (gone: `meshlocal down --project` removes it)",
        )
    out.print(table)


# -- ps / scale / stats ----------------------------------------------------


@cli.command()
@env_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def ps(ctx: Context, env: str | None, as_json: bool) -> None:
    """List services, replicas, addresses, health and endpoints."""
    with running_mesh(ctx.directory, env, dataplane=False) as dep:
        try:
            plane = dep.dataplane()
        except DataPlaneDown as down:
            # What the engine still runs, by label: the agent that knew more is gone.
            print_dataplane_down(down.containers, dep.project, dep.env, as_json=as_json)
            raise
        state = admin_call(plane.admin_url, "/v1/state")
        state["public_url"] = plane.public_url
        if as_json:
            click.echo(json.dumps(state, indent=2, sort_keys=True))
        else:
            print_ps(state, plane.public_url)


@cli.command()
@env_option
@click.argument("assignments", nargs=-1, required=True, metavar="SVC=N...")
@click.option(
    "--timeout", type=float, default=180.0, show_default=True, help="Seconds to wait for ready."
)
@pass_context
def scale(ctx: Context, env: str | None, assignments: tuple[str, ...], timeout: float) -> None:
    """Set the number of replicas of services, e.g. `meshlocal scale api=5`."""
    wanted: list[tuple[str, int]] = []
    for item in assignments:
        name, sep, number = item.partition("=")
        if not sep or not number.isdigit():
            raise RuntimeFailure(
                f"cannot read {item!r}", hint="write SERVICE=COUNT, e.g. `meshlocal scale api=3`"
            )
        wanted.append((name, int(number)))
    with running_mesh(ctx.directory, env, [name for name, _ in wanted]) as dep:
        for name, count in wanted:
            dep.scale(name, count)
        # Like `up -d`: return once the new replicas are in rotation.
        try:
            dep.wait_ready(timeout, services=[name for name, _ in wanted])
        except KeyboardInterrupt as exc:
            goal = ", ".join(f"{name} to {count}" for name, count in wanted)
            raise interrupted(
                exc,
                f"while waiting: the data plane goes on scaling {goal}; `meshlocal ps` shows "
                "how far it got, another `meshlocal scale` changes it",
            ) from None
        for name, count in wanted:
            err.print(f"[+] {name} scaled to {count}", markup=False)


@cli.command()
@env_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def stats(ctx: Context, env: str | None, as_json: bool) -> None:
    """Service Connect metrics per service (the names ECS publishes to CloudWatch)."""
    from meshlocal.proxy.metrics import stats_table

    with running_mesh(ctx.directory, env) as dep:
        snapshot = dep.call("/stats")
        if as_json:
            click.echo(json.dumps(snapshot, indent=2, sort_keys=True))
            return
        state = dep.state()
    out.print(stats_table(snapshot, stats_modes(state)))


# -- logs ------------------------------------------------------------------


def _tail(value: str) -> str:
    if value == "all" or value.isdigit():
        return value
    raise click.BadParameter(f"{value!r} is not a number of lines or `all`")


@cli.command()
@env_option
@click.argument("services", nargs=-1)
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines and replicas.")
@click.option(
    "--tail",
    default="all",
    callback=lambda _ctx, _param, value: _tail(value),
    help="Lines to show from the end of each log (a number, or all).",
)
@pass_context
def logs(ctx: Context, env: str | None, services: tuple[str, ...], follow: bool, tail: str) -> None:
    """Show replica logs with compose-style prefixes."""
    with running_mesh(ctx.directory, env, services, dataplane=False) as dep:
        if not dep.engine.list_containers(dep.project, dep.env):
            dep.dataplane()  # nothing on the engine: `no mesh is running`, as everywhere
        printer = LogPrinter(sys.stdout, colour=sys.stdout.isatty())
        follower = LogFollower(
            dep.engine,
            dep.project,
            dep.env,
            printer,
            services=set(services) or None,
            tail=int(tail) if tail.isdigit() else "all",
            follow=follow,
            dataplane=not services,
        )
        follower.start()
        if not follower.attached:
            err.print(
                f"[+] No container of {', '.join(services) or 'the mesh'} runs in {dep.env}"
                + (": waiting for one to start" if follow else ""),
                markup=False,
            )
        try:
            if follow:
                threading.Event().wait()
            follower.wait()
        except KeyboardInterrupt:
            pass
        finally:
            follower.stop()


# -- resolve ---------------------------------------------------------------


@cli.command()
@env_option
@click.argument("name")
@click.option("--from", "from_", required=True, metavar="SVC", help="Ask from a replica of SVC.")
@click.option(
    "--type",
    "qtype",
    type=click.Choice(["A", "SRV"], case_sensitive=False),
    default="A",
    show_default=True,
    help="A or SRV.",
)
@click.option("--json", "as_json", is_flag=True)
@pass_context
def resolve(
    ctx: Context, env: str | None, name: str, from_: str, qtype: str, as_json: bool
) -> None:
    """What a service's containers get for NAME, asked from inside one of them."""
    from meshlocal.probe import resolve_from

    with running_mesh(ctx.directory, env, [from_]) as dep:
        result = resolve_from(dep, name, from_, qtype.upper())
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True))
        return
    if result["rcode"] != "NOERROR":
        out.print(f"{name}: {result['rcode']} (from {result['client']})", markup=False)
        raise SystemExit(1)
    targets = " ".join(result["answers"]) or "(no records)"
    out.print(f"{name} -> {targets} ({result['meaning']}, from {result['client']})", markup=False)
