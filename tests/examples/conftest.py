"""Fixtures for the tests that run compose-examples/ against the real engine.

Each example gets its own mesh (its own project id, so runs in parallel and
the lead's own `meshlocal up` on the same folder never collide), and `down`
always runs, pass or fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlocal.testing import Mesh

EXAMPLES = Path(__file__).resolve().parents[2] / "compose-examples"


@pytest.fixture(scope="module")
def example_mesh(request: pytest.FixtureRequest, docker_client: Any) -> Iterator[Mesh]:
    """The mesh of the example named by the module's EXAMPLE, up for the whole module."""
    name = request.module.EXAMPLE
    with Mesh(EXAMPLES / name, env="test", timeout=240) as mesh:
        yield mesh


def calls(mesh: Mesh, service: str, query: str, timeout: float = 30.0) -> list[dict[str, Any]]:
    """GET /call?<query> on a public endpoint, until every call answers (a replica's
    server may still be starting right after `up`); returns the calls."""

    def attempt() -> list[dict[str, Any]] | None:
        response = mesh.get(service, f"/call?{query}", timeout=15)
        assert response.status == 200, response.text
        got: list[dict[str, Any]] = response.json()["calls"]
        return got if all(c.get("ok") for c in got) else None

    found = mesh.wait_until(attempt, timeout=timeout, message=f"/call?{query} to succeed")
    assert found is not None
    return found
