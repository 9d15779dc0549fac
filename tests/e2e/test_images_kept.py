"""`down` keeps the service images, as compose does, so the next `up` builds nothing.

`down --rmi` removes them; `--keep-images`, the old way to keep them, still
parses and changes nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from .conftest import ok, project_of, run_cli

pytestmark = pytest.mark.docker


def _image_id(client: Any, tag: str) -> str | None:
    rows = client.api.images(name=tag)
    return str(rows[0]["Id"]) if rows else None


@pytest.mark.ws("rebuild")
def test_down_keeps_images_and_up_builds_nothing_until_down_rmi(
    workspace: Path, docker_client: Any
) -> None:
    tag = f"meshlocal/{project_of(workspace)}-app:test"
    first = ok(run_cli(workspace, "up", "-d", "--timeout", "60")).stderr
    assert f"building {tag}" in first, first
    built = _image_id(docker_client, tag)
    assert built is not None

    down = ok(run_cli(workspace, "down")).stderr
    assert "Removed container" in down and "Removed image" not in down, down
    assert _image_id(docker_client, tag) == built

    again = ok(run_cli(workspace, "up", "-d", "--timeout", "60")).stderr
    assert f"{tag} is up to date" in again, again
    assert "building" not in again and "Step 1/" not in again, again
    assert _image_id(docker_client, tag) == built

    # The old flag: accepted, hidden, the default.
    kept = ok(run_cli(workspace, "down", "--keep-images")).stderr
    assert "Removed container" in kept and "Removed image" not in kept, kept
    assert _image_id(docker_client, tag) == built
    assert "--keep-images" not in ok(run_cli(workspace, "down", "--help")).stdout

    ok(run_cli(workspace, "up", "-d", "--timeout", "60"))
    rmi = ok(run_cli(workspace, "down", "--rmi")).stderr
    assert f"Removed image {tag}" in rmi, rmi
    assert _image_id(docker_client, tag) is None


@pytest.mark.ws("rebuild")
def test_down_rmi_takes_compose_values(
    workspace: Path, docker_client: Any, busybox_image: str
) -> None:
    tag = f"meshlocal/{project_of(workspace)}-app:test"
    ok(run_cli(workspace, "up", "-d", "--timeout", "60"))
    bad = run_cli(workspace, "down", "--rmi", "some")
    assert bad.returncode == 2 and "'some' is not one of 'local', 'all'" in bad.stderr, bad.stderr
    assert _image_id(docker_client, tag) is not None  # refused before removing anything
    # `all`: the build (by tag) and images run by name; the shared busybox cache stays.
    out = ok(run_cli(workspace, "down", "--rmi", "all")).stderr
    assert f"Removed image {tag}" in out, out
    assert _image_id(docker_client, tag) is None
    assert docker_client.api.images(name=busybox_image)
