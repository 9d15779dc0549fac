"""compose-examples/custom-alias: front-end reached as http://frontend.local:8080."""

from __future__ import annotations

import json

import pytest

from meshlocal.testing import Mesh

from .conftest import calls

pytestmark = pytest.mark.docker
EXAMPLE = "custom-alias"


def test_alias_goes_through_the_proxy_to_every_front_end_replica(example_mesh: Mesh) -> None:
    got = calls(example_mesh, "front-end", "n=6&url=http://frontend.local:8080/")
    assert {c["route"] for c in got} == {"service-connect"}
    assert {c["replica"] for c in got} == {"front-end-1", "front-end-2"}
    assert {tuple(c["resolved"]) for c in got} == {(example_mesh.state()["address"],)}


def test_another_client_resolves_the_alias_to_the_proxy(example_mesh: Mesh) -> None:
    got = example_mesh.resolve("frontend.local", from_="api")
    assert got.rcode == "NOERROR"
    assert got.answers == (example_mesh.state()["address"],)


def test_api_calls_front_end_by_its_alias_from_inside(example_mesh: Mesh) -> None:
    # api is not published: call its /call from inside its own replica.
    script = (
        "import json, urllib.request;"
        "print(urllib.request.urlopen('http://localhost:80/call?n=2', timeout=10).read().decode())"
    )
    result = example_mesh.exec("api", ["python3", "-c", script])
    assert result.ok, result.output
    body = json.loads(result.output)
    assert [c["url"] for c in body["calls"]] == ["http://frontend.local:8080/"] * 2
    assert all(c["ok"] and c["route"] == "service-connect" for c in body["calls"]), body


def test_plan_lists_the_alias_on_the_target_port(example_mesh: Mesh) -> None:
    endpoints = example_mesh.state()["services"]["front-end"]["connect_endpoints"]
    assert "http://frontend.local:8080" in endpoints
