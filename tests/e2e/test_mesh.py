"""The mesh as containers see it, in both data-plane modes (container and host).

One mesh per mode and module: `api` (3 busybox httpd replicas, health
checked, Service Connect), `client` (Service Connect client, no port),
`legacy` (no Service Connect) and `web` (a Load Balanced Web Service).
What applications see is asserted from inside a client container with busybox
`wget`/`nslookup`, through Docker's embedded DNS, as an application would; the
expected addresses come from the admin state. Three checks look from the host
instead: the public endpoint (published on the host, as an ALB is reached from
outside); the 1 s bound for a killed replica to leave DNS, which polls the mesh
DNS directly every 20 ms (a `docker exec` of nslookup per poll would cost a good
part of the bound it measures) and reads rotation from the admin state, then
confirms from inside a container; and the names attached to the network, read
from Docker's API.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rcode
import pytest

from meshlocal.deployment import Deployment
from meshlocal.runtime import labels as L

from .conftest import (
    container_of,
    copy_workspace,
    leftovers,
    nslookup,
    sh,
    wait_for,
)

pytestmark = pytest.mark.docker

API_COUNT = 3


@dataclass
class Mesh:
    dep: Deployment
    mode: str
    workspace: Path
    client: Any  # docker.DockerClient

    @property
    def project(self) -> str:
        return self.dep.project

    def state(self) -> dict[str, Any]:
        return self.dep.state()

    def container(self, service: str, index: int = 1) -> str:
        return container_of(self.client, self.project, service, index)

    def api_replicas(self) -> list[dict[str, Any]]:
        return list(self.state()["services"]["api"]["replicas"])


@pytest.fixture(scope="module", params=["container", "host"])
def mesh(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> Iterator[Mesh]:
    mode = str(request.param)
    if mode == "host" and os.geteuid() != 0:
        pytest.skip("host mode binds the network gateway's port 53: root only")
    ws = copy_workspace(tmp_path_factory, "mini")
    dep = Deployment(ws, "test", environ={**os.environ, "BUSYBOX_IMAGE": busybox_image})
    try:
        dep.up(mode=mode, timeout=120)  # type: ignore[arg-type]
        yield Mesh(dep, mode, ws, docker_client)
    finally:
        dep.down()
        project = dep.project
        dep.close()
        left = leftovers(docker_client, project)
        assert left == [], f"down left behind: {left}"


def _pages(mesh: Mesh, count: int) -> list[str]:
    """`count` sequential `wget http://api/` from the client: the pages, in order."""
    # Not `wget -T`: this static busybox segfaults with it; `timeout` bounds it instead.
    script = (
        f"i=0; while [ $i -lt {count} ]; do timeout 10 wget -q -O - http://api/ || echo FAIL;"
        " i=$((i+1)); done; echo END"
    )
    code, out = sh(mesh.client, mesh.container("client"), script)
    assert code == 0 and out.rstrip().endswith("END"), out
    pages = [line for line in out.splitlines()[:-1] if line.strip()]
    assert len(pages) == count and "FAIL" not in pages, out
    return pages


def test_sc_client_requests_spread_evenly_over_replicas(mesh: Mesh) -> None:
    replicas = mesh.api_replicas()
    assert len(replicas) == API_COUNT and all(r["in_rotation"] for r in replicas)
    n = 8 * API_COUNT
    pages = _pages(mesh, n)
    # A page is "<hostname> <ip> <token> v=<VERSION>": group by the replica's address.
    hits = collections.Counter(page.split()[1] for page in pages)
    assert set(hits) == {r["address"] for r in replicas}, hits
    share = n // API_COUNT
    assert all(share - 1 <= c <= share + 1 for c in hits.values()), hits
    # The page names the replica by its container hostname, never a mesh name.
    assert {page.split()[0] for page in pages} == {
        L.container_name(mesh.project, "test", "api", i) for i in range(1, API_COUNT + 1)
    }


def test_legacy_client_gets_nxdomain_for_api_and_every_replica_for_sd_name(mesh: Mesh) -> None:
    legacy = mesh.container("legacy")
    assert nslookup(mesh.client, legacy, "api") == ("NXDOMAIN", [])
    status, answers = nslookup(mesh.client, legacy, "api.test.mini.local")
    assert status == "NOERROR"
    assert answers == sorted(r["address"] for r in mesh.api_replicas())


def test_sc_client_resolves_api_to_its_endpoint_address_not_a_container(mesh: Mesh) -> None:
    state = mesh.state()
    client = mesh.container("client")
    status, answers = nslookup(mesh.client, client, "api")
    assert (status, answers) == ("NOERROR", [state["services"]["api"]["connect"]["vip"]])
    # The SD name still lists the replicas for a Service Connect client too.
    assert nslookup(mesh.client, client, "api.test.mini.local")[1] == sorted(
        r["address"] for r in state["services"]["api"]["replicas"]
    )
    if mesh.mode == "host":
        net = mesh.dep.network()
        assert state["address"] == net.gateway


def test_no_container_name_hostname_or_alias_is_a_mesh_name(mesh: Mesh) -> None:
    """Docker's embedded DNS answers these before it forwards: none may be a mesh name."""
    state = mesh.state()
    mesh_names = set(state["services"])
    for svc in state["services"].values():
        mesh_names.add(svc["discovery_name"] or "")
        for url in svc["connect_endpoints"]:
            mesh_names.add(url.split("://", 1)[1].split(":")[0])
    mesh_names.discard("")
    net = mesh.dep.network()
    attached = mesh.client.api.inspect_network(net.id)["Containers"] or {}
    # 7 replicas, plus the data-plane container in container mode.
    assert len(attached) == (8 if mesh.mode == "container" else 7)
    container_addresses = set()
    for cid in attached:
        raw = mesh.client.api.inspect_container(cid)
        names = {raw["Name"].lstrip("/"), raw["Config"]["Hostname"]}
        endpoint = raw["NetworkSettings"]["Networks"][net.name]
        names |= set(endpoint.get("Aliases") or [])
        container_addresses.add(endpoint["IPAddress"])
        shadowing = {n for n in names if n in mesh_names or n.split(".")[0] in mesh_names}
        assert not shadowing, f"{raw['Name']} shadows {shadowing}"
    # And from inside: `api` is the data plane, which is no replica.
    _, answers = nslookup(mesh.client, mesh.container("legacy"), "api.test.mini.local")
    assert state["address"] not in answers
    replica_addresses = {
        r["address"] for svc in state["services"].values() for r in svc["replicas"]
    }
    assert state["address"] not in replica_addresses
    assert replica_addresses <= container_addresses


def test_public_endpoint_round_robins_the_web_replicas(mesh: Mesh) -> None:
    url = mesh.dep.public_url()
    assert url is not None and url.startswith("http://127.0.0.1:")
    bodies = []
    for _ in range(6):
        with urllib.request.urlopen(url + "/", timeout=5) as resp:
            bodies.append(resp.read().decode().strip())
    expected = {L.container_name(mesh.project, "test", "web", i) for i in (1, 2)}
    assert collections.Counter(bodies) == dict.fromkeys(expected, 3)


def _sd_answers(server: str, name: str) -> list[str] | None:
    """The mesh DNS's answer asked directly from the host (None on timeout)."""
    try:
        reply = dns.query.udp(dns.message.make_query(name, "A"), server, timeout=0.5)
    except dns.exception.Timeout:
        return None
    assert reply.rcode() == dns.rcode.NOERROR
    return sorted(item.address for rrset in reply.answer for item in rrset)


def test_killed_replica_leaves_dns_and_rotation_within_1s_and_is_replaced(mesh: Mesh) -> None:
    state = mesh.state()
    victim = next(r for r in state["services"]["api"]["replicas"] if r["index"] == 2)
    pages_before = _pages(mesh, API_COUNT)
    victim_page = next(p for p in pages_before if p.split()[1] == victim["address"])
    server = state["address"]
    assert victim["address"] in (_sd_answers(server, "api.test.mini.local") or [])

    # Watch the die event from Docker's own clock, in a thread started before the kill.
    died: list[float] = []
    events = mesh.client.events(
        decode=True, filters={"container": victim["container_id"], "event": "die"}
    )

    def watch() -> None:
        for event in events:
            died.append(event["timeNano"] / 1e9)
            return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        mesh.client.api.kill(victim["container_id"])

        def gone() -> float | None:
            answers = _sd_answers(server, "api.test.mini.local")
            if answers is not None and victim["address"] not in answers:
                return time.time()
            return None

        gone_at = wait_for("the killed replica to leave DNS", gone, timeout=10, interval=0.02)
        wait_for("the die event", lambda: died, timeout=5)
    finally:
        events.close()
    assert gone_at - died[0] <= 1.0, f"left DNS {gone_at - died[0]:.3f} s after the die event"
    rotation = [r["container_id"] for r in mesh.api_replicas() if r["in_rotation"]]
    assert victim["container_id"] not in rotation

    # Inside a container, through the embedded DNS, and through the proxy too.
    _, answers = nslookup(mesh.client, mesh.container("legacy"), "api.test.mini.local")
    assert victim["address"] not in answers
    pages = _pages(mesh, 2 * API_COUNT)
    assert victim_page not in pages

    # ECS replaces a stopped task: a new api-2 joins once healthy.
    def replaced() -> list[dict[str, Any]] | None:
        replicas = [r for r in mesh.api_replicas() if r["in_rotation"]]
        new = [r for r in replicas if r["index"] == 2]
        ok = len(replicas) == API_COUNT and new and new[0]["container_id"] != victim["container_id"]
        return replicas if ok else None

    replicas = wait_for("a replacement api-2", replaced, timeout=30, interval=0.2)
    assert sorted(_sd_answers(server, "api.test.mini.local") or []) == sorted(
        r["address"] for r in replicas
    )
    pages = _pages(mesh, 2 * API_COUNT)
    assert {p.split()[1] for p in pages} == {r["address"] for r in replicas}
    assert victim_page not in pages
