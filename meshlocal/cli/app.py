"""The root click group, shared options and the error boundary."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib import import_module
from pathlib import Path

import click
from rich.console import Console

from meshlocal import __version__
from meshlocal.errors import MeshlocalError

err_console = Console(stderr=True, highlight=False)

# Modules that add commands to `cli`; imported lazily by main() so a broken
# optional family cannot stop `meshlocal validate` from working.
COMMAND_MODULES: Sequence[str] = (
    "meshlocal.cli.workspace",
    "meshlocal.cli.mesh",
    "meshlocal.cli.daemons",
)


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-C",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    help="Run as if meshlocal was started in DIR (the workspace is found from there upward).",
)
@click.version_option(__version__, prog_name="meshlocal")
@click.pass_context
def cli(ctx: click.Context, directory: Path) -> None:
    """Run an AWS Copilot workspace locally, with ECS Service Connect and Service Discovery."""
    ctx.obj = Context(directory.resolve())


def report(error: MeshlocalError) -> None:
    # soft_wrap: never break `file:line:col` across lines, editors must match it whole.
    err_console.print(error.render(), markup=False, style="red", soft_wrap=True)


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        try:
            import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # a real import error inside the module
                raise


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the CLI and map MeshlocalError to a message and exit code."""
    _load_commands()
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
