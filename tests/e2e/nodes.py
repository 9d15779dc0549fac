"""A second Docker engine for tests: Debian's docker.io in a container.

Built offline like the Python base: debootstrap of Debian with `docker.io`,
imported as an image and cached by tag. Its engine listens on TCP on a
network of its own, so a test reaches it as a remote engine
(`DOCKER_HOST=tcp://ADDRESS:2375`) and nothing it runs lands on the local one.

`--privileged` is not used: this machine's engine lacks CAP_SYS_RESOURCE in
its bounding set, and a privileged container (which asks for every
capability) fails to start ("unable to apply caps"). Every other capability,
no seccomp or AppArmor profile, and the host's cgroup tree read-write (under
a parent of its own) are what the inner engine needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import pytest

SUITE = "bookworm"
MIRROR = os.environ.get("MESHLOCAL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ("docker.io", "iptables", "iproute2", "ca-certificates", "procps")
LABEL = "meshlocal.test-node"

# Swarm tests init a swarm on the engine: they run alone, in their own CI step.
SWARM_MARKS = [
    pytest.mark.docker,
    pytest.mark.swarm,
    pytest.mark.skipif(
        os.environ.get("MESHLOCAL_SWARM_TESTS") != "1",
        reason="swarm tests change the engine: alone (MESHLOCAL_SWARM_TESTS=1, scripts/test.sh)",
    ),
]
API_PORT = 2375

# Every capability but CAP_SYS_RESOURCE (see the module docstring).
CAPS = (
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
)

# The outer engine writes `options ndots:0` into the node's resolv.conf; the
# inner one would pass it on, and Docker's embedded DNS then answers
# single-label names (`api`) empty instead of forwarding them to the mesh.
ENTRYPOINT = """#!/bin/sh
set -e
grep '^nameserver' /etc/resolv.conf > /tmp/resolv.conf || true
cat /tmp/resolv.conf > /etc/resolv.conf
exec dockerd --tls=false -H unix:///var/run/docker.sock -H tcp://0.0.0.0:2375 \\
    --cgroup-parent="/$(hostname)" "$@"
"""


def node_tag() -> str:
    digest = hashlib.sha256(repr((SUITE, PACKAGES, ENTRYPOINT)).encode()).hexdigest()[:12]
    return f"meshlocal-test/node:{digest}"


def ensure_node_image(client: docker.DockerClient) -> str:
    """The node image, built once (about 40 s) and then found by tag."""
    tag = node_tag()
    try:
        client.images.get(tag)
        return tag
    except docker.errors.ImageNotFound:
        pass
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None or os.geteuid() != 0:
        raise RuntimeError("building the node image needs root and debootstrap")
    with tempfile.TemporaryDirectory(prefix="meshlocal-node-") as tmp:
        root = Path(tmp) / "rootfs"
        subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(root),
                MIRROR,
            ],
            check=True,
            capture_output=True,
            timeout=600,
        )
        entry = root / "usr/local/bin/node-entrypoint"
        entry.write_text(ENTRYPOINT)
        entry.chmod(0o755)
        archive = Path(tmp) / "rootfs.tar"
        with tarfile.open(archive, "w") as tar:
            tar.add(root, arcname=".")
        with archive.open("rb") as fh:
            client.api.import_image_from_data(
                fh.read(),
                repository=tag.split(":")[0],
                tag=tag.split(":")[1],
                changes=['ENTRYPOINT ["/usr/local/bin/node-entrypoint"]'],
            )
    return tag


class Node:
    """One engine in a container: `url` is its DOCKER_HOST, `client` its SDK client."""

    def __init__(self, outer: docker.DockerClient, name: str, network: str, image: str) -> None:
        self.outer = outer
        self.name = name
        self.container = outer.containers.run(
            image,
            name=name,
            hostname=name,
            detach=True,
            network=network,
            cap_add=CAPS,
            security_opt=[
                "seccomp=unconfined",
                "apparmor=unconfined",
            ],
            cgroupns="host",
            volumes={"/sys/fs/cgroup": {"bind": "/sys/fs/cgroup", "mode": "rw"}},
            # Its images and containers on a volume: overlay2 can't stack on the
            # outer engine's fuse-overlayfs root.
            mounts=[docker.types.Mount("/var/lib/docker", None, type="volume")],
            tmpfs={"/run": ""},
            devices=["/dev/fuse"] if Path("/dev/fuse").exists() else [],
            labels={LABEL: "1"},
        )
        self.container.reload()
        self.address = str(
            self.container.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
        )
        self.url = f"tcp://{self.address}:{API_PORT}"
        self.client = self._connect()

    def _connect(self, timeout: float = 60.0) -> docker.DockerClient:
        deadline = time.monotonic() + timeout
        while True:
            try:
                client = docker.DockerClient(base_url=self.url, timeout=60)
                client.ping()
                return client
            except Exception:
                self.container.reload()
                if self.container.status != "running" or time.monotonic() > deadline:
                    logs = self.container.logs(tail=20).decode(errors="replace")
                    raise RuntimeError(
                        f"the node engine {self.name} did not start:\n{logs}"
                    ) from None
                time.sleep(0.5)

    def load(self, tags: list[str]) -> None:
        """Copy images from the outer engine: `docker save | docker load`, no registry."""
        missing = []
        for tag in tags:
            try:
                self.client.images.get(tag)
            except docker.errors.ImageNotFound:
                missing.append(tag)
        for tag in missing:
            self.client.api.load_image(self.outer.api.get_image(tag))

    def remove(self) -> None:
        self.client.close()
        self.container.remove(force=True, v=True)


def remove_leftover_nodes(client: docker.DockerClient) -> None:
    """Nodes a killed run left: found by label."""
    for c in client.containers.list(all=True, filters={"label": LABEL}):
        c.remove(force=True, v=True)


def node_network(client: docker.DockerClient, name: str) -> Any:
    for net in client.networks.list(names=[name]):
        if net.name == name:
            return net
    return client.networks.create(name, labels={LABEL: "1"})


class Swarm:
    """A swarm on the outer engine (manager), joined by Nodes; left as it was on close().

    The manager advertises the nodes' network gateway: the address nodes reach
    it on. Networks the swarm makes (ingress, docker_gwbridge) are removed
    after `swarm leave`, which keeps them.
    """

    def __init__(self, outer: docker.DockerClient, network: str) -> None:
        state = outer.info()["Swarm"]["LocalNodeState"]
        if state != "inactive":
            raise RuntimeError(f"this engine is already in a swarm ({state}): not touched")
        self.outer = outer
        self.before = {n["Name"] for n in outer.api.networks()}
        self.net = node_network(outer, network)
        self.gateway = str(self.net.attrs["IPAM"]["Config"][0]["Gateway"])
        self.workers: list[Node] = []
        outer.swarm.init(advertise_addr=self.gateway, listen_addr=f"{self.gateway}:2377")

    def join(self, node: Node) -> None:
        token = self.outer.swarm.attrs["JoinTokens"]["Worker"]
        node.client.swarm.join(
            remote_addrs=[f"{self.gateway}:2377"], join_token=token, advertise_addr=node.address
        )
        self.workers.append(node)

    def close(self) -> None:
        for service in self.outer.services.list():
            service.remove()
        for node in self.workers:
            with contextlib.suppress(docker.errors.DockerException):
                node.client.swarm.leave(force=True)
            node.remove()
        with contextlib.suppress(docker.errors.DockerException):
            self.outer.swarm.leave(force=True)
        for net in self.outer.api.networks():
            if net["Name"] not in self.before:
                with contextlib.suppress(docker.errors.DockerException):
                    self.outer.api.remove_network(net["Id"])
        assert self.outer.info()["Swarm"]["LocalNodeState"] == "inactive"
