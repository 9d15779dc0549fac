"""`up`: build, start and connect an environment, or apply a change to it."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import click

from meshlocal.cli.app import Context, Interrupted, cli, env_option, pass_context
from meshlocal.cli.render import err, print_ps
from meshlocal.overrides import (
    ENV_FORMAT,
    PORT_FORMAT,
    EnvOverride,
    OverrideSyntaxError,
    PortOverride,
    parse_env_override,
    parse_port_override,
)

if TYPE_CHECKING:
    from meshlocal.deployment import DataPlane, Deployment
    from meshlocal.runtime.engine import Removed


def _parsed(parse: Callable[[str], object]) -> Callable[..., tuple[object, ...]]:
    """Parse a repeatable override flag: bad syntax is a usage error, before anything runs."""

    def callback(
        ctx: click.Context, param: click.Parameter, values: Sequence[str]
    ) -> tuple[object, ...]:
        try:
            return tuple(parse(v) for v in values)
        except OverrideSyntaxError as exc:
            raise click.BadParameter(f"{exc.message}\n  hint: {exc.hint}", ctx, param) from None

    return callback


def _override_option(
    flag: str, dest: str, parse: Callable[[str], Any], metavar: str
) -> Callable[[str], Callable[[Any], Any]]:
    def option(help_text: str) -> Callable[[Any], Any]:
        return click.option(
            flag, dest, multiple=True, callback=_parsed(parse), metavar=metavar, help=help_text
        )

    return option


port_override_option = _override_option(
    "--port-override", "port_overrides", parse_port_override, PORT_FORMAT
)
env_override_option = _override_option(
    "--env-var-override", "env_overrides", parse_env_override, ENV_FORMAT
)


def _say(line: str) -> None:
    err.print(line, markup=False, style="dim")


@contextlib.contextmanager
def _deployment(
    ctx: Context, env: str | None, services: Sequence[str] = ()
) -> Iterator[Deployment]:
    from meshlocal.deployment import Deployment
    from meshlocal.manifest.loader import select_environment

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
    "--engine",
    "orchestrator",
    type=click.Choice(["docker", "swarm"]),
    default=None,
    help="Run replicas as containers (docker), or as swarm services spread over a swarm's "
    "nodes (swarm: the engine is a manager). Default: as the running mesh runs, else docker.",
)
@click.option(
    "--port",
    "public_port",
    type=click.IntRange(0, 65535),
    default=0,
    help="Host port for Load Balanced Web Services (127.0.0.1). 0: any free port.",
)
@port_override_option(
    "Put the public endpoint on host port HOSTPORT, given the port of a Load Balanced "
    "Web Service behind it, e.g. 8000:80 (Copilot's `run local` flag). Repeatable; "
    "kept by a later `up` only if given again."
)
@env_override_option(
    "Set KEY=VALUE in the replicas of SERVICE (or its SIDECAR), over the manifest; "
    "without a prefix in every container (Copilot's `run local` flag). Repeatable; "
    "kept by a later `up` only if given again."
)
@click.option("--build", "force_build", is_flag=True, help="Rebuild images even if unchanged.")
@click.option(
    "--watch",
    is_flag=True,
    help="Then rebuild and roll a service when a file of its build context changes, and "
    "apply manifest changes (with -d: a background watcher that `down` stops).",
)
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
    orchestrator: str | None,
    public_port: int,
    port_overrides: tuple[PortOverride, ...],
    env_overrides: tuple[EnvOverride, ...],
    force_build: bool,
    watch: bool,
    replace_services: tuple[str, ...],
    timeout: float,
    services: tuple[str, ...],
) -> None:
    """Build, start and connect every service of an environment, or only SERVICE...

    With names, only those manifests are loaded (another service's broken
    manifest is a warning), as `copilot svc deploy` deploys one service at a
    time; services the running mesh already has keep running.
    """
    params = click.get_current_context().params
    started = time.time()  # a save after this is rebuilt by --watch, even before it watches
    quick = _quick_options(params)
    if quick is not None and _nothing_changed(ctx, quick):
        return
    if watch and dataplane == "host" and not detach:
        raise click.UsageError("--watch with --dataplane host needs -d")
    # Imported here, not at the top: a no-op `up -d` returns before needing them.
    from meshlocal.cli.interrupts import interrupted, sigterm_interrupts, undo_attempt
    from meshlocal.cli.running import require_known
    from meshlocal.errors import RuntimeFailure
    from meshlocal.runtime.tunnel import forwarded
    from meshlocal.undo import Snapshot, snapshot

    with _deployment(ctx, env, services) as dep, sigterm_interrupts():
        require_known(dep, replace_services, (s.name for s in dep.spec.services))
        dep.orchestrator = orchestrator
        if dataplane == "host":
            _host_mode_possible(dep)
        if watch:  # one watcher per environment: this one replaces a running one
            from meshlocal.cli.watch import stop_detached

            stop_detached(dep)
        public_port = dep.use_overrides(env_overrides, port_overrides, public_port)
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
            state = dep.state()
            if forwarded(dep.engine, dep.project, dep.env):
                # Its URLs close with this command: say how to keep them.
                state["engine"] = {**dep.engine.where(), "forwarded": True}
            # With the unresolved-endpoint notes.
            print_ps(state, plane.public_url, plane.admin_url.rstrip("/") + "/")
            if quick is not None:
                _remember(dep, plane, quick)
            if watch:
                from meshlocal.cli.watch import start_detached

                start_detached(dep, {**params, "since": started})
            else:
                from meshlocal.cli.watch import follow_options

                follow_options(dep, params)
            return
        watching: Callable[[], None] | None = None
        if watch:
            from meshlocal.cli.watch import loop
            from meshlocal.watch import UpOptions

            port = params["public_port"]  # as given: the overrides' port is applied again
            options = UpOptions(plane.mode, port, timeout, env_overrides, port_overrides)
            watching = functools.partial(loop, ctx, dep.env, services, options, started)
        # A mesh that ran before this `up` is attached to, never owned: Ctrl-C leaves it.
        _attach_until_interrupted(
            dep,
            plane.public_url,
            owned=not before.running,
            watching=watching,
            page_url=plane.admin_url.rstrip("/") + "/",
        )


def _host_mode_possible(dep: Deployment) -> None:
    """Host mode runs the data plane here, on the network's bridge: refused before
    anything is built when the engine is another machine's or the mesh a swarm's."""
    from meshlocal import swarmup
    from meshlocal.errors import RuntimeFailure
    from meshlocal.runtime.enginehost import require_local

    require_local(
        dep.engine.host,
        "host mode runs the data plane on this machine, on the network's bridge",
        "leave out `--dataplane host`: the data plane container runs beside the engine",
    )
    if swarmup.orchestrator(dep.engine, dep.project, dep.env, dep.orchestrator) == "swarm":
        raise RuntimeFailure(
            "host mode can't serve a swarm: the tasks on other nodes can't reach this "
            "machine's bridge",
            hint="leave out `--dataplane host` with `--engine swarm`",
        )


def _quick_options(params: dict[str, Any]) -> dict[str, Any] | None:
    """The options a no-op `up -d` is recognised by; None when it can't be one."""
    if not params.get("detach") or params.get("dataplane") != "container":
        return None
    if params.get("force_build") or params.get("replace_services") or params.get("watch"):
        return None  # each asks for work whatever changed
    # How long to wait changes nothing that runs.
    return {k: v for k, v in params.items() if k not in ("timeout", "detach")}


def _nothing_changed(ctx: Context, options: dict[str, Any]) -> bool:
    """A previous `up -d` left this very mesh, converged: say so and touch nothing."""
    from meshlocal import quickup

    found = quickup.check(ctx.directory, options)
    if found is None:
        return False
    err.print(
        f"[+] Data plane (container) for {found.project}/{found.env}: up to date, nothing changed",
        markup=False,
    )
    print_ps(found.state, found.public_url, found.page_url)
    return True


def _remember(dep: Deployment, plane: DataPlane, options: dict[str, Any]) -> None:
    from meshlocal import quickup

    if dep.applied_config is None or plane.container_id is None or plane.controller_id is None:
        return
    if dep.engine.remote or dep.orchestrator == "swarm":
        return  # its admin URL is this process's tunnel, gone once it exits
    quickup.record(
        dep.workspace.root,
        options,
        inputs=dep.inputs(),
        project=dep.project,
        env=dep.env,
        dataplane_id=plane.container_id,
        controller_id=plane.controller_id,
        admin_url=plane.admin_url,
        public_url=plane.public_url,
        config_json=dep.applied_config,
        images=dep.images_run,
        emulator_id=dep.emulator_id,
    )


def _up_host_foreground(dep: Deployment, *, public_port: int, force_build: bool) -> None:
    """Host mode in the foreground: the agent runs in this process, for debugging.

    A failure or Ctrl-C while building is undone by `up`; once the agent runs,
    Ctrl-C removes everything, as an attached `up` that started the mesh does.
    """
    err.print(f"[+] Building {len(dep.spec.services)} service image(s)", markup=False)
    public_port = dep.resolve_public_port("host", public_port)
    built = dep.build(_say, force_build=force_build)
    network = dep.network()
    desired = dep.desired(built, public_port, dep.start_pubsub(network, _say))
    config = dep.agent_config(desired, "host", network, public_port=public_port)
    import asyncio  # the foreground host-mode controller only: not for every command

    from meshlocal import control
    from meshlocal.cli.follow import LogFollower
    from meshlocal.cli.interrupts import interrupted, uninterrupted
    from meshlocal.cli.logprefix import LogPrinter
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
            err.print(f"[+] Mesh page http://127.0.0.1:{controller.admin_port}/", markup=False)
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


def _attach_until_interrupted(
    dep: Deployment,
    public_url: str | None,
    *,
    owned: bool,
    watching: Callable[[], None] | None = None,
    page_url: str | None = None,
) -> None:
    """Stream the logs until Ctrl-C; then remove the mesh if this `up` started it.

    `watching`: `up --watch`, run in this thread while the logs stream.
    """
    from meshlocal.cli.follow import LogFollower
    from meshlocal.cli.interrupts import interrupted, uninterrupted
    from meshlocal.cli.logprefix import LogPrinter
    from meshlocal.runtime.tunnel import forwarded

    name = f"{dep.workspace.app}/{dep.env}"
    printer = LogPrinter(sys.stdout, colour=sys.stdout.isatty())
    follower = LogFollower(dep.engine, dep.project, dep.env, printer)
    stopped: KeyboardInterrupt | None = None
    try:
        follower.start()
        if public_url:
            err.print(f"[+] Public endpoint {public_url}", markup=False)
        if page_url:
            err.print(f"[+] Mesh page {page_url} (`meshlocal open`)", markup=False)
        if forwarded(dep.engine, dep.project, dep.env):
            err.print(
                f"[+] These URLs are forwarded through the engine at {dep.engine.host.url} "
                "while this command runs",
                markup=False,
            )
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
        if watching is not None:
            watching()  # returns only when the mesh was removed under it
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
