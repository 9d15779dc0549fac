"""The root click group, shared options and the error boundary."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from importlib import import_module
from pathlib import Path

import click
from rich.console import Console

from meshlocal import __version__
from meshlocal.errors import MeshlocalError

err_console = Console(stderr=True, highlight=False)

# Where each command lives: a command's module is imported only when that
# command runs (or `--help` lists them), so `meshlocal up` loads neither the
# other commands nor their libraries, and a broken optional family cannot stop
# `meshlocal validate` from working.
COMMANDS: Mapping[str, str] = {
    "validate": "meshlocal.cli.workspace",
    "plan": "meshlocal.cli.workspace",
    "up": "meshlocal.cli.up",
    "down": "meshlocal.cli.mesh",
    "ls": "meshlocal.cli.mesh",
    "ps": "meshlocal.cli.mesh",
    "scale": "meshlocal.cli.mesh",
    "stats": "meshlocal.cli.mesh",
    "logs": "meshlocal.cli.mesh",
    "resolve": "meshlocal.cli.mesh",
    "exec": "meshlocal.cli.tasks",
    "run": "meshlocal.cli.tasks",
    "watch": "meshlocal.cli.watch",
    "publish": "meshlocal.cli.pubsub",
    "queue": "meshlocal.cli.pubsub",
    "agent": "meshlocal.cli.daemons",
    "fault": "meshlocal.cli.fault",
    "open": "meshlocal.cli.page",
    "forward": "meshlocal.cli.forward",
}


class Context:
    """What every command needs: where the workspace search starts."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory


pass_context = click.make_pass_decorator(Context)


class Interrupted(Exception):
    """A command stopped by Ctrl-C (130) or SIGTERM (143), after saying what it did about it."""

    def __init__(self, message: str, exit_code: int = 130) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


class LazyGroup(click.Group):
    """A group whose commands are imported from COMMANDS on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            _import(COMMANDS[cmd_name])
        return self.commands.get(cmd_name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="Run as if meshlocal was started in DIR (the workspace is found from there upward).",
)
@click.option(
    "--context",
    "docker_context",
    metavar="NAME",
    default=None,
    help="Docker context to use (`docker context ls`), as `docker --context`; "
    "else DOCKER_HOST, DOCKER_CONTEXT or the current context.",
)
@click.version_option(__version__, prog_name="meshlocal")
@click.pass_context
def cli(ctx: click.Context, directory: Path, docker_context: str | None) -> None:
    """Run an AWS Copilot workspace locally, with ECS Service Connect and Service Discovery."""
    from meshlocal.runtime.enginehost import apply_context

    apply_context(docker_context)
    ctx.obj = Context(directory.resolve())


def report(error: MeshlocalError) -> None:
    # soft_wrap: never break `file:line:col` across lines, editors must match it whole.
    err_console.print(error.render(), markup=False, style="red", soft_wrap=True)


env_option = click.option(
    "--env",
    "env",
    metavar="ENV",
    default=None,
    help="Environment to use; may be left out when the workspace has exactly one.",
)


def _import(name: str) -> None:
    try:
        import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:  # a real import error inside the module
            raise


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the CLI and map MeshlocalError to a message and exit code."""
    try:
        cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
    except MeshlocalError as error:
        report(error)
        return error.exit_code
    except Interrupted as stopped:
        err_console.print(stopped.message, markup=False, soft_wrap=True)
        return stopped.exit_code
    except click.exceptions.Abort:
        err_console.print("Interrupted (Ctrl-C): stopped before finishing.", markup=False)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


def run() -> None:
    sys.exit(main())
