"""compose-examples/port-8080: api on 8080 is reached as http://api:8080."""

from __future__ import annotations

import pytest

from meshlocal.testing import Mesh

from .conftest import calls

pytestmark = pytest.mark.docker
EXAMPLE = "port-8080"


def api_vip(mesh: Mesh) -> str:
    ep = mesh.state()["services"]["api"]["connect"]
    assert (ep["name"], ep["port"], ep["protocol"]) == ("api", 8080, "tcp")
    return str(ep["vip"])


def test_api_resolves_to_its_endpoint_address(example_mesh: Mesh) -> None:
    got = example_mesh.resolve("api", from_="front-end")
    assert got.rcode == "NOERROR"
    assert got.answers == (api_vip(example_mesh),)
    assert got.answers != (example_mesh.state()["address"],)
    assert got.meaning == "service connect endpoint api:8080 of api, tcp"


def test_front_end_reaches_api_on_8080_round_robin(example_mesh: Mesh) -> None:
    vip = api_vip(example_mesh)
    got = calls(example_mesh, "front-end", "n=4")
    assert {c["url"] for c in got} == {"http://api:8080/"}
    assert {c["dialled"] for c in got} == {f"{vip}:8080"}
    assert {(c["route"], c["mode"]) for c in got} == {("service-connect", "tcp")}
    assert all(c["proxy_replica_header"] is None for c in got)
    # A new connection per call from front-end's one replica: 2 each, alternating.
    replicas = [c["replica"] for c in got]
    assert replicas in (["api-1", "api-2"] * 2, ["api-2", "api-1"] * 2), replicas


def test_the_port_is_part_of_the_endpoint(example_mesh: Mesh) -> None:
    # api's endpoint is api:8080. Its address on port 80 has no listener, so
    # the connection is refused, as on ECS: nothing answers to list endpoints.
    vip = api_vip(example_mesh)
    response = example_mesh.get("front-end", "/call?url=http://api:80/")
    assert response.status == 200
    (call,) = response.json()["calls"]
    assert call["resolved"] == [vip]
    assert call["ok"] is False
    assert call["status"] is None
    assert call["error"].startswith("ConnectionRefusedError"), call


def test_service_discovery_name_carries_the_port_in_srv(example_mesh: Mesh) -> None:
    got = example_mesh.resolve("api.test.kudos.local", from_="front-end", qtype="SRV")
    assert got.rcode == "NOERROR"
    assert len(got.answers) == 2
    assert all(answer.split()[2] == "8080" for answer in got.answers), got.answers
