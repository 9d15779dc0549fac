"""`watch`: rebuild and roll services as their files change, against the running mesh.

Also what `up --watch` runs: attached, in its own process while the logs
stream; with `-d`, as a detached `watch --background` process (watch.py).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from meshlocal.cli.app import Context, cli, env_option, pass_context
from meshlocal.cli.render import err
from meshlocal.cli.up import _deployment, env_override_option, port_override_option
from meshlocal.overrides import (
    EnvOverride,
    PortOverride,
)

if TYPE_CHECKING:
    from meshlocal.deployment import Deployment
    from meshlocal.watch import UpOptions


def say(line: str) -> None:
    err.print(line, markup=False)


@cli.command()
@env_option
@click.option(
    "--port",
    "public_port",
    type=click.IntRange(0, 65535),
    default=0,
    help="As `up --port`: the public endpoint's host port each rebuild keeps.",
)
@port_override_option("As `up --port-override`, applied by every rebuild. Repeatable.")
@env_override_option("As `up --env-var-override`, applied by every rebuild. Repeatable.")
@click.option(
    "--timeout",
    type=float,
    default=180.0,
    show_default=True,
    help="Seconds a rebuild waits for the new replicas to become healthy.",
)
# The detached watcher of `up -d --watch`: its mark on the command line, for `ps` and `down`.
@click.option("--background", is_flag=True, hidden=True)
# When `up -d --watch` started: what was saved since then is rebuilt at once.
@click.option("--since", type=float, default=None, hidden=True)
@click.argument("services", nargs=-1, metavar="[SERVICE]...")
@pass_context
def watch(
    ctx: Context,
    env: str | None,
    public_port: int,
    port_overrides: tuple[PortOverride, ...],
    env_overrides: tuple[EnvOverride, ...],
    timeout: float,
    background: bool,
    since: float | None,
    services: tuple[str, ...],
) -> None:
    """Rebuild and roll a service when a file of its build context changes.

    Like `docker compose watch`, against the running mesh: a change in a
    service's build context (after its .dockerignore) or Dockerfile rebuilds
    that service's image and rolls its replicas; a change under copilot/ or
    to an env file is applied like `up -d`. Give the overrides `up` was given.
    """
    from meshlocal import watch as watching
    from meshlocal.cli.running import running_mesh
    from meshlocal.watch import UpOptions

    with running_mesh(ctx.directory, env, services) as dep:
        mode = dep.dataplane().mode
        env = dep.env
        pid_file = watching.pid_file(dep)
        if not background:
            stop_detached(dep)
    options = UpOptions(mode, public_port, timeout, env_overrides, port_overrides)
    try:
        watch_here(ctx, env, services, options, since)
    finally:
        if background:
            _forget_self(pid_file)


def watch_here(
    ctx: Context,
    env: str | None,
    services: tuple[str, ...],
    options: UpOptions,
    since: float | None = None,
) -> None:
    """`watch` in the foreground: until Ctrl-C, SIGTERM, or the mesh is removed."""
    from meshlocal.cli.interrupts import interrupted, sigterm_interrupts

    try:
        with sigterm_interrupts():
            loop(ctx, env, services, options, since)
    except KeyboardInterrupt as exc:
        say("[watch] stopped")
        raise interrupted(exc, "while watching; the mesh keeps running") from None


def loop(
    ctx: Context,
    env: str | None,
    services: tuple[str, ...],
    options: UpOptions,
    since: float | None = None,
) -> None:
    """Rebuild on change until the mesh is removed; Ctrl-C raises through."""
    from meshlocal.manifest import find_workspace
    from meshlocal.watch import Rebuilder, watch_loop

    root = find_workspace(ctx.directory, lenient=True).root
    rebuilder = Rebuilder(root, lambda: _deployment(ctx, env, services), options, say)
    watch_loop(rebuilder.targets(), rebuilder, say=say, since=since)


def background_args(env: str, params: dict[str, Any]) -> list[str]:
    """`watch` options that repeat `up`'s, so every rebuild runs `up` as the user did."""
    args = ["--env", env, "--timeout", str(params["timeout"])]
    if params.get("public_port"):
        args += ["--port", str(params["public_port"])]
    args += [f"--env-var-override={o}" for o in params.get("env_overrides") or ()]
    args += [f"--port-override={o}" for o in params.get("port_overrides") or ()]
    if params.get("since") is not None:
        args += ["--since", repr(params["since"])]
    return [*args, "--", *(params.get("services") or ())]


def start_detached(dep: Deployment, params: dict[str, Any]) -> None:
    """`up -d --watch`: a background watcher (replacing a running one); `down` stops it."""
    from meshlocal import watch as watching

    found = watching.start(dep, background_args(dep.env, params))
    err.print(
        f"[+] Watching for changes: pid {found.pid}, log {found.log} (`meshlocal down` stops it)",
        markup=False,
    )


def follow_options(dep: Deployment, params: dict[str, Any]) -> None:
    """A plain `up -d` while a detached watcher runs: the watcher's next rebuilds
    would otherwise re-run `up` with its old options and undo this one's."""
    from meshlocal import watch as watching

    found = watching.running(dep)
    wanted = background_args(dep.env, params)
    if found is None or watching.args_of(found.pid) == wanted:
        return
    found = watching.start(dep, wanted)
    say(f"[+] The background watcher now rebuilds with this `up`'s options (pid {found.pid})")


def stop_detached(dep: Deployment) -> None:
    """One watcher per environment: watching here replaces a detached one."""
    from meshlocal import watch as watching

    pid = watching.stop(watching.pid_file(dep))
    if pid is not None:
        say(f"[+] Stopped the background watcher (pid {pid}): this one replaces it")


def _forget_self(path: Path) -> None:
    """A detached watcher that ends leaves no pid file naming it."""
    with contextlib.suppress(OSError, ValueError):
        if int(path.read_text().strip()) == os.getpid():
            path.unlink()
