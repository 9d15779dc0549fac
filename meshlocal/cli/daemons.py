"""The mesh's own processes, started by `up`: the controller and the data plane.

Hidden commands: `agent` runs the controller (the Docker socket, no
listener), `dataplane` the part replicas talk to (no engine access,
unprivileged). See docs/concepts.md, "Trust boundary".
"""

from __future__ import annotations

import asyncio
import contextlib
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
    from meshlocal.control import CONTAINER_SOCKET
    from meshlocal.mesh import AgentConfig, Controller, config_from_environment, serve

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


@cli.command(hidden=True)
@click.option("--listen", "listen_json", default="{}", help="Where to listen, as JSON.")
@click.option("--socket", "socket_path", default=None, help="Container mode: the link socket.")
@click.option("--link-fd", type=int, default=None, help="Host mode: the link to its controller.")
@click.option("--drop-privileges", is_flag=True, help="Host mode: become nobody first.")
def dataplane(
    listen_json: str, socket_path: str | None, link_fd: int | None, drop_privileges: bool
) -> None:
    """Run the data plane: DNS, proxies, health probes, admin API (used by `up`)."""
    from meshlocal.link import LINK_SOCKET
    from meshlocal.serving import Listen, serve

    _logging()
    listen = Listen(**json.loads(listen_json))
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: F401  (imported now: after the drop, nothing more is read)
    if drop_privileges:
        # Everything it will run is imported by now: nothing later reads files
        # as root, and nothing it reads later needs root.
        import encodings.idna  # noqa: F401  (imported lazily by name handling)

        from meshlocal.privileges import drop_to_nobody

        drop_to_nobody()
    if socket_path is None and link_fd is None:
        socket_path = LINK_SOCKET
    _run(serve(listen, socket_path=socket_path, link_fd=link_fd))
