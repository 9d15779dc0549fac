"""The trust boundary: nothing a replica can reach holds the Docker engine (issue 13).

Workspace `sc` in both data-plane modes. From inside a replica (`pyclient`,
which has Python) every TCP port of every address the mesh network offers
is tried: the data plane's, each Service Connect address, the gateway. No
port answers the Docker API, the data plane offers only its own ports, and
its admin API refuses. Then the containers and processes themselves: the
data plane has no socket, no root, no capability, a read-only filesystem,
`no-new-privileges`; the controller has the socket and no network. Last,
each side restarted alone: the other keeps going and the mesh recovers.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshlocal.deployment import Deployment
from meshlocal.metadata import METADATA_PORT, URI_V3, URI_V4
from meshlocal.ports import ADMIN_PORT
from meshlocal.runtime import labels as L

from .conftest import (
    cli_env,
    container_of,
    copy_workspace,
    leftovers,
    nslookup,
    ok,
    run_cli,
    sh,
    wait_for,
)

pytestmark = pytest.mark.docker

# Tries every TCP port of each address; an open one is asked what the Docker
# API answers to (`GET /_ping`, `GET /version`). Bounded: 1 s per connection,
# 400 at a time, and the whole run by `timeout`.
SCAN = """
import asyncio, json, sys

async def probe(host, port):
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 1.0)
    except Exception:
        return None
    said = b""
    try:
        w.write(b"GET /_ping HTTP/1.1\\r\\nHost: docker\\r\\nConnection: close\\r\\n\\r\\n")
        await w.drain()
        said = await asyncio.wait_for(r.read(600), 1.0)
    except Exception:
        pass
    w.close()
    return [port, said.decode("latin-1")]

async def scan(host):
    # A fixed pool of workers: each timeout starts when its connect does, not
    # when 65k tasks were queued (on a busy machine those expired unrun).
    ports = iter(range(1, 65536))
    found = []
    async def worker():
        for port in ports:
            hit = await probe(host, port)
            if hit:
                found.append(hit)
    await asyncio.gather(*(worker() for _ in range(400)))
    return sorted(found)

async def main(hosts):
    out = {}
    for host in hosts:
        out[host] = await scan(host)
    print(json.dumps(out))

asyncio.run(main(sys.argv[1:]))
"""


def docker_like(answer: str) -> bool:
    """What the engine's API says to GET /_ping: `Api-Version`, `Docker-Experimental`, `OK`."""
    lower = answer.lower()
    return "api-version" in lower or "docker-experimental" in lower or "server: docker" in lower


@dataclass
class Mesh:
    dep: Deployment
    mode: str
    workspace: Path
    client: Any
    environ: dict[str, str]

    def cli(self, *args: str) -> Any:
        return run_cli(self.workspace, *args, env=cli_env(**self.environ))

    def container(self, service: str, index: int = 1) -> str:
        return container_of(self.client, self.dep.project, service, index)

    def state(self) -> dict[str, Any]:
        return self.dep.state()

    def in_replica(self, args: list[str], timeout: int = 240) -> tuple[int, str]:
        result = self.client.containers.get(self.container("pyclient")).exec_run(
            ["timeout", str(timeout), *args]
        )
        return int(result.exit_code), bytes(result.output).decode(errors="replace")


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
    images = {"BUSYBOX_IMAGE": busybox_image, "PYTHON_IMAGE": python_base}
    dep = Deployment(ws, "test", environ={**os.environ, **images})
    try:
        dep.up(mode=mode, timeout=150)  # type: ignore[arg-type]
        yield Mesh(dep, mode, ws, docker_client, images)
    finally:
        dep.down()
        project = dep.project
        dep.close()
        assert leftovers(docker_client, project) == []


def test_no_address_or_port_a_replica_reaches_answers_the_docker_api(mesh: Mesh) -> None:
    state = mesh.state()
    network = mesh.dep.network()
    vips = {s: svc["connect"]["vip"] for s, svc in state["services"].items() if svc["connect"]}
    plane = state["address"]
    hosts = sorted({plane, str(network.gateway), *vips.values()})
    code, out = mesh.in_replica(["python3", "-c", SCAN, *hosts])
    assert code == 0, out
    found: dict[str, list[list[Any]]] = json.loads(out.strip().splitlines()[-1])
    assert set(found) == set(hosts)
    for host, ports in found.items():
        for port, answer in ports:
            assert not docker_like(answer), (host, port, answer[:300])
    # Each endpoint address answers on its endpoint's port and nothing else of
    # meshlocal's. In host mode the addresses are the host's: whatever the host
    # runs on 0.0.0.0 answers there too, as on the gateway.
    others = _wildcard_listeners() if mesh.mode == "host" else set()
    for service, vip in vips.items():
        port = state["services"][service]["connect"]["port"]
        assert {p for p, _ in found[vip]} - others == {port}, (service, vip, found[vip])
    if mesh.mode == "container":
        # The data plane's own address: DNS, its admin API and the task metadata
        # endpoint. The public endpoint listens on the gateway-facing port too
        # (published on 127.0.0.1).
        offered = {p for p, _ in found[plane]}
        assert offered <= {53, ADMIN_PORT, 15080, METADATA_PORT}, offered
        assert {53, ADMIN_PORT, METADATA_PORT} <= offered


def _wildcard_listeners() -> set[int]:
    """TCP ports something on this host listens on at every address."""
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            address, _, port = fields[1].partition(":")
            if fields[3] == "0A" and set(address) == {"0"}:
                ports.add(int(port, 16))
    return ports


def test_the_admin_api_refuses_replicas(mesh: Mesh) -> None:
    address = mesh.state()["address"]
    script = textwrap.dedent(
        f"""
        import json, urllib.request, urllib.error
        out = {{}}
        for method, path in (("GET", "/v1/state"), ("GET", "/stats"), ("POST", "/v1/scale")):
            body = b'{{"service": "api", "count": 0}}' if method == "POST" else None
            url = "http://{address}:{ADMIN_PORT}" + path
            req = urllib.request.Request(url, method=method, data=body)
            try:
                urllib.request.urlopen(req, timeout=5)
                out[path] = 200
            except urllib.error.HTTPError as exc:
                out[path] = exc.code
            except OSError as exc:
                out[path] = "refused"
        print(json.dumps(out))
        """
    )
    code, out = mesh.in_replica(["python3", "-c", script], timeout=60)
    assert code == 0, out
    got = json.loads(out.strip().splitlines()[-1])
    if mesh.mode == "container":
        assert got == {"/v1/state": 403, "/stats": 403, "/v1/scale": 403}
    else:  # host mode: the admin API listens on the host's loopback only
        assert set(got.values()) == {"refused"}, got
    assert mesh.state()["services"]["api"]["desired"] == 2  # nothing changed


def _env(container: Any) -> dict[str, str]:
    return dict(e.split("=", 1) for e in container.attrs["Config"]["Env"])


def test_each_task_reads_its_own_metadata_and_no_other(mesh: Mesh) -> None:
    """ECS_CONTAINER_METADATA_URI_V4 in every container: its own task, its own address."""
    client, network = mesh.client, mesh.dep.network().name
    outsider = client.containers.get(mesh.container("outsider"))
    task_id = outsider.labels["meshlocal.task"]
    address = outsider.attrs["NetworkSettings"]["Networks"][network]["IPAddress"]
    (meta,) = client.containers.list(
        filters={"label": ["meshlocal.task=" + task_id, f"{L.ROLE}=sidecar"]}
    )
    code, out = sh(client, outsider.id, 'wget -qO- "$ECS_CONTAINER_METADATA_URI_V4/task"')
    assert code == 0, out
    task = json.loads(out)
    assert task["TaskARN"] == f"arn:aws:ecs:us-east-1:123456789012:task/sc-test-Cluster/{task_id}"
    assert (task["Family"], task["LaunchType"], task["KnownStatus"]) == (
        "sc-test-outsider",
        "FARGATE",
        "RUNNING",
    )
    containers = {c["Name"]: c for c in task["Containers"]}
    assert set(containers) == {"outsider", "meta"}
    assert containers["outsider"]["DockerId"] == outsider.id
    assert containers["meta"]["DockerId"] == meta.id
    for c in task["Containers"]:
        assert c["Networks"][0]["IPv4Addresses"] == [address]
        assert c["Labels"]["com.amazonaws.ecs.task-arn"] == task["TaskARN"]
    code, out = sh(client, outsider.id, 'wget -qO- "$ECS_CONTAINER_METADATA_URI_V4"')
    assert code == 0, out
    own = json.loads(out)
    assert (own["Name"], own["DockerId"], own["ImageID"]) == (
        "outsider",
        outsider.id,
        outsider.attrs["Image"],
    )
    code, out = sh(client, outsider.id, 'wget -qO- "$ECS_CONTAINER_METADATA_URI"')
    assert code == 0 and json.loads(out)["DockerId"] == outsider.id, out
    # The sidecar has its own URIs, answered from the task's (shared) address.
    assert {URI_V3, URI_V4} <= set(_env(meta))
    assert _env(meta)[URI_V4] != _env(outsider)[URI_V4]
    code, out = sh(client, meta.id, 'wget -qO- "$ECS_CONTAINER_METADATA_URI_V4"')
    assert code == 0 and json.loads(out)["Name"] == "meta", out
    # Another replica holding outsider's URI is refused; its own URI is its own.
    stolen = _env(outsider)[URI_V4]
    api = mesh.container("api")
    code, out = sh(client, api, f'wget -qO- "{stolen}/task"; wget -qO- "{stolen}"')
    assert code != 0 and "403" in out and task_id not in out, out
    code, out = sh(client, api, 'wget -qO- "$ECS_CONTAINER_METADATA_URI_V4/task"')
    assert code == 0 and json.loads(out)["Family"] == "sc-test-api", out


def _proc_status(pid: int) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        out[key] = value.strip()
    return out


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _listening_pids() -> set[int]:
    """Processes holding a listening TCP socket or any UDP socket, from /proc."""
    inodes: set[str] = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                inodes.add(fields[9])
    for table in ("udp", "udp6"):
        for line in Path(f"/proc/net/{table}").read_text().splitlines()[1:]:
            inodes.add(line.split()[9])
    pids: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if any(link.startswith("socket:[") and link[8:-1] in inodes for link in links):
            pids.add(int(entry.name))
    return pids


def test_the_data_plane_holds_no_engine_and_no_privilege(mesh: Mesh) -> None:
    if mesh.mode == "host":
        controller = mesh.dep.dataplane().pid
        assert controller is not None
        children = _children(controller)
        assert len(children) == 1, children
        child = children[0]
        status = _proc_status(child)
        assert status["Uid"].split() == ["65534"] * 4, status["Uid"]
        assert status["Gid"].split() == ["65534"] * 4, status["Gid"]
        assert int(status["CapEff"], 16) == 1 << 10  # CAP_NET_BIND_SERVICE only
        assert int(status["CapPrm"], 16) == 1 << 10
        assert int(status["CapBnd"], 16) == 1 << 10
        assert status["NoNewPrivs"] == "1"
        fds = [os.readlink(fd) for fd in Path(f"/proc/{child}/fd").iterdir()]
        assert not any("docker" in fd for fd in fds), fds
        # The controller listens on nothing: the data plane holds every socket.
        listening = _listening_pids()
        assert child in listening
        assert controller not in listening
        return
    plane = mesh.client.containers.get(L.dataplane_name(mesh.dep.project, "test"))
    attrs = plane.attrs
    host = attrs["HostConfig"]
    mounts = attrs["Mounts"]
    assert [m["Destination"] for m in mounts] == ["/run/meshlocal/link"], mounts
    assert not any("docker.sock" in (m.get("Source") or "") for m in mounts)
    assert attrs["Config"]["User"] == "65534:65534"
    assert host["CapDrop"] == ["ALL"] and not host["CapAdd"]
    assert host["ReadonlyRootfs"] is True
    assert "no-new-privileges" in (host["SecurityOpt"] or [])
    assert not host["Privileged"]
    status = plane.exec_run(["cat", "/proc/1/status"]).output.decode()
    caps = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert int(caps["CapEff"], 16) == 0 and int(caps["CapPrm"], 16) == 0
    assert caps["Uid"].split()[0] == "65534" and caps["NoNewPrivs"].strip() == "1"
    # A shell exec'd into it finds no engine: no socket file, and no engine on any port.
    probe = plane.exec_run(
        [
            "python3",
            "-c",
            "import os, socket\n"
            "print(os.path.exists('/var/run/docker.sock'), os.path.exists('/run/docker.sock'))\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect('/var/run/docker.sock'); print('connected')\n"
            "except OSError as e:\n    print('refused', e.errno)\n"
            "open('/tmp/w', 'w').write('x')\n"
            "try:\n    open('/etc/w', 'w')\n"
            "except OSError as e:\n    print('read-only', e.errno)\n",
        ]
    )
    said = probe.output.decode()
    assert probe.exit_code == 0, said
    assert said.splitlines() == ["False False", "refused 2", "read-only 30"], said
    # The controller: the engine's socket, and no network to be reached on.
    ctl = mesh.client.containers.get(L.controller_name(mesh.dep.project, "test"))
    assert ctl.attrs["HostConfig"]["NetworkMode"] == "none"
    assert not ctl.attrs["HostConfig"]["PortBindings"]
    assert any(m["Destination"] == "/var/run/docker.sock" for m in ctl.attrs["Mounts"])
    listening = ctl.exec_run(["cat", "/proc/net/tcp", "/proc/net/tcp6", "/proc/net/udp"])
    rows = [r.split() for r in listening.output.decode().splitlines() if ":" in r[:6]]
    assert not [r for r in rows if len(r) > 3 and r[3] == "0A"], rows


def test_a_data_plane_restarted_alone_is_fed_again_by_the_controller(mesh: Mesh) -> None:
    before = mesh.state()
    replicas = {r["container_id"] for s in before["services"].values() for r in s["replicas"]}
    if mesh.mode == "host":
        controller = mesh.dep.dataplane().pid
        assert controller is not None
        (child,) = _children(controller)
        os.kill(child, signal.SIGKILL)
        wait_for("a new data-plane child", lambda: _children(controller) not in ([], [child]), 30)
    else:
        plane = mesh.client.containers.get(L.dataplane_name(mesh.dep.project, "test"))
        started = plane.attrs["State"]["StartedAt"]
        plane.restart(timeout=1)
        plane.reload()
        assert plane.attrs["State"]["StartedAt"] != started
    started_at = time.monotonic()

    def serving() -> bool:
        try:
            state = mesh.state()
        except Exception:
            return False
        return bool(state.get("ready")) and bool(state.get("controller_connected"))

    wait_for("the data plane to serve again", serving, timeout=60, interval=0.2)
    took = time.monotonic() - started_at
    after = mesh.state()
    assert {r["container_id"] for s in after["services"].values() for r in s["replicas"]} == (
        replicas
    )
    # Names and endpoint addresses work again from inside a replica.
    outsider = mesh.container("outsider")
    assert nslookup(mesh.client, outsider, "api.test.sc.local")[0] == "NOERROR"
    vip = after["services"]["api"]["connect"]["vip"]
    fetch = (
        f"import urllib.request as u; print(u.urlopen('http://{vip}/', timeout=5).read().decode())"
    )
    code, out = mesh.in_replica(["python3", "-c", fetch], timeout=30)
    assert code == 0 and out.startswith("api "), out
    assert took < 30, took


def test_a_controller_restarted_alone_adopts_the_replicas_and_dns_never_stops(
    mesh: Mesh,
) -> None:
    if mesh.mode == "host":
        pytest.skip("host mode: the data plane is the controller's child; `up -d` restarts both")
    before = mesh.state()
    replicas = {r["container_id"] for s in before["services"].values() for r in s["replicas"]}
    ctl = mesh.client.containers.get(L.controller_name(mesh.dep.project, "test"))
    ctl.stop(timeout=5)
    # The controller is away: the data plane keeps answering from the last set.
    outsider = mesh.container("outsider")
    status, answers = nslookup(mesh.client, outsider, "api.test.sc.local")
    assert status == "NOERROR" and len(answers) == 2
    refused = mesh.cli("scale", "api=3")
    assert refused.returncode != 0 and "the controller is not running" in refused.stderr
    assert "Traceback" not in refused.stderr
    ctl.start()
    wait_for(
        "the controller to link again",
        lambda: mesh.state().get("controller_connected") and mesh.state().get("ready"),
        timeout=60,
        interval=0.2,
    )
    after = mesh.state()
    assert {r["container_id"] for s in after["services"].values() for r in s["replicas"]} == (
        replicas
    )
    ok(mesh.cli("scale", "api=3"))
    assert len(mesh.state()["services"]["api"]["replicas"]) == 3
    ok(mesh.cli("scale", "api=2"))
