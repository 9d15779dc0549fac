"""A one-file change is patched onto the last image, and the result is what a build makes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import ok, project_of, run_cli

pytestmark = pytest.mark.docker

# Every path the Dockerfile writes, with mode, owner, size and content digest.
TREE = (
    "for f in $(find /www /usr/local/bin /seed.txt | sort); do "
    'stat -c "%n %a %u %g %F" "$f"; if [ -f "$f" ]; then md5sum "$f"; fi; done'
)


def _tree(client: Any, image: str) -> str:
    out = client.containers.run(image, entrypoint=["/bin/sh", "-c", TREE], remove=True)
    return str(out.decode())


def _image(client: Any, tag: str) -> str:
    return str(client.api.inspect_image(tag)["Id"])


def _served(client: Any, workspace: Path) -> set[str]:
    state = json.loads(ok(run_cli(workspace, "ps", "--json")).stdout)
    pages = set()
    for replica in state["services"]["site"]["replicas"]:
        found = client.containers.get(replica["container_id"]).exec_run(
            ["wget", "-qO-", "http://127.0.0.1:8080/index.html"]
        )
        pages.add(found.output.decode().strip())
    return pages


@pytest.mark.ws("patch")
def test_a_patched_image_is_the_image_a_build_makes(workspace: Path, docker_client: Any) -> None:
    tag = f"meshlocal/{project_of(workspace)}-site:test"
    site = workspace / "site"
    first = ok(run_cli(workspace, "up", "-d", "--timeout", "90")).stderr
    assert f"building {tag}" in first, first
    built = _image(docker_client, tag)

    (site / "index.html").write_text("v2\n")
    (site / "sub" / "b.txt").write_text("b\n")
    (site / "tool.sh").write_text("#!/bin/sh\necho tool 2\n")
    second = ok(run_cli(workspace, "up", "-d", "--timeout", "90")).stderr
    assert "patched" in second and f"building {tag}" not in second, second
    patched = _image(docker_client, tag)
    assert patched != built
    assert _served(docker_client, workspace) == {"v2"}  # rolled onto the patched image
    patched_tree = _tree(docker_client, patched)
    assert "/www/sub 750 1000 1000" in patched_tree  # the RUN's directory, kept as it was
    assert "/www/sub/b.txt 644 1000 1000" in patched_tree  # COPY --chown
    assert "/usr/local/bin/tool.sh 755 0 0" in patched_tree

    # The same context built for real: every file, mode and owner the same.
    forced = ok(run_cli(workspace, "up", "-d", "--build", "--timeout", "90")).stderr
    assert f"building {tag}" in forced, forced
    assert _tree(docker_client, _image(docker_client, tag)) == patched_tree


@pytest.mark.ws("patch")
def test_what_a_patch_cannot_reproduce_is_built(workspace: Path, docker_client: Any) -> None:
    tag = f"meshlocal/{project_of(workspace)}-site:test"
    site = workspace / "site"
    ok(run_cli(workspace, "up", "-d", "--timeout", "90"))
    image = _image(docker_client, tag)

    # Ignored by .dockerignore, or copied by no step: the image stays, nothing rolls.
    (site / "index.html.swp").write_text("x")
    assert f"{tag} is up to date" in ok(run_cli(workspace, "up", "-d")).stderr
    (site / "NOTES.md").write_text("notes")
    kept = ok(run_cli(workspace, "up", "-d")).stderr
    assert "not copied into it" in kept, kept
    assert _image(docker_client, tag) == image

    # Read before the RUN: only a build can say what the RUN makes of it.
    (site / "seed.txt").write_text("seed 2\n")
    seeded = ok(run_cli(workspace, "up", "-d", "--timeout", "90")).stderr
    assert f"building {tag}" in seeded and "patched" not in seeded, seeded

    # A file that vanished: a build, which then serves without it. (sub/ keeps a
    # file: Docker 20.10 on fuse-overlayfs at times fails to commit a COPY of an
    # empty directory, "failed to get layer ...", with or without its cache.)
    (site / "sub" / "a.txt").unlink()
    gone = ok(run_cli(workspace, "up", "-d", "--timeout", "90")).stderr
    assert f"building {tag}" in gone, gone
    assert "/www/sub/a.txt" not in _tree(docker_client, _image(docker_client, tag))
