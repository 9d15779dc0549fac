"""`meshlocal ls` and `down --project`: meshes whose workspace folder is gone."""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import ContainerSpec, Engine

from .conftest import ok, run_cli

pytestmark = pytest.mark.docker


def test_ls_lists_and_down_project_removes_a_mesh_without_its_workspace(
    docker_client: Any, busybox_image: str, tmp_path: Path
) -> None:
    engine = Engine(docker_client)
    project = f"orphan-{uuid.uuid4().hex[:8]}"
    gone = tmp_path / "deleted-workspace"
    network = engine.ensure_network(project, "test", gone)
    engine.run_container(
        ContainerSpec(
            name=L.container_name(project, "test", "api", 1),
            image=busybox_image,
            labels={
                **L.base_labels(project, "test", L.Role.REPLICA, gone),
                L.SERVICE: "api",
                L.REPLICA: "1",
            },
            command=["sleep", "300"],
            network=network.name,
        )
    )
    try:
        listed = json.loads(ok(run_cli(tmp_path, "ls", "--json")).stdout)
        row = next(r for r in listed if r["project"] == project)
        assert (row["env"], row["running"], row["workspace"]) == ("test", 1, str(gone))
        # The workspace folder never existed: `down` can't find it, `--project` can.
        shutil.rmtree(gone, ignore_errors=True)
        ok(run_cli(tmp_path, "down", "--project", project))
        assert engine.list_containers(project) == []
        assert docker_client.networks.list(filters={"label": f"{L.PROJECT}={project}"}) == []
        listed = json.loads(ok(run_cli(tmp_path, "ls", "--json")).stdout)
        assert all(r["project"] != project for r in listed)
    finally:
        engine.remove_all(project)
