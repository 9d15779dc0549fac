"""Container mode: the data-plane and controller containers.

It works rootless and under Docker Desktop, because it needs no host
privileges. The data plane sits on the environment network; replicas get
its address as their DNS server. Keeping it running across `up` runs keeps
that address, and so the replicas' config hash: an unchanged data plane
rolls nothing. The controller, beside it, holds the engine's socket and no
network (docs/concepts.md, "Trust boundary").
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from meshlocal.errors import DataPlaneError, MeshlocalError
from meshlocal.link import LINK_DIR, LINK_SOCKET
from meshlocal.prebind import ENV as ENV_EARLY_DNS
from meshlocal.runtime import enginehost
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import ContainerSpec, Engine, NetworkInfo, split_lines

if TYPE_CHECKING:
    from meshlocal.agentconfig import AgentConfig

CONTAINER_SOCKET = "/var/run/docker.sock"


def host_socket(engine: Engine) -> str:
    """The path to bind-mount as the engine socket inside the data plane.

    Docker Desktop exposes its VM's /var/run/docker.sock to containers, whatever
    DOCKER_HOST says on the host. A remote engine's (tcp://, ssh://) is its
    daemon's socket on its own host, $MESHLOCAL_ENGINE_SOCKET or the default.
    Elsewhere, rootless included, it is the unix socket the client itself uses.
    """
    info = engine.client.info()
    if "Docker Desktop" in str(info.get("OperatingSystem", "")):
        return CONTAINER_SOCKET
    if engine.remote:
        # The daemon's own socket on its host: DOCKER_HOST's tcp:// or ssh:// is
        # this machine's way in, not the controller's (docs/scale-out.md).
        return enginehost.engine_socket()
    return urlparse(engine.host.url).path


# Neither process makes a TLS connection (the engine is a unix socket), yet
# aiohttp and the Docker SDK build default SSL contexts at import, loading the
# whole CA store: aiohttp.connector's import took 95 ms with it, 10 ms without.
NO_CA_STORE = {"SSL_CERT_FILE": "/dev/null"}

# The data plane's container: unprivileged, read-only, no engine access.
DATAPLANE_USER = "65534:65534"
DATAPLANE_SYSCTLS = {
    # Binds port 53 and endpoint ports as a plain user (Docker sets this on its
    # own since 20.10; said here for older engines).
    "net.ipv4.ip_unprivileged_port_start": "0",
    # Listens on an endpoint address before the controller's helper puts it on
    # the interface (and again at once after a restart).
    "net.ipv4.ip_nonlocal_bind": "1",
}


def dataplane_spec(
    *,
    project: str,
    env: str,
    image: str,
    network: NetworkInfo,
    publish: Mapping[int, int | tuple[str, int]] | None = None,
    workspace: Path | None = None,
    address: str | None = None,
) -> ContainerSpec:
    """The data plane's container: what replicas talk to, with nothing to give away.

    Non-root, every capability dropped, `no-new-privileges`, a read-only
    root filesystem, no Docker socket. It owns the network namespace (its
    address is every replica's DNS server) and publishes the admin and
    public ports; the controller reaches it through the link volume only.

    `publish` maps container ports to localhost ports (the public endpoints of
    Load Balanced Web Services). `address` asks for the address the replicas
    already use as their DNS server (a data plane that was removed comes back
    where they look for it).

    Restart policy `unless-stopped`: Docker restarts it whenever its process
    ends (a crash, an OOM kill, an exit 0 from a bug) and when the engine
    itself restarts; it then serves again as soon as the controller
    reconnects. Docker never restarts a container it was told to stop or
    kill, nor one removed (`meshlocal down`).
    """
    name = L.dataplane_name(project, env)
    return ContainerSpec(
        name=name,
        image=image,
        labels=L.base_labels(project, env, L.Role.DATAPLANE, workspace),
        environment={
            "MESHLOCAL_PROJECT": project,
            "MESHLOCAL_ENV": env,
            **NO_CA_STORE,
            # A planned address: its DNS port is bound before the imports (prebind.py).
            **({ENV_EARLY_DNS: address} if address else {}),
        },
        entrypoint=("python3", "-m", "meshlocal.prebind"),
        command=("--socket", LINK_SOCKET),
        network=network.name,
        hostname=L.hostname_for(name),
        ports=dict(publish or {}),
        binds=(f"{L.link_volume_name(project, env)}:{LINK_DIR}",),
        user=DATAPLANE_USER,
        cap_drop=("ALL",),
        security_opt=("no-new-privileges",),
        read_only=True,
        tmpfs={"/tmp": "rw,nosuid,nodev,noexec,size=16m"},
        sysctls=DATAPLANE_SYSCTLS,
        restart_policy="unless-stopped",
        ipv4_address=address,
    )


def controller_spec(
    engine: Engine,
    *,
    project: str,
    env: str,
    image: str,
    environment: Mapping[str, str],
    workspace: Path | None = None,
) -> ContainerSpec:
    """The controller's container: the Docker socket, and no network at all.

    `network_mode: none` leaves it only a loopback interface: nothing on the
    environment's network (or anywhere) can connect to it. It reaches the
    data plane through the link volume and the engine through its socket.
    """
    return ContainerSpec(
        name=L.controller_name(project, env),
        image=image,
        labels=L.base_labels(project, env, L.Role.CONTROLLER, workspace),
        environment={
            "MESHLOCAL_PROJECT": project,
            "MESHLOCAL_ENV": env,
            **NO_CA_STORE,
            **environment,
        },
        entrypoint=("python3", "-m", "meshlocal.agent"),  # not the CLI: it starts faster
        network_mode="none",
        binds=(
            f"{host_socket(engine)}:{CONTAINER_SOCKET}",
            f"{L.link_volume_name(project, env)}:{LINK_DIR}",
        ),
        restart_policy="unless-stopped",
    )


def with_identity(spec: ContainerSpec, *parts: object) -> ContainerSpec:
    """`spec` labelled with a hash of what makes it the same container."""
    blob = json.dumps([asdict(spec), *parts], sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return replace(spec, labels={**spec.labels, L.CONFIG_HASH: digest})


def ensure_controller(engine: Engine, spec: ContainerSpec) -> tuple[str, bool]:
    """(container id, started now?): a running controller of the same identity is kept."""
    for old in engine.list_containers(
        spec.labels[L.PROJECT], spec.labels[L.ENV], role=L.Role.CONTROLLER
    ):
        if old.config_hash == spec.labels.get(L.CONFIG_HASH) and old.running:
            return old.id, False
        engine.remove(old.id)
    return engine.run_container(spec), True


def ensure_dataplane(
    engine: Engine, spec: ContainerSpec, created: Callable[[str], object] | None = None
) -> tuple[str, str, bool]:
    """(container id, address on the network, started now?) of the data plane.

    A running data plane with the same config hash is kept, so its address stays.
    Any other one is replaced. `created` is called with the id of a new one
    while it starts, in another thread (its controller starts alongside), and
    with the id of a kept one.
    """
    assert spec.network is not None
    for old in engine.list_containers(
        spec.labels[L.PROJECT], spec.labels[L.ENV], role=L.Role.DATAPLANE
    ):
        same = old.config_hash == spec.labels.get(L.CONFIG_HASH)
        if same and old.running and old.address_on(spec.network):
            if created is not None:
                created(old.id)
            return old.id, old.address_on(spec.network) or "", False
        engine.remove(old.id)
    try:
        cid = _start_alongside(engine, spec, created)
    except MeshlocalError:
        if spec.ipv4_address is None:
            raise
        # That address was taken meanwhile: any address (the replicas then roll).
        cid = _start_alongside(engine, replace(spec, ipv4_address=None), created)
    info = engine.inspect(cid)
    address = info.address_on(spec.network) if info is not None else None
    if not address:
        logs = "\n".join(engine.logs(cid, 20))
        raise DataPlaneError(
            "the data plane container did not get an address",
            hint=f"its last output:\n{logs}" if logs else None,
        )
    return cid, address, True


def _start_alongside(
    engine: Engine, spec: ContainerSpec, created: Callable[[str], object] | None
) -> str:
    """Create and start; `created(id)` runs meanwhile in a thread, its error re-raised."""
    cid = engine.create_container(spec)
    if created is None:
        try:
            engine.start(cid)
        except MeshlocalError:
            engine.remove(cid)
            raise
        return cid
    with ThreadPoolExecutor(max_workers=1) as pool:
        beside = pool.submit(created, cid)
        try:
            engine.start(cid)
        except MeshlocalError:
            engine.remove(cid)
            raise
        finally:
            error = beside.exception()
    if error is not None:
        raise error
    return cid


def wait_for_log(engine: Engine, container_id: str, marker: str, timeout: float = 30.0) -> None:
    """Block until a container prints `marker`; DataPlaneError (with its logs) otherwise."""
    raw = engine.open_logs(container_id, tail="all")
    timer = threading.Timer(timeout, raw.close)  # a silent container must not block forever
    timer.start()
    seen: list[str] = []
    try:
        for line in split_lines(raw):
            seen.append(line)
            if marker in line:
                return
    finally:
        timer.cancel()
        raw.close()
    tail = "\n".join(seen[-20:]) or "(no output)"
    info = engine.inspect(container_id)
    state = f" (it is {info.state})" if info is not None else " (it is gone)"
    raise DataPlaneError(
        f"the data plane did not report ready{state}", hint=f"its last output:\n{tail}"
    )


def in_subnet(address: str, network: NetworkInfo) -> bool:
    """An address a container may take on the network: in its subnet, not its gateway."""
    try:
        ip = ipaddress.ip_address(address)
        return ip in ipaddress.ip_network(network.subnet or "", strict=False) and (
            address != network.gateway
        )
    except ValueError:
        return False


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether `port` can be bound on `host` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def published_ports(engine: Engine, container_id: str) -> dict[int, int]:
    """Container TCP port -> host port, for the ports a container publishes."""
    data = engine.api.inspect_container(container_id)
    out: dict[int, int] = {}
    for key, bindings in ((data.get("NetworkSettings") or {}).get("Ports") or {}).items():
        port, _, proto = str(key).partition("/")
        if proto == "tcp" and bindings:
            out[int(port)] = int(bindings[0]["HostPort"])
    return out


def vip_helper_spec(
    config: AgentConfig, dataplane_id: str, anchor: str, add: list[str], remove: list[str]
) -> ContainerSpec:
    """A one-shot root container in the data plane's namespace, with NET_ADMIN only.

    The data plane itself has no capability: it listens on these addresses
    (ip_nonlocal_bind) and this puts them on its interface, the one that
    holds its own address; the kernel then answers ARP for them.
    """
    dev = f"$(ip -o -4 addr show | grep ' inet {anchor}/' | cut -d' ' -f2)"
    script = [f'dev="{dev}"', '[ -n "$dev" ] || dev=eth0']
    script += [f'ip addr del {a}/32 dev "$dev" 2>/dev/null || true' for a in remove]
    # Present already (kept from before a controller restart) is no failure.
    present = 'ip -4 addr show dev "$dev" | grep -q " {}/32 "'
    script += [f'ip addr add {a}/32 dev "$dev" 2>/dev/null || {present.format(a)}' for a in add]
    assert config.helper_image is not None
    return ContainerSpec(
        name=f"{L.dataplane_name(config.project, config.env)}-vips-{uuid.uuid4().hex[:8]}",
        image=config.helper_image,
        labels=L.base_labels(config.project, config.env, L.Role.PROBE),
        command=("sh", "-ec", "\n".join(script)),
        network_mode=f"container:{dataplane_id}",
        user="0",
        cap_drop=("ALL",),
        cap_add=("NET_ADMIN",),
        security_opt=("no-new-privileges",),
        read_only=True,
    )
