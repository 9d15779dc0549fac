"""compose-examples/worker-client: a Worker Service that is a Service Connect client only."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from meshlocal.testing import Mesh

pytestmark = pytest.mark.docker
EXAMPLE = "worker-client"
LINE = re.compile(r"^http://api/ -> 200 from (api-\d+) via (\S+)$")


def test_worker_calls_api_through_the_proxy_round_robin(example_mesh: Mesh) -> None:
    def answered() -> Counter[tuple[str, str]] | None:
        seen = Counter(
            (m.group(1), m.group(2))
            for line in example_mesh.logs("worker", tail=200)
            if (m := LINE.match(line.strip()))
        )
        return seen if sum(seen.values()) >= 4 else None

    found = example_mesh.wait_until(answered, timeout=30, message="4 worker calls to http://api/")
    assert found is not None
    seen = found
    assert {route for _, route in seen} == {"service-connect"}, seen
    assert {replica for replica, _ in seen} == {"api-1", "api-2"}, seen
    assert example_mesh.stats("api").request_count >= sum(seen.values())


def test_worker_resolves_api_to_the_proxy(example_mesh: Mesh) -> None:
    got = example_mesh.resolve("api", from_="worker")
    assert got.rcode == "NOERROR"
    assert got.answers == (example_mesh.state()["address"],)


def test_worker_is_neither_in_service_discovery_nor_an_endpoint(example_mesh: Mesh) -> None:
    assert example_mesh.resolve("worker.test.kudos.local", from_="api").rcode == "NXDOMAIN"
    # `worker` is no mesh name at all: it gets what any name outside the mesh
    # gets from upstream (NXDOMAIN, or REFUSED offline), never an address.
    worker_name = example_mesh.resolve("worker", from_="api")
    outside = example_mesh.resolve("no-such-service-xyz", from_="api")
    assert worker_name.answers == ()
    assert worker_name.rcode != "NOERROR"
    assert worker_name.rcode == outside.rcode
    worker = example_mesh.state()["services"]["worker"]
    assert worker["discovery_name"] is None
    assert worker["connect_endpoints"] == []
