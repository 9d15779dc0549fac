"""The mesh's own processes, started by `up`: the controller and the data plane.

Hidden: `agent` runs the controller (the Docker socket, no listener); its
container runs `python -m meshlocal.agent`, the same code without the CLI. The
data plane, the part replicas talk to, is `python -m meshlocal.serving`: no
CLI, no Docker SDK (docs/concepts.md, "Trust boundary").
"""

from __future__ import annotations

from pathlib import Path

import click

from meshlocal.cli.app import cli


@cli.command(hidden=True)
@click.option("--config-file", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option(
    "--admin-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Host mode: write the admin and public URLs here once serving.",
)
@click.option(
    "--control-socket",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Where the CLI reaches the controller (default: inside its container).",
)
def agent(config_file: Path | None, admin_file: Path | None, control_socket: Path | None) -> None:
    """Run the controller of one environment (used by `up`)."""
    from meshlocal.agent import run

    run(config_file, admin_file, control_socket)
