"""The controller's process: `python -m meshlocal.agent` (container mode) or `meshlocal agent`.

Its own entry point, not the CLI's: the controller container starts while
`up -d` waits, and loading every CLI command (click, rich, the manifest
loader) cost it a noticeable part of that wait.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

# Set by `up` on the controller of a mesh whose first replicas it started (firststart.py).
FIRST_START_ENV = "MESHLOCAL_FIRST_START"


def _run(main: Coroutine[Any, Any, None]) -> None:
    import asyncio  # here: `up` reads FIRST_START_ENV from this module

    try:
        import uvloop

        uvloop.run(main)
    except ImportError:
        asyncio.run(main)
    except KeyboardInterrupt:
        pass


def run(
    config_file: Path | None = None,
    admin_file: Path | None = None,
    control_socket: Path | None = None,
) -> None:
    """Run the controller of one environment until SIGTERM."""
    from meshlocal.agentconfig import AgentConfig, config_from_environment
    from meshlocal.control import CONTAINER_SOCKET
    from meshlocal.mesh import Controller, serve

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout
    )
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
            first_start=os.environ.get(FIRST_START_ENV) == "1",
        )
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m meshlocal.agent")
    parser.add_argument("--config-file", type=Path, default=None)
    parser.add_argument("--admin-file", type=Path, default=None)
    parser.add_argument("--control-socket", type=Path, default=None)
    args = parser.parse_args(argv)
    run(args.config_file, args.admin_file, args.control_socket)


if __name__ == "__main__":
    main()
