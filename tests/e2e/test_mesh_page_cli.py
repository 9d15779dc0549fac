"""The mesh page of a real mesh, from the CLI's side: `up` and `ps` print its
URL, `open` prints it where no browser can start, the page and its document
answer, traffic between replicas is an edge, and a replica's logs come
without the secret it printed. (The browser tests are the kudos example's.)
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from meshlocal.runtime import labels as L

from .conftest import cli_env, detached_mesh, ok, run_cli

SECRET = "page-secret-7f3a9c51"


@dataclass
class Up:
    workspace: Path
    project: str
    stdout: str


@pytest.fixture(scope="module")
def up(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> Iterator[Up]:
    with detached_mesh(tmp_path_factory, docker_client, "page") as (ws, project, proc):
        yield Up(ws, project, proc.stdout)


def fetch(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            body = resp.read()
            kind = resp.headers.get_content_type()
            return resp.status, json.loads(body) if kind == "application/json" else body.decode()
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_up_ps_and_open_give_the_page_and_it_answers(up: Up) -> None:
    printed = re.search(r"Mesh page: (http://127\.0\.0\.1:\d+/)", up.stdout)
    assert printed, up.stdout
    url = printed.group(1)
    assert f"Mesh page: {url}" in ok(run_cli(up.workspace, "ps")).stdout
    assert json.loads(ok(run_cli(up.workspace, "open", "--json")).stdout) == {"url": url}
    # No display here (as over ssh): it prints the URL instead of opening nothing.
    env = cli_env()
    for name in ("DISPLAY", "WAYLAND_DISPLAY", "BROWSER"):
        env.pop(name, None)
    opened = ok(run_cli(up.workspace, "open", env=env))
    assert opened.stdout.strip() == url and "no browser" in opened.stderr
    status, page = fetch(url)
    assert status == 200 and "ui/app.js" in page


def test_service_connect_traffic_is_an_edge_counted_in_connections(up: Up) -> None:
    url = json.loads(ok(run_cli(up.workspace, "open", "--json")).stdout)["url"]
    edge: dict[str, Any] = {}
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        _, doc = fetch(url + "v1/topology")
        found = [e for e in doc["edges"] if (e["from"], e["to"]) == ("client", "api")]
        if found and found[0]["count"] >= 3:
            edge = found[0]
            break
        time.sleep(0.5)
    assert edge, doc["edges"]
    assert (edge["unit"], edge["protocol"]) == ("connections", "tcp")
    # Calls made before api was in rotation were reset (errors); the rest got through.
    assert edge["count"] > edge["errors"]
    assert edge["rate"] > 0 and edge["p50_ms"] is not None
    assert {s["name"] for s in doc["services"]} == {"api", "client"}
    assert SECRET not in json.dumps(doc)


def test_logs_come_without_the_secret_and_only_for_this_mesh(up: Up, docker_client: Any) -> None:
    url = json.loads(ok(run_cli(up.workspace, "open", "--json")).stdout)["url"]
    _, doc = fetch(url + "v1/topology")
    api = next(s for s in doc["services"] if s["name"] == "api")
    for replica in api["replicas"]:
        raw = docker_client.containers.get(replica["container_id"]).logs().decode()
        assert SECRET in raw  # the app did print it
        status, body = fetch(url + f"v1/logs/{replica['container_id']}?tail=20")
        assert status == 200, body
        text = "\n".join(body["lines"])
        assert "token is ********" in text and SECRET not in text
    plane = docker_client.containers.get(L.dataplane_name(up.project, "test"))
    status, body = fetch(url + f"v1/logs/{plane.id}")
    assert status == 404 and "no replica of this mesh" in body["error"]
