"""`exec` (a command in a running replica) and `run` (a one-off task of a service).

Light at import: the engine, the pump and the one-off machinery load when
a command runs, not for `--help`.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

import click

from meshlocal.cli.app import Context, Interrupted, cli, env_option, pass_context
from meshlocal.cli.running import running_mesh
from meshlocal.errors import ImageError, RuntimeFailure

if TYPE_CHECKING:
    from meshlocal.runtime.engine import Engine
    from meshlocal.runtime.oneoff import Terminal

_ARGS = {"help_option_names": ["-h", "--help"]}


def _terminal(no_tty: bool) -> Terminal:
    """stdin is forwarded (as compose's exec and run do); a TTY when stdin is one, unless -T."""
    from meshlocal.runtime.oneoff import Terminal

    fd: int | None
    try:
        fd = sys.stdin.fileno()
        os.fstat(fd)
    except (AttributeError, ValueError, OSError):  # no stdin at all: nothing to forward
        fd = None
    return Terminal(stdin=fd, tty=fd is not None and not no_tty and os.isatty(fd))


@cli.command(name="exec", context_settings=_ARGS)
@env_option
@click.option(
    "-n",
    "--index",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Which replica, numbered as `meshlocal ps` shows them (api-2 is 2).",
)
@click.option("--container", "sidecar", metavar="SIDECAR", help="Run in this sidecar instead.")
@click.option("-T", "--no-tty", is_flag=True, help="No pseudo-terminal, even on a terminal.")
@click.argument("service")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- COMMAND...]")
@pass_context
def exec_(
    ctx: Context,
    env: str | None,
    index: int,
    sidecar: str | None,
    no_tty: bool,
    service: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND (default: /bin/sh) in a running replica of SERVICE, like `compose exec`.

    Interactive, with a pseudo-terminal when stdin is one. The exit status
    is the command's.
    """
    from meshlocal.runtime.oneoff import exec_in, target

    with running_mesh(ctx.directory, env, [service], dataplane=False) as dep:
        dep.dataplane()  # nothing running: `no mesh is running`, as everywhere
        info = target(dep.engine, dep.project, dep.env, service, index, sidecar)
        what = f"{service}-{index}" + (f" ({sidecar})" if sidecar else "")
        image_of = f"{service}'s sidecar {sidecar}" if sidecar else service
        cli_words = f"meshlocal exec {service}" + (f" -n {index}" if index != 1 else "")
        try:
            code = exec_in(
                dep.engine, info, command, _terminal(no_tty), what=image_of, cli=cli_words
            )
        except KeyboardInterrupt:
            raise Interrupted(
                f"[+] Interrupted (Ctrl-C): detached from the command in {what}, "
                "which may still run there (as `docker exec` leaves it)"
            ) from None
    raise SystemExit(code)


@cli.command(name="run", context_settings=_ARGS)
@env_option
@click.option(
    "-e",
    "variables",
    multiple=True,
    metavar="KEY=VALUE",
    help="Set a variable in the one-off (over the service's). Repeatable.",
)
@click.option("-T", "--no-tty", is_flag=True, help="No pseudo-terminal, even on a terminal.")
@click.argument("service")
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- COMMAND...]")
@pass_context
def run(
    ctx: Context,
    env: str | None,
    variables: tuple[str, ...],
    no_tty: bool,
    service: str,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND in a one-off task of SERVICE, removed after, like `compose run --rm`.

    The one-off runs the replicas' image with their variables, on the mesh
    network, as a Service Connect client of SERVICE; it is never a replica
    (no traffic, no Service Discovery record). Without COMMAND, the
    service's own command. The exit status is the command's.
    """
    from meshlocal.runtime.oneoff import OneOff, run_one_off

    extra: dict[str, str] = {}
    for item in variables:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise RuntimeFailure(
                f"cannot read -e {item!r}", hint="write KEY=VALUE, e.g. `-e DEBUG=1`"
            )
        extra[key] = value
    with running_mesh(ctx.directory, env, [service]) as dep:
        job = OneOff(
            project=dep.project,
            env=dep.env,
            service=service,
            holder_image=_holder_image(dep.engine),
            workspace=str(dep.workspace.root),
        )

        def registered(holder_id: str) -> bool:
            runs = dep.state().get("runs") or []
            return any(r.get("container_id") == holder_id for r in runs)

        try:
            code = run_one_off(
                dep.engine, job, command, extra, _terminal(no_tty), registered=registered
            )
        except KeyboardInterrupt:
            raise Interrupted("[+] Interrupted (Ctrl-C): the one-off was removed") from None
    raise SystemExit(code)


def _holder_image(engine: Engine) -> str:
    """The busybox image `up` made (pause containers use it), or one made now."""
    from meshlocal.runtime import images
    from meshlocal.runtime import labels as L

    try:
        return images.ensure_busybox_image(engine.client)
    except ImageError:  # no busybox on this host: one `up` built before will do
        rows = engine.api.images(filters={"label": f"{L.IMAGE_KIND}=busybox"})
        for row in rows:
            for tag in row.get("RepoTags") or []:
                return str(tag)
        raise
