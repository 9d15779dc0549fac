"""Service Connect as Copilot deploys it, seen from inside containers, in both modes.

Workspace `sc`: `api` (busybox httpd :80, TCP mode), `front` (a keep-alive
Python server :80 behind alias `frontend.local`, TCP mode), `hapi` (busybox
:8081 with AppProtocol http), `pyclient` (a Service Connect client with
Python) and `outsider` (no Service Connect). Each endpoint has its own
address (VIP); the proxy routes by the address dialled, never by Host.
"""

from __future__ import annotations

import ipaddress
import json
import os
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshlocal.deployment import Deployment

from .conftest import (
    cli_env,
    container_of,
    copy_workspace,
    leftovers,
    nslookup,
    ok,
    run_cli,
    sh,
)

pytestmark = pytest.mark.docker


@dataclass
class Mesh:
    dep: Deployment
    mode: str
    workspace: Path
    client: Any
    environ: dict[str, str]

    def container(self, service: str, index: int = 1) -> str:
        return container_of(self.client, self.dep.project, service, index)

    def state(self) -> dict[str, Any]:
        return self.dep.state()

    def vip(self, service: str) -> str:
        return str(self.state()["services"][service]["connect"]["vip"])

    def py(self, code: str, timeout: float = 30.0) -> Any:
        """Run Python in the pyclient replica; its last stdout line is JSON."""
        script = "import json, socket, http.client, time\n" + textwrap.dedent(code)
        result = self.client.containers.get(self.container("pyclient")).exec_run(
            ["timeout", str(int(timeout)), "python3", "-c", script]
        )
        out = bytes(result.output).decode(errors="replace")
        assert result.exit_code == 0, out
        return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module", params=["container", "host"])
def mesh(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    python_base: str,
    dataplane_image: str,
) -> Iterator[Mesh]:
    mode = str(request.param)
    if mode == "host" and os.geteuid() != 0:
        pytest.skip("host mode binds the network gateway's port 53: root only")
    ws = copy_workspace(tmp_path_factory, "sc")
    environ = {**os.environ, "BUSYBOX_IMAGE": busybox_image, "PYTHON_IMAGE": python_base}
    dep = Deployment(ws, "test", environ=environ)
    try:
        dep.up(mode=mode, timeout=150)  # type: ignore[arg-type]
        yield Mesh(dep, mode, ws, docker_client, environ)
    finally:
        dep.down()
        project = dep.project
        dep.close()
        assert leftovers(docker_client, project) == []


def test_every_endpoint_has_its_own_address_outside_the_container_range(mesh: Mesh) -> None:
    state = mesh.state()
    net = mesh.dep.network()
    assert net.subnet and net.ip_range
    vips = {name: mesh.vip(name) for name in ("api", "front", "hapi")}
    assert len(set(vips.values())) == 3
    for vip in vips.values():
        address = ipaddress.ip_address(vip)
        assert address in ipaddress.ip_network(net.subnet)
        assert address not in ipaddress.ip_network(net.ip_range)
        assert vip != state["address"]
    assert state["services"]["front"]["connect"]["name"] == "frontend.local"
    assert state["services"]["front"]["connect"]["protocol"] == "tcp"
    assert state["services"]["hapi"]["connect"]["protocol"] == "http"


def test_the_alias_replaces_the_name_for_clients_and_nobody_else_sees_either(mesh: Mesh) -> None:
    got = mesh.py(
        """
        out = {}
        for name in ("frontend.local", "front", "api"):
            try:
                infos = socket.getaddrinfo(name, 80, socket.AF_INET, socket.SOCK_STREAM)
                out[name] = sorted({i[4][0] for i in infos})
            except socket.gaierror as exc:
                out[name] = "NXDOMAIN" if exc.errno == socket.EAI_NONAME else str(exc)
        print(json.dumps(out))
        """
    )
    assert got == {
        "frontend.local": [mesh.vip("front")],
        "front": "NXDOMAIN",
        "api": [mesh.vip("api")],
    }
    outsider = mesh.container("outsider")
    assert nslookup(mesh.client, outsider, "frontend.local")[0] == "NXDOMAIN"
    assert nslookup(mesh.client, outsider, "front")[0] == "NXDOMAIN"
    # Service Discovery names stay visible to everyone.
    status, answers = nslookup(mesh.client, outsider, "front.test.sc.local")
    assert status == "NOERROR" and len(answers) == 2


def test_two_endpoints_on_port_80_with_a_foreign_host_each_reach_their_service(
    mesh: Mesh,
) -> None:
    # An nginx or BFF that passes its own Host: ECS routes by address, so does meshlocal.
    got = mesh.py(
        """
        out = {}
        for name in ("api", "frontend.local"):
            bodies = []
            for _ in range(4):
                c = http.client.HTTPConnection(name, 80, timeout=10)
                c.request("GET", "/index.html", headers={"Host": "example.com"})
                r = c.getresponse()
                bodies.append((r.status, r.read().decode().split()[0]))
                c.close()
            out[name] = bodies
        print(json.dumps(out))
        """
    )
    assert got["api"] == [[200, "api"]] * 4
    assert got["frontend.local"] == [[200, "front"]] * 4


def test_tcp_mode_keep_alive_stays_on_one_replica_new_connections_rotate(mesh: Mesh) -> None:
    got = mesh.py(
        """
        c = http.client.HTTPConnection("frontend.local", 80, timeout=10)
        same = []
        for _ in range(6):
            c.request("GET", "/")
            same.append(c.getresponse().read().decode().split()[1])
        c.close()
        fresh = []
        for _ in range(6):
            c = http.client.HTTPConnection("frontend.local", 80, timeout=10)
            c.request("GET", "/")
            fresh.append(c.getresponse().read().decode().split()[1])
            c.close()
        print(json.dumps({"same": same, "fresh": fresh}))
        """
    )
    assert len(set(got["same"])) == 1, got  # one connection, one replica
    assert Counter(got["fresh"]) == Counter({h: 3 for h in set(got["fresh"])}), got
    assert len(set(got["fresh"])) == 2, got


def test_http_mode_balances_every_request_on_one_connection(mesh: Mesh) -> None:
    got = mesh.py(
        """
        c = http.client.HTTPConnection("hapi", 8081, timeout=10)
        seen = []
        for _ in range(6):
            c.request("GET", "/")
            r = c.getresponse()
            seen.append(r.getheader("x-meshlocal-replica"))
            r.read()
        print(json.dumps(seen))
        """
    )
    assert got[0] != got[1] and got == [got[0], got[1]] * 3, got


def test_tcp_half_close_still_gets_the_whole_answer(mesh: Mesh) -> None:
    got = mesh.py(
        """
        s = socket.create_connection(("frontend.local", 80), timeout=10)
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
        s.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
        print(json.dumps(data.decode(errors="replace")))
        """
    )
    assert got.startswith("HTTP/1.") and " 200 " in got.split("\r\n")[0], got
    assert got.rstrip().split("\r\n\r\n", 1)[1].startswith("front "), got


def test_an_endpoint_address_on_another_port_is_refused(mesh: Mesh) -> None:
    # Any other port: a free one, and the data plane's own DNS, admin and public ports.
    got = mesh.py(
        """
        out = {}
        for port in (81, 53, 15000, 15080, 8081):
            try:
                socket.create_connection(("frontend.local", port), timeout=5).close()
                out[port] = "connected"
            except ConnectionRefusedError:
                out[port] = "refused"
        print(json.dumps(out))
        """
    )
    assert got == dict.fromkeys(["81", "53", "15000", "15080", "8081"], "refused")


def test_killing_the_pinned_replica_breaks_that_connection_only(mesh: Mesh) -> None:
    # Hold one keep-alive connection, kill the replica serving it, then ask again.
    code = """
        c = http.client.HTTPConnection("frontend.local", 80, timeout=10)
        c.request("GET", "/")
        pinned = c.getresponse().read().decode().split()[1]
        open("/tmp/pinned", "w").write(pinned)
        for _ in range(300):  # the test kills `pinned` meanwhile (bounded: 30 s)
            time.sleep(0.1)
            try:
                open("/tmp/go").close()
                break
            except FileNotFoundError:
                pass
        try:
            c.request("GET", "/")
            after = c.getresponse().read().decode().split()[1]
        except (OSError, http.client.HTTPException) as exc:
            after = "broken: " + type(exc).__name__
        c2 = http.client.HTTPConnection("frontend.local", 80, timeout=10)
        c2.request("GET", "/")
        fresh = c2.getresponse().read().decode().split()[1]
        print(json.dumps({"pinned": pinned, "after": after, "fresh": fresh}))
    """
    container = mesh.client.containers.get(mesh.container("pyclient"))
    script = "import json, socket, http.client, time\n" + textwrap.dedent(code)
    exec_id = mesh.client.api.exec_create(container.id, ["python3", "-c", script])["Id"]
    stream = mesh.client.api.exec_start(exec_id, stream=True)
    pinned = ""
    for _ in range(100):
        _, out = sh(mesh.client, mesh.container("pyclient"), "cat /tmp/pinned 2>/dev/null")
        if out.strip():
            pinned = out.strip()
            break
        time.sleep(0.1)
    assert pinned, "the client never got its first answer"
    mesh.client.containers.get(pinned).kill()
    sh(mesh.client, mesh.container("pyclient"), "echo go > /tmp/go")
    output = b"".join(stream).decode(errors="replace")
    got = json.loads(output.strip().splitlines()[-1])
    assert got["pinned"] == pinned
    assert got["after"].startswith("broken"), got
    assert got["fresh"] != pinned, got


def test_stats_count_connections_in_tcp_mode_and_requests_in_http_mode(mesh: Mesh) -> None:
    mesh.py(
        """
        for name, port in (("frontend.local", 80), ("hapi", 8081)):
            for _ in range(3):
                c = http.client.HTTPConnection(name, port, timeout=10)
                c.request("GET", "/")
                c.getresponse().read()
                c.close()
        print(json.dumps("ok"))
        """
    )
    stats = mesh.dep.call("/stats")
    assert stats["front"]["NewConnectionCount"] >= 3
    assert stats["front"]["ProcessedBytes"] > 0
    assert stats["front"]["RequestCount"] == 0  # tcp: no HTTP metrics, as on ECS
    assert stats["hapi"]["RequestCount"] >= 3
    env = cli_env(
        BUSYBOX_IMAGE=mesh.environ["BUSYBOX_IMAGE"], PYTHON_IMAGE=mesh.environ["PYTHON_IMAGE"]
    )
    table = ok(run_cli(mesh.workspace, "stats", env=env)).stdout
    rows = {line.split("│")[1].strip(): line for line in table.splitlines() if "│" in line}
    assert "tcp" in rows["front"] and "http" in rows["hapi"], table


def test_up_again_keeps_every_endpoint_address(mesh: Mesh) -> None:
    # Host mode restarts the agent on `up`; container mode hands it the new
    # configuration. Either way an endpoint keeps its address, even when a new
    # endpoint sorts before it (allocating afresh in name order would move it).
    # Last in the module: it renames front's alias.
    before = {name: mesh.vip(name) for name in ("api", "hapi")}
    manifest = mesh.workspace / "copilot" / "front" / "manifest.yml"
    manifest.write_text(manifest.read_text().replace("frontend.local", "a-front.local"))
    mesh.dep.close()
    mesh.dep = Deployment(mesh.workspace, "test", environ=mesh.environ)
    # pyclient started before a-front.local existed: replaced, it sees it.
    mesh.dep.up(mode=mesh.mode, timeout=150, replace_services=["pyclient"])  # type: ignore[arg-type]
    assert {name: mesh.vip(name) for name in ("api", "hapi")} == before
    assert mesh.vip("front") not in before.values()
    got = mesh.py(
        """
        out = []
        for name in ("a-front.local", "api"):
            c = http.client.HTTPConnection(name, 80, timeout=10)
            c.request("GET", "/index.html")
            out.append(c.getresponse().read().decode().split()[0])
        print(json.dumps(out))
        """
    )
    assert got == ["front", "api"]
