"""A second `up -d` with nothing changed touches no container and returns at once.

And the moment anything it reads changes (a file of a build context, a
manifest, a container of the mesh), it does the full `up` again.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import ok, project_of, run_cli

pytestmark = pytest.mark.docker

NOTHING = "up to date, nothing changed"


def _containers(client: Any, project: str) -> dict[str, tuple[str, str]]:
    """id -> (state, started at) of every container of the project."""
    rows = client.api.containers(all=True, filters={"label": f"meshlocal.project={project}"})
    out: dict[str, tuple[str, str]] = {}
    for row in rows:
        info = client.api.inspect_container(row["Id"])
        out[str(row["Id"])] = (str(info["State"]["Status"]), str(info["State"]["StartedAt"]))
    return out


class _Events:
    """The engine's events for a project while a block runs."""

    def __init__(self, client: Any, project: str) -> None:
        self.seen: list[dict[str, Any]] = []
        self._stream = client.events(decode=True, filters={"label": f"meshlocal.project={project}"})
        self._thread = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        try:
            for event in self._stream:
                self.seen.append(event)
        except Exception:  # the stream closed at stop()
            return

    def __enter__(self) -> _Events:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        time.sleep(0.3)  # events are delivered a moment after the call that caused them
        self._stream.close()
        self._thread.join(timeout=5)


@pytest.mark.ws("rebuild")
def test_a_second_up_with_nothing_changed_touches_nothing(
    workspace: Path, docker_client: Any
) -> None:
    project = project_of(workspace)
    ok(run_cli(workspace, "up", "-d", "--timeout", "60"))
    before = _containers(docker_client, project)

    timings: list[float] = []
    with _Events(docker_client, project) as events:
        for _ in range(3):
            start = time.monotonic()
            again = ok(run_cli(workspace, "up", "-d", "--timeout", "60"))
            timings.append(time.monotonic() - start)
            assert NOTHING in again.stderr, again.stderr
            assert "app-1" in again.stdout  # the same table as a full `up -d` prints
    # Reading the controller's configuration (`archive-path`) is the one event: a read.
    changes = [e for e in events.seen if e.get("Action") != "archive-path"]
    assert len(events.seen) == 3, events.seen
    assert changes == [], [
        (e.get("Action"), e.get("Actor", {}).get("Attributes")) for e in events.seen
    ]
    assert _containers(docker_client, project) == before
    # The bound the issue sets is 0.5 s (bench/up/noop.py); a loaded CI machine gets room.
    assert sorted(timings)[1] < 2.0, timings


@pytest.mark.ws("rebuild")
def test_anything_read_changed_runs_the_full_up(workspace: Path, docker_client: Any) -> None:
    project = project_of(workspace)
    ok(run_cli(workspace, "up", "-d", "--timeout", "60"))
    assert NOTHING in ok(run_cli(workspace, "up", "-d")).stderr

    # A file of the build context touched, its content the same: checked, nothing rebuilt.
    page = workspace / "app" / "index.html"
    page.write_text(page.read_text())
    touched = ok(run_cli(workspace, "up", "-d", "--timeout", "60")).stderr
    assert NOTHING not in touched and "is up to date" in touched, touched
    assert NOTHING in ok(run_cli(workspace, "up", "-d")).stderr

    # Other options are another `up`: they never borrow this one's verdict.
    assert NOTHING not in ok(run_cli(workspace, "up", "-d", "--timeout", "60", "app")).stderr

    # A manifest changed: the full `up` rolls the service.
    manifest = workspace / "copilot" / "app" / "manifest.yml"
    manifest.write_text(manifest.read_text() + "\nvariables:\n  QUICK: changed\n")
    ok(run_cli(workspace, "up", "-d", "--timeout", "60"))
    state = json.loads(ok(run_cli(workspace, "ps", "--json")).stdout)
    (replica,) = state["services"]["app"]["replicas"]
    env = docker_client.api.inspect_container(replica["container_id"])["Config"]["Env"]
    assert "QUICK=changed" in env

    # The data plane stopped behind meshlocal's back: the full `up` brings it back.
    # (A replica removed would be replaced by the controller, perhaps converged
    # again before the check: then "nothing changed" would be right.)
    ok(run_cli(workspace, "up", "-d"))
    (plane,) = docker_client.api.containers(
        filters={"label": [f"meshlocal.project={project}", "meshlocal.role=dataplane"]}
    )
    docker_client.api.stop(plane["Id"], timeout=5)
    after = ok(run_cli(workspace, "up", "-d", "--timeout", "60")).stderr
    assert NOTHING not in after, after
    assert docker_client.api.containers(
        filters={"label": [f"meshlocal.project={project}", "meshlocal.role=dataplane"]}
    )  # running again

    # An environment variable is an input too (manifests interpolate ${VAR}).
    from .conftest import cli_env

    other = ok(run_cli(workspace, "up", "-d", env=cli_env(MESHLOCAL_SOMETHING="x"))).stderr
    assert NOTHING not in other, other

    # `down` forgets: the stamp may not vouch for the next mesh.
    ok(run_cli(workspace, "down"))
    assert not _containers(docker_client, project)
    fresh = ok(run_cli(workspace, "up", "-d", "--timeout", "60")).stderr
    assert NOTHING not in fresh, fresh
