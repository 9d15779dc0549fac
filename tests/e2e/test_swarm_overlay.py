"""What a Docker Swarm overlay network does with meshlocal's addresses, across two nodes.

Facts a swarm mode (issue 22) builds on, checked on a real two-node swarm:
this engine as manager, and a second engine (nodes.py) joined as a worker.
docs/docker-notes.md §12 and docs/scale-out.md tell what they mean.

1. An address added to a container's overlay interface (as the data plane
   holds Service Connect endpoint addresses, vips.py) answers containers on
   its own node only: other nodes' overlay resolves only the addresses the
   swarm knows, so a client there gets "No route to host".
2. A holder endpoint that claims that address with the data plane's MAC
   address, and never answers ARP itself, makes it known: a client on the
   other node then reaches the data plane on it, with its own source address
   (the proxy's per-client state holds across nodes), and the data plane's
   own address keeps working.
3. A swarm task on the worker forwards DNS through Docker's embedded
   resolver to its `dns_config` server with its own overlay address, so the
   mesh DNS tells clients apart across nodes as on one engine (§1).

These tests init a swarm on the local engine, so they run in their own CI
step (scripts/test.sh), never beside other tests, and leave the engine as it
was: `swarm leave --force`, and the networks the swarm made removed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.types
import pytest

from .nodes import SWARM_MARKS, Node

pytestmark = SWARM_MARKS

OVERLAY = "meshlocal-test-overlay"
LABEL = {"meshlocal.test-swarm": "1"}
PROBE = Path(__file__).resolve().parent.parent / "runtime" / "dnsprobe.py"


class Swarm:
    def __init__(self, manager: docker.DockerClient, worker: Node, subnet: str) -> None:
        self.manager = manager
        self.worker = worker
        self.subnet = ipaddress.ip_network(subnet)

    def at(self, n: int) -> str:
        return str(self.subnet.network_address + n)


def _free_subnet(client: docker.DockerClient) -> str:
    taken = [
        ipaddress.ip_network(c["Subnet"])
        for n in client.api.networks()
        for c in ((client.api.inspect_network(n["Id"]).get("IPAM") or {}).get("Config") or [])
        if c.get("Subnet") and ":" not in c["Subnet"]
    ]
    for third in range(200, 250):
        candidate = ipaddress.ip_network(f"10.{third}.7.0/24")
        if not any(candidate.overlaps(t) for t in taken):
            return str(candidate)
    raise AssertionError("no free 10.x.7.0/24 for the overlay")


@pytest.fixture(scope="module")
def swarm(
    swarm_cluster: Any, swarm_worker: Node, docker_client: Any, busybox_image: str
) -> Iterator[Swarm]:
    swarm_worker.load([busybox_image])
    subnet = _free_subnet(docker_client)
    net = docker_client.networks.create(
        OVERLAY,
        driver="overlay",
        attachable=True,
        labels=LABEL,
        ipam=docker.types.IPAMConfig(pool_configs=[docker.types.IPAMPool(subnet=subnet)]),
    )
    try:
        yield Swarm(docker_client, swarm_worker, subnet)
    finally:
        for c in docker_client.containers.list(all=True, filters={"label": "meshlocal.test-swarm"}):
            c.remove(force=True)
        for c in swarm_worker.client.containers.list(
            all=True, filters={"label": "meshlocal.test-swarm"}
        ):
            c.remove(force=True)
        for svc in docker_client.services.list(filters={"label": "meshlocal.test-swarm"}):
            svc.remove()
        with contextlib.suppress(docker.errors.DockerException):
            net.remove()


def _sh(client: docker.DockerClient, container: str, script: str) -> tuple[int, str]:
    result = client.containers.get(container).exec_run(["sh", "-c", script])
    return int(result.exit_code), bytes(result.output).decode(errors="replace")


def _fetch(client: docker.DockerClient, container: str, address: str) -> tuple[int, str]:
    # `timeout` bounds it: this static busybox's `wget -T` segfaults (docker-notes §6).
    return _sh(client, container, f"timeout 5 wget -q -O - http://{address}/ 2>&1")


def _dataplane(swarm: Swarm, busybox: str) -> Any:
    """A stand-in data plane on the manager: it serves its name on :80, and
    holds the endpoint address .250 beside its own, as vips.py puts them."""
    dp = swarm.manager.containers.run(
        busybox,
        ["sh", "-c", "mkdir /w && echo dataplane > /w/index.html && httpd -f -p 80 -h /w"],
        name="meshlocal-test-swarm-dp",
        detach=True,
        network=OVERLAY,
        cap_add=["NET_ADMIN"],
        labels=LABEL,
    )
    dp.reload()
    code, out = _sh(swarm.manager, dp.id, f"ip addr add {swarm.at(250)}/32 dev eth0")
    assert code == 0, out
    return dp


def _client_on_worker(swarm: Swarm, busybox: str) -> tuple[str, str]:
    """(id, overlay address) of a plain container on the worker."""
    c = swarm.worker.client.containers.run(
        busybox, ["sleep", "600"], detach=True, network=OVERLAY, labels=LABEL
    )
    c.reload()
    return str(c.id), str(c.attrs["NetworkSettings"]["Networks"][OVERLAY]["IPAddress"])


def _holder(swarm: Swarm, busybox: str, mac: str, address: str) -> str:
    """The endpoint address's holder: the data plane's MAC, silent on ARP and IPv6."""
    api = swarm.manager.api
    host = api.create_host_config(
        network_mode=OVERLAY,
        sysctls={
            "net.ipv4.conf.all.arp_ignore": "8",
            "net.ipv4.conf.default.arp_ignore": "8",
            "net.ipv6.conf.all.disable_ipv6": "1",
        },
    )
    made = api.create_container(
        busybox,
        ["sleep", "600"],
        name="meshlocal-test-swarm-holder",
        mac_address=mac,  # API 1.41: one MAC for the container's endpoint
        host_config=host,
        labels=LABEL,
        networking_config=api.create_networking_config(
            {OVERLAY: api.create_endpoint_config(ipv4_address=address)}
        ),
    )
    api.start(made["Id"])
    return str(made["Id"])


def test_an_endpoint_address_reaches_other_nodes_only_through_a_holder_with_the_dataplanes_mac(
    swarm: Swarm, busybox_image: str
) -> None:
    dp = _dataplane(swarm, busybox_image)
    client, client_ip = _client_on_worker(swarm, busybox_image)
    vip = swarm.at(250)
    dp_ip = dp.attrs["NetworkSettings"]["Networks"][OVERLAY]["IPAddress"]

    code, out = _fetch(swarm.worker.client, client, dp_ip)
    assert (code, out.strip()) == (0, "dataplane"), out
    code, out = _fetch(swarm.worker.client, client, vip)
    assert code != 0 and "No route to host" in out, out  # fact 1

    mac = dp.attrs["NetworkSettings"]["Networks"][OVERLAY]["MacAddress"]
    _holder(swarm, busybox_image, mac, vip)
    deadline = time.monotonic() + 20
    while (code := _fetch(swarm.worker.client, client, vip)[0]) != 0:
        assert time.monotonic() < deadline, "the held address never became reachable"
        time.sleep(0.5)
    # Fact 2: reached, again and again, and the data plane's own address still works.
    for _ in range(10):
        for address in (vip, dp_ip):
            code, out = _fetch(swarm.worker.client, client, address)
            assert (code, out.strip()) == (0, "dataplane"), (address, out)
    # The connection arrives with the client's own address: per-client state holds.
    _sh(swarm.worker.client, client, f"(sleep 3) | nc {vip} 80 >/dev/null 2>&1 &")
    deadline = time.monotonic() + 10
    while True:
        _, table = _sh(swarm.manager, dp.id, "netstat -tn")
        if f"{client_ip}:" in table and f"{vip}:80" in table:
            break
        assert time.monotonic() < deadline, table
        time.sleep(0.2)


def test_a_swarm_task_on_another_node_asks_dns_with_its_own_address(
    swarm: Swarm, python_base: str, busybox_image: str
) -> None:
    server = swarm.manager.containers.run(
        python_base,
        ["python3", "-u", "/probe.py"],
        name="meshlocal-test-swarm-dns",
        detach=True,
        network=OVERLAY,
        volumes={str(PROBE): {"bind": "/probe.py", "mode": "ro"}},
        labels=LABEL,
    )
    server.reload()
    server_ip = server.attrs["NetworkSettings"]["Networks"][OVERLAY]["IPAddress"]
    service = swarm.manager.services.create(
        busybox_image,
        ["sleep", "600"],
        name="meshlocal-test-swarm-client",
        networks=[OVERLAY],
        labels=LABEL,
        container_labels=LABEL,
        dns_config=docker.types.DNSConfig(nameservers=[server_ip]),
        constraints=[f"node.hostname=={swarm.worker.name}"],
    )
    deadline = time.monotonic() + 60
    while True:
        tasks = [t for t in service.tasks() if t["Status"]["State"] == "running"]
        if tasks:
            break
        assert time.monotonic() < deadline, service.tasks()
        time.sleep(0.5)
    task = tasks[0]
    container = task["Status"]["ContainerStatus"]["ContainerID"]
    attached = [a for a in task["NetworksAttachments"] if a["Network"]["Spec"]["Name"] == OVERLAY]
    task_ip = attached[0]["Addresses"][0].split("/")[0]
    _, out = _sh(swarm.worker.client, container, "nslookup probe.meshlocal.test")
    assert "10.99.99.99" in out, out
    logs = server.logs().decode()
    asked = [line.split() for line in logs.splitlines() if line.startswith("Q ")]
    assert [q[1] for q in asked if q[2] == "probe.meshlocal.test"][:1] == [task_ip], logs
    assert task["NodeID"] != swarm.manager.info()["Swarm"]["NodeID"]
