"""The Mesh handle on a live mesh of the tiny workspace, without the fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from meshlocal.errors import MeshlocalError
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import Engine
from meshlocal.testing import (
    Mesh,
    MeshError,
    Mode,
    WaitTimeout,
    _pid_alive,
    reap_stale,
    session_suffix,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]


def test_handle_end_to_end(tiny: Path, leftovers: Callable[[str], list[str]]) -> None:
    """One mesh, every call of the handle; nothing is left afterwards."""
    with Mesh(tiny, "test") as mesh:
        project = mesh.project
        assert project.startswith(mesh.deployment.base_project + "-t-")
        assert mesh.running

        # The public endpoint of the Load Balanced Web Service, from the host.
        url = mesh.url("web")
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        page = mesh.get("web")
        assert page.status == 200
        assert page.text.strip() == L.hostname_for(L.container_name(project, "test", "web", 1))
        assert mesh.get("web", "/nope").status == 404
        assert page.headers["x-meshlocal-route"] == "public-endpoint"
        with pytest.raises(MeshError, match="no public endpoint"):
            mesh.url("api")

        # Replicas, exec, and Service Connect from inside a replica.
        api = mesh.replicas("api")
        assert [r.index for r in api] == [1, 2]
        assert all(r.in_rotation and r.port == 80 for r in api)
        first = mesh.exec("web", "wget -q -O - http://api/")
        assert first.ok, first.output
        second = mesh.exec("web", ["sh", "-c", "wget -q -O - http://api/"])
        assert {first.output.strip(), second.output.strip()} == {
            L.hostname_for(L.container_name(project, "test", "api", i)) for i in (1, 2)
        }
        failed = mesh.exec("web", "exit 3")
        assert (failed.exit_code, failed.ok) == (3, False)
        with pytest.raises(MeshError, match="no service named 'nope'"):
            mesh.replicas("nope")
        with pytest.raises(MeshError, match="has no replica 9"):
            mesh.exec("api", "true", index=9)

        # DNS as a replica sees it.
        answer = mesh.resolve("api", from_="web")
        assert answer.answers == (mesh.state()["services"]["api"]["connect"]["vip"],)
        assert answer.meaning == "service connect endpoint api:80 of api, http"
        assert answer.client == "web-1"

        # Metrics of the two requests above.
        stats = mesh.stats("api")
        assert stats.request_count == 2 and stats.http_2xx == 2
        assert stats.raw["RequestCount"] == 2

        # Scale out and back; a killed replica is replaced.
        assert len(mesh.scale("api", 3)) == 3
        assert len(mesh.scale("api", 2)) == 2
        killed = mesh.kill("api", 1)
        back = mesh.wait_replicas("api", 2, timeout=60)
        assert killed.container_id not in {r.container_id for r in back}

        with pytest.raises(WaitTimeout, match="api to have 5 replica"):
            mesh.wait_replicas("api", 5, timeout=0.5)
    assert not mesh.running
    assert leftovers(project) == []
    with pytest.raises(MeshError, match="not running"):
        mesh.replicas("api")


def test_failed_up_leaves_nothing(tiny: Path, leftovers: Callable[[str], list[str]]) -> None:
    """A service that never listens: `up` raises, and has removed what it created."""
    manifest = tiny / "copilot" / "web" / "manifest.yml"
    manifest.write_text(manifest.read_text().replace("-p 8080", "-p 8081"))
    mesh = Mesh(tiny, "test", timeout=20)
    try:
        # It never enters rotation (nothing accepts connections on its port),
        # so `up` fails with the reason instead of routing to a closed port.
        with pytest.raises(MeshlocalError, match="not healthy after 20s: web 0/1") as failed:
            mesh.up()
        assert "accepts connections" in str(failed.value)
        assert leftovers(mesh.project) == []
    finally:
        mesh.down()  # should this test fail, its mesh must not outlive it


def test_stale_meshes_of_dead_sessions_are_reaped(tiny: Path, docker_client: Any) -> None:
    """What a SIGKILLed session left behind goes; a live session's mesh stays."""
    from meshlocal.deployment import Deployment

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    dead_pid = int(dead.stdout)
    live_suffix = session_suffix()  # this process: alive
    dead_suffix = live_suffix.replace(f"-{os.getpid()}-", f"-{dead_pid}-")
    engine = Engine.from_env()
    try:
        base = Deployment(tiny, "test").base_project
        for suffix in (live_suffix, dead_suffix):
            engine.ensure_network(f"{base}-{suffix}", "test")
        reaped = reap_stale(engine, base)
        assert reaped == [f"{base}-{dead_suffix}"]
        names = {n.name for n in docker_client.networks.list(filters={"label": L.PROJECT})}
        assert L.network_name(f"{base}-{live_suffix}", "test") in names
        assert L.network_name(f"{base}-{dead_suffix}", "test") not in names
    finally:
        engine.remove_all(f"{base}-{live_suffix}")
        engine.remove_all(f"{base}-{dead_suffix}")
        engine.close()


HOLD = """
import sys, time
from meshlocal.testing import Mesh

mesh = Mesh(sys.argv[1], "test", mode=sys.argv[2])
mesh.up()
print(mesh.project, flush=True)
time.sleep(300)
"""


def test_a_sigkilled_session_is_reaped_by_the_next(
    tiny: Path, leftovers: Callable[[str], list[str]]
) -> None:
    """SIGKILL skips every cleanup; the next `up` of the workspace reaps the remains."""
    from meshlocal.statedir import STATE_DIR

    mode: Mode = "host" if sys.platform == "linux" and os.geteuid() == 0 else "container"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tiny), mode], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        project = proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert project and leftovers(project) != []
    pid_files = list(STATE_DIR.glob(f"{project}-*.pid"))
    assert len(pid_files) == (1 if mode == "host" else 0)
    agent = int(pid_files[0].read_text()) if pid_files else None

    with Mesh(tiny, "test", mode=mode) as mesh:  # its `up` reaps first
        assert leftovers(project) == []
        assert mesh.get("web").status == 200
    assert list(STATE_DIR.glob(f"{project}-*.pid")) == []
    if agent is not None:
        assert not _pid_alive(agent)
