"""The mesh's own processes, started by `up`: the controller and the data plane.

Hidden: `agent` runs the controller (the Docker socket, no listener). The
data plane, the part replicas talk to, is `python -m meshlocal.serving`: no
CLI, no Docker SDK (docs/concepts.md, "Trust boundary").
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import click

from meshlocal.cli.app import cli


def _run(main: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:
        asyncio.run(main)
    except KeyboardInterrupt:
        pass


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
    )


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
    from meshlocal.agentconfig import AgentConfig, config_from_environment
    from meshlocal.control import CONTAINER_SOCKET
    from meshlocal.mesh import Controller, serve

    _logging()
    config = (
        AgentConfig.from_json(config_file.read_text())
        if config_file is not None
        else config_from_environment()
    )

    def started(running: Controller) -> None:
        if admin_file is not None:
            public = running.public_port
            admin_file.write_text(
                json.dumps(
                    {
                        "admin_url": f"http://127.0.0.1:{running.admin_port}",
                        "public_url": f"http://127.0.0.1:{public}" if public else None,
                        "pid": os.getpid(),
                        "control": str(control_socket) if control_socket else None,
                    }
                )
            )

    _run(
        serve(
            config,
            control_path=str(control_socket) if control_socket else CONTAINER_SOCKET,
            on_started=started,
        )
    )
