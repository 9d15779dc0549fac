"""compose-examples/worker-client: a Worker Service that is a Service Connect client only."""

from __future__ import annotations

import itertools
import re

import pytest

from meshlocal.testing import Mesh

pytestmark = pytest.mark.docker
EXAMPLE = "worker-client"
# A worker line, e.g.
#   http://api/ -> 200 from api-2 via service-connect, tcp (dialled 172.23.255.1:80,
#   api-2 saw 172.23.0.2)   [one line]
LINE = re.compile(
    r"^http://api/ -> 200 from (?P<replica>api-\d+) via (?P<route>[\w-]+)(?:, (?P<mode>\w+))?"
    r" \(dialled (?P<dialled>\S+), api-\d+ saw (?P<peer>\S+)\)$"
)


def api_vip(mesh: Mesh) -> str:
    ep = mesh.state()["services"]["api"]["connect"]
    assert (ep["name"], ep["port"], ep["protocol"]) == ("api", 80, "tcp")
    return str(ep["vip"])


def test_worker_calls_api_through_service_connect_round_robin(example_mesh: Mesh) -> None:
    def calls() -> list[str]:
        logged = (line.strip() for line in example_mesh.logs("worker", tail=5000))
        return [line for line in logged if line.startswith("http://api/ ->")]

    # Only calls made from now on: the worker starts with api, and its first
    # calls may come before both api replicas are in rotation.
    before = len(calls())

    def next_calls() -> list[str] | None:
        lines = calls()[before : before + 6]
        return lines if len(lines) == 6 else None

    found = example_mesh.wait_until(next_calls, timeout=30, message="6 worker calls to http://api/")
    assert found is not None
    # The next 6 calls, one after another, all answered.
    matched = [LINE.match(line) for line in found]
    assert all(matched), found
    seen = [m.groupdict() for m in matched if m]
    assert {(s["route"], s["mode"]) for s in seen} == {("service-connect", "tcp")}, seen
    assert {s["dialled"] for s in seen} == {f"{api_vip(example_mesh)}:80"}, seen
    # One worker task, a new connection per call: strict per-connection round robin.
    replicas = [s["replica"] for s in seen]
    assert set(replicas) == {"api-1", "api-2"}, replicas
    assert all(a != b for a, b in itertools.pairwise(replicas)), replicas
    # TCP mode counts connections, not requests.
    stats = example_mesh.stats("api")
    assert stats.new_connections >= len(seen)
    assert stats.request_count == 0


def test_worker_resolves_api_to_its_endpoint_address(example_mesh: Mesh) -> None:
    got = example_mesh.resolve("api", from_="worker")
    assert got.rcode == "NOERROR"
    assert got.answers == (api_vip(example_mesh),)
    assert got.answers != (example_mesh.state()["address"],)
    assert got.meaning == "service connect endpoint api:80 of api, tcp"


def test_worker_is_neither_in_service_discovery_nor_an_endpoint(example_mesh: Mesh) -> None:
    assert example_mesh.resolve("worker.test.kudos.local", from_="api").rcode == "NXDOMAIN"
    # `worker` is a service's bare name but no Service Connect name: the mesh
    # answers NXDOMAIN itself and never forwards it upstream.
    worker_name = example_mesh.resolve("worker", from_="api")
    assert (worker_name.rcode, worker_name.answers) == ("NXDOMAIN", ())
    worker = example_mesh.state()["services"]["worker"]
    assert worker["discovery_name"] is None
    assert worker["connect_endpoints"] == []
    assert worker["connect"] is None
