"""The engine adapter's value types: plain data in and out of engine.py.

ContainerSpec (what to run), ContainerInfo and NetworkInfo (what runs),
ContainerEvent (what happened) and Removed (what a clean-up took away). Apart
from engine.py so the planner, the reconciler and the CLI's rendering can
hold them without the Docker calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from meshlocal.manifest.model import ContainerHealthCheck
from meshlocal.registry import Health
from meshlocal.runtime import labels as L


@dataclass(frozen=True)
class NetworkInfo:
    name: str
    id: str
    subnet: str | None
    gateway: str | None
    ip_range: str | None = None  # where Docker allocates containers; VIPs live outside it
    driver: str = "bridge"  # "overlay": swarm mode (swarm.py)


@dataclass(frozen=True)
class ContainerSpec:
    """Everything `run_container` needs; plain data so the planner stays pure."""

    name: str
    image: str
    labels: Mapping[str, str]
    environment: Mapping[str, str] = field(default_factory=dict)
    command: Sequence[str] | None = None
    entrypoint: Sequence[str] | None = None
    network: str | None = None  # a user-defined network to join
    network_mode: str | None = None  # "container:<id>" for sidecars; excludes `network`
    aliases: Sequence[str] = ()  # network aliases; never a mesh name (see labels.py)
    hostname: str | None = None
    dns: Sequence[str] = ()
    dns_search: Sequence[str] = ()
    dns_opt: Sequence[str] = ()
    healthcheck: ContainerHealthCheck | None = None
    # container port -> host port, or (host address, host port)
    ports: Mapping[int, int | tuple[str, int]] = field(default_factory=dict)
    binds: Sequence[str] = ()  # "host:container[:mode]"
    user: str | None = None
    working_dir: str | None = None
    stop_signal: str | None = None
    init: bool = False
    cap_add: Sequence[str] = ()
    cap_drop: Sequence[str] = ()
    security_opt: Sequence[str] = ()  # e.g. "no-new-privileges"
    read_only: bool = False  # a read-only root filesystem
    tmpfs: Mapping[str, str] = field(default_factory=dict)  # path -> mount options
    sysctls: Mapping[str, str] = field(default_factory=dict)
    # Docker's restart policy ("unless-stopped", ...); None: never restarted by Docker.
    restart_policy: str | None = None
    ipv4_address: str | None = None  # a fixed address on `network` (in its subnet)
    mac_address: str | None = None  # swarm.py's address holders borrow the data plane's


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    image: str
    labels: Mapping[str, str]
    state: str  # created | running | restarting | exited | dead | paused | removing
    health: Health | None  # None: the container has no health check
    addresses: Mapping[str, str]  # network name -> IPv4
    exit_code: int | None = None
    # From inspect only (a listing leaves them empty): the task metadata endpoint's.
    image_id: str = ""  # sha256:...
    created: str = ""  # RFC 3339, nanoseconds, as ECS reports them too
    started_at: str = ""
    finished_at: str = ""
    macs: Mapping[str, str] = field(default_factory=dict)  # network name -> MAC

    @property
    def service(self) -> str | None:
        return self.labels.get(L.SERVICE)

    @property
    def index(self) -> int | None:
        raw = self.labels.get(L.REPLICA)
        if raw is None and "com.docker.swarm.task.name" in self.labels:
            # Swarm mode: a task's container is `<service>.<slot>.<task id>`.
            parts = self.labels["com.docker.swarm.task.name"].rsplit(".", 2)
            raw = parts[-2] if len(parts) == 3 else None
        return int(raw) if raw and raw.isdigit() else None

    @property
    def role(self) -> str | None:
        return self.labels.get(L.ROLE)

    @property
    def config_hash(self) -> str | None:
        return self.labels.get(L.CONFIG_HASH)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def address_on(self, network: str) -> str | None:
        return self.addresses.get(network) or None


@dataclass(frozen=True)
class ContainerEvent:
    """One Docker container event, reduced to what the reconciler needs."""

    action: str  # create, start, die, destroy, health_status, rename, kill, stop, oom ...
    container_id: str
    name: str
    labels: Mapping[str, str]
    health: Health | None = None  # health_status events
    exit_code: int | None = None  # die events
    time_ns: int = 0

    @property
    def service(self) -> str | None:
        return self.labels.get(L.SERVICE)

    @property
    def role(self) -> str | None:
        return self.labels.get(L.ROLE)


@dataclass(frozen=True)
class Removed:
    containers: tuple[str, ...]
    networks: tuple[str, ...]
    images: tuple[str, ...] = ()
