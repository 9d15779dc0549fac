"""Container mode's two containers: the data plane faces replicas, the controller the engine."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from dataclasses import replace

import pytest

from meshlocal.errors import DataPlaneError
from meshlocal.runtime import labels as L
from meshlocal.runtime.dataplane import (
    controller_spec,
    dataplane_spec,
    ensure_controller,
    ensure_dataplane,
    wait_for_log,
    with_identity,
)
from meshlocal.runtime.engine import Engine

pytestmark = pytest.mark.docker

# Runs as the data plane: what can it do? Then serve the answer on 8080.
SERVING = """
import http.server, json, os, socket
def engine():
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect("/var/run/docker.sock")
        return "reached"
    except OSError as exc:
        return exc.strerror
def write(path):
    try:
        open(path, "w").write("x")
        return True
    except OSError:
        return False
body = json.dumps({"uid": os.geteuid(), "engine": engine(), "root_writable": write("/x"),
                   "tmp_writable": write("/tmp/x"),
                   "link_writable": write("/run/meshlocal/link/x")}).encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
server = http.server.HTTPServer(("0.0.0.0", 8080), H)
print("serving ready", flush=True)
server.serve_forever()
"""

# Runs as the controller: reach the engine, find our containers, say what network it has.
CONTROLLING = """
import json, os, socket, docker
client = docker.from_env()
label = "meshlocal.project=" + os.environ["MESHLOCAL_PROJECT"]
mine = client.containers.list(filters={"label": label})
print("controller " + json.dumps({"ping": client.ping(), "names": sorted(c.name for c in mine),
      "interfaces": sorted(name for _, name in socket.if_nameindex())}), flush=True)
import time; time.sleep(300)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_the_data_plane_publishes_on_localhost_and_holds_nothing(
    engine: Engine, project: str, dataplane_image: str
) -> None:
    net = engine.ensure_network(project, "test")
    engine.ensure_volume(
        L.link_volume_name(project, "test"), L.base_labels(project, "test", L.Role.DATAPLANE)
    )
    port = _free_port()
    spec = dataplane_spec(
        project=project,
        env="test",
        image=dataplane_image,
        network=net,
        publish={8080: ("127.0.0.1", port)},
    )
    assert spec.labels[L.ROLE] == "dataplane"
    assert not any("docker.sock" in b for b in spec.binds)
    spec = replace(spec, entrypoint=("python3", "-c", SERVING), command=())
    cid, address, started = ensure_dataplane(engine, spec)
    assert started and address
    wait_for_log(engine, cid, "serving ready", timeout=30)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        seen = json.loads(resp.read())
    assert seen == {
        "uid": 65534,
        "engine": "No such file or directory",
        "root_writable": False,
        "tmp_writable": True,
        "link_writable": True,  # the link volume took the image directory's owner
    }

    # Unchanged: kept, same address (so replicas' DNS setting stays valid).
    assert ensure_dataplane(engine, spec) == (cid, address, False)
    # Changed: replaced.
    changed = replace(spec, labels={**spec.labels, L.CONFIG_HASH: "other"})
    new_id, _, started = ensure_dataplane(engine, changed)
    assert started and new_id != cid and engine.inspect(cid) is None


def test_the_controller_reaches_the_engine_and_no_network(
    engine: Engine, project: str, dataplane_image: str
) -> None:
    engine.ensure_volume(
        L.link_volume_name(project, "test"), L.base_labels(project, "test", L.Role.DATAPLANE)
    )
    spec = controller_spec(
        engine, project=project, env="test", image=dataplane_image, environment={}
    )
    assert spec.labels[L.ROLE] == "controller" and spec.network_mode == "none"
    assert spec.binds[0].endswith(":/var/run/docker.sock") and not spec.ports
    spec = with_identity(replace(spec, entrypoint=("python3", "-c", CONTROLLING), command=()), "a")
    cid, started = ensure_controller(engine, spec)
    assert started
    wait_for_log(engine, cid, "controller ", timeout=30)
    line = next(x for x in engine.logs(cid, "all") if x.startswith("controller "))
    seen = json.loads(line.removeprefix("controller "))
    assert seen == {
        "ping": True,
        "names": [L.controller_name(project, "test")],
        "interfaces": ["lo"],
    }
    # Same identity: kept; another one (a new data plane): replaced.
    assert ensure_controller(engine, spec) == (cid, False)
    other, started = ensure_controller(engine, with_identity(spec, "b"))
    assert started and other != cid
    deadline = time.monotonic() + 10
    while engine.inspect(cid) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert engine.inspect(cid) is None


def test_wait_for_log_gives_up_on_a_silent_container(
    engine: Engine, project: str, busybox_image: str, dataplane_image: str
) -> None:
    net = engine.ensure_network(project, "test")
    spec = dataplane_spec(project=project, env="test", image=busybox_image, network=net)
    spec = replace(
        spec,
        entrypoint=("sh", "-c", "echo starting; sleep 300"),
        command=(),
        binds=(),
        read_only=False,
        sysctls={},
    )
    cid, _, _ = ensure_dataplane(engine, spec)
    with pytest.raises(DataPlaneError) as info:
        wait_for_log(engine, cid, "never printed", timeout=1.5)
    assert info.value.hint is not None and "starting" in info.value.hint
