"""The data-plane container: meshlocal's agent (DNS, proxy, reconciler) on the env network.

It works rootless and under Docker Desktop, because it needs no host
privileges. It sits on the environment network, and it reaches the engine
through the Docker socket mounted into it. Replicas get its address as their
DNS server. Keeping it running across `up` runs keeps that address, and so
the replicas' config hash: an unchanged data plane rolls nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from urllib.parse import urlparse

from meshlocal.errors import DataPlaneError, MeshlocalError
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import ContainerSpec, Engine, NetworkInfo, split_lines

CONTAINER_SOCKET = "/var/run/docker.sock"


def host_socket(engine: Engine) -> str:
    """The path to bind-mount as the engine socket inside the data plane.

    Docker Desktop exposes its VM's /var/run/docker.sock to containers, whatever
    DOCKER_HOST says on the host. Elsewhere, rootless included, it is the unix
    socket the client itself uses.
    """
    info = engine.client.info()
    if "Docker Desktop" in str(info.get("OperatingSystem", "")):
        return CONTAINER_SOCKET
    url = urlparse(os.environ.get("DOCKER_HOST") or f"unix://{CONTAINER_SOCKET}")
    if url.scheme != "unix":
        raise DataPlaneError(
            f"the data plane container needs a unix Docker socket; DOCKER_HOST is {url.geturl()}",
            hint="use host mode (`--data-plane host`, Linux as root), or a local engine",
        )
    return url.path


def dataplane_spec(
    engine: Engine,
    *,
    project: str,
    env: str,
    image: str,
    network: NetworkInfo,
    args: Sequence[str] = ("agent",),
    environment: Mapping[str, str] | None = None,
    publish: Mapping[int, int | tuple[str, int]] | None = None,
    binds: Sequence[str] = (),
    workspace: Path | None = None,
    address: str | None = None,
) -> ContainerSpec:
    """The data plane's container: `python3 -m meshlocal <args>`, socket mounted.

    `publish` maps container ports to localhost ports (the public endpoints of
    Load Balanced Web Services). The config-hash label makes `ensure_dataplane`
    keep an identical running data plane. `address` asks for the address the
    replicas already use as their DNS server (a data plane that was removed
    comes back where they look for it).

    Restart policy `unless-stopped`: Docker restarts the agent whenever its
    process ends (a crash, an OOM kill, an exit 0 from a bug) and when the
    engine itself restarts, without meshlocal running; the agent then resumes
    its last configuration and adopts the replicas that run. `on-failure`
    would miss an exit 0 and a daemon that stopped it cleanly; `always`
    would bring back, at the next engine start, one the user stopped on
    purpose. Docker never restarts a container it was told to stop or kill
    (`docker stop`, `docker kill`), nor one removed (`meshlocal down`).
    """
    name = L.dataplane_name(project, env)
    lbl = L.base_labels(project, env, L.Role.DATAPLANE, workspace)
    env_vars = {
        "MESHLOCAL_PROJECT": project,
        "MESHLOCAL_ENV": env,
        "MESHLOCAL_NETWORK": network.name,
        **(environment or {}),
    }
    spec = ContainerSpec(
        name=name,
        image=image,
        labels=lbl,
        environment=env_vars,
        command=tuple(args),
        network=network.name,
        hostname=L.hostname_for(name),
        ports=dict(publish or {}),
        binds=(f"{host_socket(engine)}:{CONTAINER_SOCKET}", *binds),
        # Service Connect endpoint addresses go on its own interface (vipnet.py);
        # NET_ADMIN is scoped to the container's own network namespace.
        cap_add=("NET_ADMIN",),
        restart_policy="unless-stopped",
        ipv4_address=address,
    )
    blob = json.dumps(asdict(spec), sort_keys=True, default=str)
    lbl[L.CONFIG_HASH] = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return spec


def ensure_dataplane(engine: Engine, spec: ContainerSpec) -> tuple[str, str, bool]:
    """(container id, address on the network, started now?) of the data plane.

    A running data plane with the same config hash is kept, so its address stays.
    Any other one is replaced.
    """
    assert spec.network is not None
    for old in engine.list_containers(
        spec.labels[L.PROJECT], spec.labels[L.ENV], role=L.Role.DATAPLANE
    ):
        same = old.config_hash == spec.labels.get(L.CONFIG_HASH)
        if same and old.running and old.address_on(spec.network):
            return old.id, old.address_on(spec.network) or "", False
        engine.remove(old.id)
    try:
        cid = engine.run_container(spec)
    except MeshlocalError:
        if spec.ipv4_address is None:
            raise
        # That address was taken meanwhile: any address (the replicas then roll).
        cid = engine.run_container(replace(spec, ipv4_address=None))
    info = engine.inspect(cid)
    address = info.address_on(spec.network) if info is not None else None
    if not address:
        logs = "\n".join(engine.logs(cid, 20))
        raise DataPlaneError(
            "the data plane container did not get an address",
            hint=f"its last output:\n{logs}" if logs else None,
        )
    return cid, address, True


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
