"""The host port of an environment's public endpoint: which it is, and what remembers it.

Apart from Deployment because the port outlives any one data plane: the
URLs a person has open survive a data-plane restart or replacement, and a
`--port-override` lasts only while it is given. So the port is chosen from
the running data plane, else from files in the state directory: `.ports`
(every host port the data-plane container published) and `.port-override`
(the public port from before an override, to go back to).
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from meshlocal.dataplanes import PlaneFinder
from meshlocal.errors import PortInUse
from meshlocal.manifest.model import EnvironmentSpec
from meshlocal.naming import NamingModel, public_rules
from meshlocal.ports import PUBLIC_PORT, Mode
from meshlocal.runtime.dataplane import free_port, port_free, published_ports
from meshlocal.runtime.engine import ContainerInfo, Engine
from meshlocal.statedir import state_file


class Environment(Protocol):
    """What choosing the port reads of a Deployment, each only when needed (they load lazily)."""

    @property
    def spec(self) -> EnvironmentSpec: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def project(self) -> str: ...

    @property
    def env(self) -> str: ...


def kept_ports(engine: Engine, current: ContainerInfo | None, ports_file: Path) -> dict[int, int]:
    """Inner port -> host port the data plane has, else had (`.ports`) while still free."""
    kept = published_ports(engine, current.id) if current is not None else {}
    if not kept:  # a data plane that was removed: the ports it had, when still free
        with contextlib.suppress(OSError, ValueError):
            remembered = json.loads(ports_file.read_text())
            kept = {int(k): int(v) for k, v in remembered.items() if port_free(int(v))}
    return kept


def remember_ports(ports_file: Path, ports: Mapping[int, tuple[str, int]]) -> None:
    """Keep the host ports a data-plane container publishes, for kept_ports."""
    ports_file.parent.mkdir(parents=True, exist_ok=True)
    ports_file.write_text(json.dumps({str(k): v[1] for k, v in ports.items()}))


def resolve(dep: Environment, mode: Mode, public_port: int) -> int:
    """The public endpoint's host port: `--port`, else the one it has, else a free one.

    Concrete, never 0: the URLs a person has open survive a data-plane
    restart, and replicas are told it in COPILOT_LB_DNS.
    """
    if public_port or not public_rules(NamingModel(dep.spec)):
        return public_port
    if mode == "container":
        current = PlaneFinder(dep.engine, dep.project, dep.env).dataplane_container()
        kept = kept_ports(dep.engine, current, state_file(dep.project, dep.env, ".ports"))
        return kept.get(PUBLIC_PORT) or free_port("127.0.0.1")
    with contextlib.suppress(OSError, ValueError, KeyError, AttributeError):
        admin = json.loads(state_file(dep.project, dep.env, ".admin").read_text())
        return int(str(admin["public_url"]).rsplit(":", 1)[1].rstrip("/"))
    return free_port("127.0.0.1")


def check(dep: Environment, public_port: int) -> None:
    """Fail before anything is built or replaced when `--port` is taken by someone else.

    The running data plane's own port is no conflict: `up` keeps or hands it over.
    """
    if public_port == 0 or not public_rules(NamingModel(dep.spec)) or dep.engine.remote:
        return  # a remote engine's port is its host's: the engine itself says when it's taken
    current = PlaneFinder(dep.engine, dep.project, dep.env).dataplane_container()
    if (
        current is not None
        and current.running
        and published_ports(dep.engine, current.id).get(PUBLIC_PORT) == public_port
    ):
        return
    with contextlib.suppress(OSError, ValueError, KeyError):
        admin = json.loads(state_file(dep.project, dep.env, ".admin").read_text())
        if str(admin.get("public_url") or "").endswith(f":{public_port}"):
            return  # the host-mode agent's own, handed over on restart
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", public_port))
        except OSError:
            raise PortInUse(
                f"port {public_port} on 127.0.0.1 is already in use",
                hint=f"stop what listens there (`ss -ltnp 'sport = :{public_port}'`, "
                "`docker ps`) or publish on another port (`--port`)",
            ) from None


def with_override(dep: Environment, public_port: int, override: int) -> int:
    """The public endpoint's host port: `--port`, else the port override's (`override`).

    An override lasts while it is given: the port the public endpoint had
    before it is remembered, and a later `up` without it goes back there.
    """
    chosen = public_port or override
    before = state_file(dep.project, dep.env, ".port-override")
    if public_port or not public_rules(NamingModel(dep.spec)):
        before.unlink(missing_ok=True)  # `--port` decides, as it always did
    elif override:
        if not before.exists():
            before.parent.mkdir(parents=True, exist_ok=True)
            before.write_text(str(now(dep) or 0))
    elif before.exists():
        with contextlib.suppress(OSError, ValueError):
            port = int(before.read_text())
            chosen = port if port and port_free(port) else free_port("127.0.0.1")
        before.unlink(missing_ok=True)
    return chosen


def now(dep: Environment) -> int | None:
    """The running data plane's public host port, if any."""
    current = PlaneFinder(dep.engine, dep.project, dep.env).dataplane_container()
    if current is None or not current.running:
        return None
    return published_ports(dep.engine, current.id).get(PUBLIC_PORT)
