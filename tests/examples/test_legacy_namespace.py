"""compose-examples/legacy-namespace: a pre-v1.9 environment, api.kudos.local."""

from __future__ import annotations

import pytest

from meshlocal.testing import Mesh

from .conftest import calls

pytestmark = pytest.mark.docker
EXAMPLE = "legacy-namespace"


def test_front_end_calls_api_kudos_local_directly(example_mesh: Mesh) -> None:
    got = calls(example_mesh, "front-end", "n=4")
    # The app builds the URL from COPILOT_SERVICE_DISCOVERY_ENDPOINT, so this
    # also proves the variable is kudos.local in a legacy environment.
    assert {c["url"] for c in got} == {"http://api.kudos.local/"}
    assert {c["route"] for c in got} == {"direct"}
    addresses = {r.address for r in example_mesh.replicas("api")}
    assert {a for c in got for a in c["resolved"]} == addresses
    # Straight to a replica: front-end dialled a replica's own address, and the
    # replica saw front-end itself as its peer (no proxy in between).
    assert {c["dialled"] for c in got} <= {f"{a}:80" for a in addresses}
    assert all(c["peer"] == c["source"] and c["mode"] is None for c in got), got


def test_legacy_name_resolves_and_the_env_name_does_not(example_mesh: Mesh) -> None:
    legacy = example_mesh.resolve("api.kudos.local", from_="front-end")
    assert legacy.rcode == "NOERROR"
    assert set(legacy.answers) == {r.address for r in example_mesh.replicas("api")}
    assert example_mesh.resolve("api.test.kudos.local", from_="front-end").rcode == "NXDOMAIN"
