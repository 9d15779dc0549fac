"""compose-examples/port-8080: api on 8080 is reached as http://api:8080."""

from __future__ import annotations

import pytest

from meshlocal.testing import Mesh

from .conftest import calls

pytestmark = pytest.mark.docker
EXAMPLE = "port-8080"


def test_front_end_reaches_api_on_8080_round_robin(example_mesh: Mesh) -> None:
    got = calls(example_mesh, "front-end", "n=4")
    assert {c["url"] for c in got} == {"http://api:8080/"}
    assert {c["route"] for c in got} == {"service-connect"}
    assert [c["replica"] for c in got].count("api-1") == 2
    assert [c["replica"] for c in got].count("api-2") == 2


def test_the_port_is_part_of_the_endpoint(example_mesh: Mesh) -> None:
    # Port 80 is front-end's endpoint port: the proxy answers there, but
    # api has no endpoint on it, and the 404 names the one that exists.
    response = example_mesh.get("front-end", "/call?url=http://api/")
    assert response.status == 200
    (call,) = response.json()["calls"]
    assert call["status"] == 404
    assert "http://api:8080" in call["error"]


def test_service_discovery_name_carries_the_port_in_srv(example_mesh: Mesh) -> None:
    got = example_mesh.resolve("api.test.kudos.local", from_="front-end", qtype="SRV")
    assert got.rcode == "NOERROR"
    assert len(got.answers) == 2
    assert all(answer.split()[2] == "8080" for answer in got.answers), got.answers
