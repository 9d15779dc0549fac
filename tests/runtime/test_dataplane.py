"""The data-plane container: built from the installed meshlocal, talks to the engine."""

from __future__ import annotations

import json
import socket
import urllib.request
from dataclasses import replace

import pytest

from meshlocal.errors import DataPlaneError
from meshlocal.runtime import labels as L
from meshlocal.runtime.dataplane import dataplane_spec, ensure_dataplane, wait_for_log
from meshlocal.runtime.engine import Engine

pytestmark = pytest.mark.docker

# Runs inside the data plane: reach the engine through the mounted socket, find
# our own network's containers by label, then serve HTTP on 8080.
AGENT = """
import http.server, json, os, docker
client = docker.from_env()
label = "meshlocal.project=" + os.environ["MESHLOCAL_PROJECT"]
mine = client.containers.list(filters={"label": label})
body = json.dumps({"ping": client.ping(), "names": sorted(c.name for c in mine),
                   "network": os.environ["MESHLOCAL_NETWORK"]}).encode()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
server = http.server.HTTPServer(("0.0.0.0", 8080), H)
print("agent ready", flush=True)
server.serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_dataplane_reaches_the_engine_and_publishes_on_localhost(
    engine: Engine, project: str, dataplane_image: str
) -> None:
    net = engine.ensure_network(project, "test")
    port = _free_port()
    spec = dataplane_spec(
        engine,
        project=project,
        env="test",
        image=dataplane_image,
        network=net,
        publish={8080: ("127.0.0.1", port)},
    )
    assert spec.labels[L.ROLE] == "dataplane" and spec.binds[0].endswith(":/var/run/docker.sock")
    spec = replace(spec, entrypoint=("python3", "-c", AGENT), command=())
    cid, address, started = ensure_dataplane(engine, spec)
    assert started and address
    wait_for_log(engine, cid, "agent ready", timeout=30)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
        seen = json.loads(resp.read())
    assert seen == {"ping": True, "names": [L.dataplane_name(project, "test")], "network": net.name}

    # Unchanged: kept, same address (so replicas' DNS setting stays valid).
    assert ensure_dataplane(engine, spec) == (cid, address, False)
    # Changed: replaced.
    changed = replace(spec, labels={**spec.labels, L.CONFIG_HASH: "other"})
    new_id, _, started = ensure_dataplane(engine, changed)
    assert started and new_id != cid and engine.inspect(cid) is None


def test_wait_for_log_gives_up_on_a_silent_container(
    engine: Engine, project: str, busybox_image: str, dataplane_image: str
) -> None:
    net = engine.ensure_network(project, "test")
    spec = dataplane_spec(engine, project=project, env="test", image=busybox_image, network=net)
    spec = replace(spec, entrypoint=("sh", "-c", "echo starting; sleep 300"), command=())
    cid, _, _ = ensure_dataplane(engine, spec)
    with pytest.raises(DataPlaneError) as info:
        wait_for_log(engine, cid, "never printed", timeout=1.5)
    assert info.value.hint is not None and "starting" in info.value.hint
