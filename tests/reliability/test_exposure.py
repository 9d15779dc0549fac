"""Exposure: what the mesh publishes, and who may talk to its admin API.

- Every port the data plane publishes is bound to 127.0.0.1 on the host
  (Docker's view and the kernel's listening sockets agree); replicas
  publish nothing; the data plane sits on the environment's network only.
- Host mode binds DNS and proxy to the network's gateway, admin and public
  endpoint to 127.0.0.1.
- Replicas on the environment's network reach the data plane's DNS and
  proxy, but its admin API (state, scale, apply, metrics) answers them 403:
  only the host, through the published loopback port, gets in.

Figures: exposure.json in $MESHLOCAL_RELIABILITY_OUT.
"""

from __future__ import annotations

import json
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlocal.adminguard import admin_peer_allowed
from meshlocal.ports import ADMIN_PORT
from meshlocal.runtime import labels as L

from . import figures
from .conftest import Soak

RESULTS: dict[str, Any] = {}


@pytest.fixture(scope="module", autouse=True)
def write_results(results_fallback: Path) -> Iterator[None]:
    yield
    if RESULTS:
        figures.write("exposure", RESULTS, results_fallback)


def test_admin_peer_rule() -> None:
    gw = "172.30.0.1"
    assert admin_peer_allowed("127.0.0.1", gw)
    assert admin_peer_allowed("127.0.0.53", None)
    assert admin_peer_allowed("::1", gw)
    assert admin_peer_allowed("::ffff:127.0.0.1", gw)
    assert admin_peer_allowed("172.30.0.1", gw)
    assert admin_peer_allowed("::ffff:172.30.0.1", gw)
    assert not admin_peer_allowed("172.30.0.5", gw)  # a replica
    assert not admin_peer_allowed("172.30.0.1", None)
    assert not admin_peer_allowed("10.0.0.7", gw)
    assert not admin_peer_allowed(None, gw)
    assert not admin_peer_allowed("not-an-address", gw)


def _listening(port: int) -> list[str]:
    """Local addresses of the host's TCP sockets listening on `port` (ss, from iproute2)."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout
    return sorted({line.split()[3].rsplit(":", 1)[0] for line in out.splitlines() if line.strip()})


@pytest.mark.docker
def test_published_ports_bind_loopback_only(mesh: Soak) -> None:
    plane = mesh.plane()
    plane.reload()
    bindings = plane.attrs["NetworkSettings"]["Ports"] or {}
    published = {
        key: [f"{b['HostIp']}:{b['HostPort']}" for b in value or []]
        for key, value in bindings.items()
        if value
    }
    host_ips = {b.split(":")[0] for v in published.values() for b in v}
    sockets = {key: _listening(int(v[0].split(":")[1])) for key, v in published.items()}
    networks = sorted(plane.attrs["NetworkSettings"]["Networks"])
    replica_ports = {
        c.name: c.attrs["NetworkSettings"]["Ports"]
        for c in mesh.client.containers.list(
            filters={"label": [f"{L.PROJECT}={mesh.project}", f"{L.ROLE}=replica"]}
        )
        if any(c.attrs["NetworkSettings"]["Ports"].values())
    }
    RESULTS["published"] = {
        "command": "pytest tests/reliability/test_exposure.py -k published",
        "dataplane_published_ports": published,
        "host_sockets_listening_on_them": sockets,
        "dataplane_networks": networks,
        "replicas_publishing_ports": replica_ports,
    }
    assert f"{ADMIN_PORT}/tcp" in published
    assert host_ips == {"127.0.0.1"}, published
    for key, addrs in sockets.items():
        assert addrs and set(addrs) <= {"127.0.0.1"}, (key, addrs)
    assert networks == [f"{mesh.project}-test"]
    assert replica_ports == {}


@pytest.mark.docker
def test_host_mode_binds_the_gateway_and_loopback(mesh: Soak) -> None:
    network = mesh.dep.network()
    config = mesh.dep.agent_config({}, "host", network)
    RESULTS["host_mode"] = {
        "command": "pytest tests/reliability/test_exposure.py -k host_mode",
        "dns_and_proxy_bind": config.bind,
        "admin_binds": config.admin_host,
        "public_binds": config.public_host,
        "network_gateway": network.gateway,
    }
    assert config.bind == network.gateway
    assert config.admin_host == "127.0.0.1" and config.public_host == "127.0.0.1"


@pytest.mark.docker
def test_replicas_cannot_use_the_admin_api_but_the_host_can(mesh: Soak) -> None:
    state = mesh.dep.state()
    address = state["address"]
    client = mesh.client.containers.get(L.container_name(mesh.project, "test", "client", 1))
    tried: dict[str, str] = {}
    for path in ("/v1/state", "/metrics", "/stats", "/healthz"):
        # busybox wget: exit 1 and "server returned error: HTTP/1.1 403" on a refusal
        result = client.exec_run(
            ["timeout", "10", "wget", "-q", "-O", "-", f"http://{address}:{ADMIN_PORT}{path}"]
        )
        out = bytes(result.output).decode(errors="replace")
        tried[path] = "403" if "403" in out else f"exit {result.exit_code}: {out[:80]}"
    # POST /v1/scale and /v1/apply would change the mesh: also refused.
    result = client.exec_run(
        [
            "timeout",
            "10",
            "wget",
            "-q",
            "-O",
            "-",
            "--post-data",
            '{"service":"api","count":0}',
            f"http://{address}:{ADMIN_PORT}/v1/scale",
        ]
    )
    out = bytes(result.output).decode(errors="replace")
    tried["POST /v1/scale"] = "403" if "403" in out else f"exit {result.exit_code}: {out[:80]}"
    # The mesh itself still serves the replica.
    served = client.exec_run(["timeout", "10", "wget", "-q", "-O", "-", "http://api/cgi-bin/r"])
    # And the host, through the published loopback port, still gets in.
    admin_url = mesh.dep.dataplane().admin_url
    with urllib.request.urlopen(admin_url + "/v1/state", timeout=10) as resp:
        host_status = resp.status
        json.loads(resp.read())
    with urllib.request.urlopen(admin_url + "/metrics", timeout=10) as resp:
        metrics_status = resp.status
    RESULTS["admin_from_a_replica"] = {
        "command": "pytest tests/reliability/test_exposure.py -k admin",
        "from": client.name,
        "target": f"{address}:{ADMIN_PORT}",
        "answers": tried,
        "service_connect_from_the_replica": "ok" if served.exit_code == 0 else "failed",
        "host_via_published_port": {"/v1/state": host_status, "/metrics": metrics_status},
    }
    assert set(tried.values()) == {"403"}, tried
    assert served.exit_code == 0, served.output
    # The refused scale changed nothing.
    assert mesh.dep.state()["services"]["api"]["desired"] == state["services"]["api"]["desired"]
    assert host_status == 200 and metrics_status == 200
