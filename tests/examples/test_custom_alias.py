"""compose-examples/custom-alias: front-end reached as http://frontend.local:8080."""

from __future__ import annotations

import itertools
import json
from collections import Counter
from typing import Any

import pytest

from meshlocal.testing import Mesh

from .conftest import calls

pytestmark = pytest.mark.docker
EXAMPLE = "custom-alias"


def endpoint(mesh: Mesh) -> dict[str, Any]:
    """front-end's one Service Connect endpoint: {name, port, url, vip, protocol}."""
    found: dict[str, Any] = mesh.state()["services"]["front-end"]["connect"]
    return found


def test_the_alias_is_front_ends_one_endpoint_in_tcp_mode(example_mesh: Mesh) -> None:
    ep = endpoint(example_mesh)
    assert (ep["name"], ep["port"], ep["protocol"]) == ("frontend.local", 8080, "tcp")
    assert ep["vip"] != example_mesh.state()["address"]
    assert example_mesh.state()["services"]["front-end"]["connect_endpoints"] == [
        "http://frontend.local:8080"
    ]


def test_alias_goes_through_service_connect_to_every_front_end_replica(
    example_mesh: Mesh,
) -> None:
    vip = endpoint(example_mesh)["vip"]
    got = calls(example_mesh, "front-end", "n=6&url=http://frontend.local:8080/")
    assert {tuple(c["resolved"]) for c in got} == {(vip,)}
    assert {c["dialled"] for c in got} == {f"{vip}:8080"}
    assert {(c["route"], c["mode"]) for c in got} == {("service-connect", "tcp")}
    assert all(c["proxy_replica_header"] is None for c in got)
    # One calling replica, a new connection per call: strict round robin.
    replicas = [c["replica"] for c in got]
    assert Counter(replicas) == {"front-end-1": 3, "front-end-2": 3}, replicas
    assert all(a != b for a, b in itertools.pairwise(replicas)), replicas


def test_another_client_resolves_the_alias_to_the_endpoint_address(example_mesh: Mesh) -> None:
    got = example_mesh.resolve("frontend.local", from_="api")
    assert got.rcode == "NOERROR"
    assert got.answers == (endpoint(example_mesh)["vip"],)
    assert got.meaning == "service connect endpoint frontend.local:8080 of front-end, tcp"


def test_the_bare_name_is_no_endpoint(example_mesh: Mesh) -> None:
    # With an alias, `front-end` is no Service Connect name, for any client.
    for client in ("api", "front-end"):
        got = example_mesh.resolve("front-end", from_=client)
        assert (got.rcode, got.answers) == ("NXDOMAIN", ()), (client, got)
    # So a client calling it by that name can't resolve it. (Usually EAI_NONAME,
    # [Errno -2]; a search domain whose upstream is unreachable can make it
    # EAI_AGAIN, so only the kind of error is asserted.)
    response = example_mesh.get("front-end", "/call?url=http://front-end:8080/")
    assert response.status == 200
    (call,) = response.json()["calls"]
    assert call["ok"] is False
    assert call["status"] is None
    assert call["error"].startswith("gaierror: "), call


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
    assert all(
        c["ok"] and (c["route"], c["mode"]) == ("service-connect", "tcp") for c in body["calls"]
    ), body
    assert sorted(c["replica"] for c in body["calls"]) == ["front-end-1", "front-end-2"]
