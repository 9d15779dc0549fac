"""Docker SDK errors mapped to meshlocal's own: `engine_errors` and `map_docker_error`.

Every engine error leaves the adapter as a MeshlocalError subclass:
DockerUnavailable when no engine answers, PortInUse when a published port is
taken, ImageError for a missing image, RuntimeFailure for anything else the
engine refuses. Apart from engine.py because image pulls and tear-down map
errors too, without the Engine class.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator

import docker.errors
import requests.exceptions

from meshlocal.errors import (
    DockerUnavailable,
    ImageError,
    MeshlocalError,
    PortInUse,
    RuntimeFailure,
)

# "Bind for 0.0.0.0:8080 failed: port is already allocated" (another container)
# "listen tcp4 0.0.0.0:8080: bind: address already in use" (a host process)
_PORT_TAKEN = re.compile(
    r"(?:Bind for (?P<a>[\d.:\[\]a-f]*?):(?P<p1>\d+) failed: port is already allocated)"
    r"|(?:listen (?:tcp|udp)[46]? (?P<b>[\d.:\[\]a-f]*?):(?P<p2>\d+): bind: address already in use)"
)


def parse_port_in_use(message: str) -> tuple[str, int] | None:
    """(host address, port) from an engine's port-taken message, else None."""
    match = _PORT_TAKEN.search(message)
    if match is None:
        return None
    addr = match.group("a") if match.group("p1") else match.group("b")
    port = match.group("p1") or match.group("p2")
    return (addr or "0.0.0.0", int(port))


def _docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def map_docker_error(exc: BaseException, what: str | None = None) -> MeshlocalError:
    """The MeshlocalError a docker SDK exception means for a user."""
    if isinstance(exc, MeshlocalError):
        return exc
    prefix = f"{what}: " if what else ""
    if isinstance(exc, docker.errors.ImageNotFound):
        return ImageError(f"{prefix}{exc.explanation or exc}")
    if isinstance(exc, docker.errors.APIError):
        text = str(exc.explanation or exc)
        taken = parse_port_in_use(text)
        if taken is not None:
            addr, port = taken
            return PortInUse(
                f"{prefix}port {port} on {addr} is already in use",
                hint=f"stop what listens there (`ss -ltnp 'sport = :{port}'`, `docker ps`) "
                "or publish on another port",
            )
        if "could not find an available, non-overlapping" in text:
            return RuntimeFailure(
                f"{prefix}Docker has no free address pool for a new network",
                hint="remove unused networks: `docker network prune`",
            )
        return RuntimeFailure(f"{prefix}the Docker engine refused: {text}")
    if "Install paramiko package" in str(exc):
        return DockerUnavailable(
            f"the Docker engine at {_docker_host()} is reached over ssh, which needs paramiko",
            hint="pip install 'meshlocal[ssh]' (or `pip install paramiko`) in meshlocal's "
            "environment; or use a tcp:// engine",
        )
    unreachable = isinstance(exc, requests.exceptions.ConnectionError | ConnectionError) or (
        isinstance(exc, docker.errors.DockerException)
        and ("Error while fetching server API version" in str(exc) or "Connection" in str(exc))
    )
    if unreachable:
        host = _docker_host()
        if not host.startswith("unix://"):
            return DockerUnavailable(
                f"no Docker engine answers at {host}",
                hint=f"check that `docker -H {host} info` works from here (ssh keys, "
                "the engine's TCP port, TLS files), or choose another context (`--context`)",
            )
        return DockerUnavailable(
            f"no Docker engine answers at {host}",
            hint="start Docker (`sudo systemctl start docker`, or Docker Desktop); rootless: "
            "export DOCKER_HOST=unix://$XDG_RUNTIME_DIR/docker.sock",
        )
    return RuntimeFailure(f"{prefix}Docker error: {exc}")


@contextlib.contextmanager
def engine_errors(what: str | None = None) -> Iterator[None]:
    try:
        yield
    except MeshlocalError:
        raise
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as exc:
        raise map_docker_error(exc, what) from exc
