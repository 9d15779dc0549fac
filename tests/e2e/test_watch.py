"""`up -d --watch`: an edit is rebuilt and rolled with no failed request; a broken
build or a replica that won't start leaves the old replicas serving; a burst of
saves is one rebuild; `down` stops the watcher.

One mesh for the module (each test picks up where the last left it): a
rolling replace takes seconds, a mesh from nothing more.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from .conftest import (
    ZERO,
    container_of,
    copy_workspace,
    counts,
    labelled,
    leftovers,
    ok,
    project_of,
    run_cli,
    sh,
    wait_for,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

URL = "http://web:8080/"
WATCHING = re.compile(r"^watching: pid (\d+), log (\S+)$", re.M)


@pytest.fixture(scope="module")
def ws(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> Iterator[Path]:
    ws = copy_workspace(tmp_path_factory, "watch")
    up = ok(run_cli(ws, "up", "-d", "--watch", "--timeout", "90")).stderr
    assert "[+] Watching for changes: pid " in up, up
    yield ws
    run_cli(ws, "down", "--rmi")
    assert counts(labelled(docker_client, project_of(ws))) == ZERO


def watcher(ws: Path) -> tuple[int, Path]:
    found = WATCHING.search(ok(run_cli(ws, "ps")).stdout)
    assert found, "ps shows no watcher"
    return int(found.group(1)), Path(found.group(2))


def log(ws: Path) -> str:
    return watcher(ws)[1].read_text()


def lines(ws: Path, what: str) -> int:
    return sum(1 for line in log(ws).splitlines() if line.startswith("[watch]") and what in line)


def until(ws: Path, what: str, fn: Any, timeout: float) -> None:
    """wait_for, failing with the watcher's log."""
    try:
        wait_for(what, fn, timeout, 0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- watcher log ---\n{log(ws)}") from None


def served(client: Any, ws: Path) -> str:
    cid = container_of(client, project_of(ws), "client")
    code, out = sh(client, cid, f"timeout 5 wget -q -O- {URL}")
    return out.strip() if code == 0 else f"exit {code}: {out.strip()}"


class Caller(threading.Thread):
    """A client replica calling web through Service Connect in a loop, counting failures."""

    def __init__(self, client: Any, ws: Path) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.cid = container_of(client, project_of(ws), "client")
        self.result = ""

    def run(self) -> None:
        # Bounded in count (and so in time: 50 ms apart, 5 s per call at most).
        script = (
            "rm -f /tmp/stop; i=0; f=0; "
            "while [ $i -lt 3000 ] && [ ! -e /tmp/stop ]; do "
            f"timeout 5 wget -q -O /dev/null {URL} || f=$((f+1)); i=$((i+1)); usleep 50000; "
            "done; echo requests=$i failed=$f"
        )
        self.result = sh(self.client, self.cid, script)[1]

    def finish(self) -> tuple[int, int]:
        sh(self.client, self.cid, "touch /tmp/stop")
        self.join(timeout=30)
        found = re.search(r"requests=(\d+) failed=(\d+)", self.result)
        assert found, self.result
        return int(found.group(1)), int(found.group(2))


def test_an_edit_is_rebuilt_and_rolled_with_no_failed_request(ws: Path, docker_client: Any) -> None:
    assert served(docker_client, ws) == "version 1"
    caller = Caller(docker_client, ws)
    caller.start()
    try:
        saved = time.monotonic()
        (ws / "web" / "index.html").write_text("version 2\n")
        until(ws, "the new content", lambda: served(docker_client, ws) == "version 2", 60)
        took = time.monotonic() - saved
        # The roll is over (the old replicas drained and stopped) before the count is read.
        until(ws, "the roll", lambda: lines(ws, "web: rebuilt and rolled") == 1, 60)
    finally:
        requests, failed = caller.finish()
    print(f"edit to serving: {took:.1f} s; {requests} requests, {failed} failed")
    assert requests > 20
    assert failed == 0, log(ws)


def test_a_broken_build_keeps_the_old_replicas_serving(ws: Path, docker_client: Any) -> None:
    before = served(docker_client, ws)
    dockerfile = ws / "web" / "Dockerfile"
    good = dockerfile.read_text()
    dockerfile.write_text(good.replace("COPY index.html", "COPY missing.html"))
    (ws / "web" / "index.html").write_text("version 3\n")
    until(ws, "the build error", lambda: lines(ws, "web: failed after") == 1, 60)
    assert "missing.html" in log(ws)
    for _ in range(5):
        assert served(docker_client, ws) == before
    dockerfile.write_text(good)  # fixed: the next save recovers
    until(ws, "the fix", lambda: served(docker_client, ws) == "version 3", 60)


def test_a_replica_that_crashes_at_start_keeps_the_old_ones_serving(
    ws: Path, docker_client: Any
) -> None:
    start = ws / "web" / "start.sh"
    good = start.read_text()
    start.write_text("echo broken on purpose; exit 3\n" + good)
    (ws / "web" / "index.html").write_text("version 4\n")
    until(ws, "the crash", lambda: lines(ws, "web: failed after") == 2, 120)
    assert "broken on purpose" in log(ws)
    for _ in range(5):
        assert served(docker_client, ws) == "version 3"
    # Undone as a failed `up` is: the broken replicas are not retried, and the
    # tag is back on the image the serving replicas run.
    assert "undo:" in log(ws), log(ws)
    state = json.loads(ok(run_cli(ws, "ps", "--json")).stdout)
    assert not state["crashes"], state["crashes"]
    images = {
        docker_client.api.inspect_container(r["container_id"])["Image"]
        for r in state["services"]["web"]["replicas"]
    }
    tag = f"meshlocal/{project_of(ws)}-web:test"
    assert images == {docker_client.api.inspect_image(tag)["Id"]}
    start.write_text(good)
    until(ws, "the fix", lambda: served(docker_client, ws) == "version 4", 90)


def test_saves_close_together_are_one_rebuild(ws: Path, docker_client: Any) -> None:
    until(ws, "the last roll", lambda: lines(ws, "web: rebuilt and rolled") == 3, 90)
    rebuilds = lines(ws, "changed, rebuilding")
    for n in range(5, 10):  # five saves within 0.3 s
        (ws / "web" / "index.html").write_text(f"version {n}\n")
        time.sleep(0.06)
    (ws / "web" / "scratch.tmp").write_text("ignored: .dockerignore\n")
    (ws / "web" / "notes").mkdir()
    (ws / "web" / "notes" / "todo.md").write_text("ignored too\n")
    until(ws, "the last save", lambda: served(docker_client, ws) == "version 9", 60)
    until(ws, "the roll", lambda: lines(ws, "web: rebuilt and rolled") == 4, 60)
    time.sleep(2)  # anything left over would have started another rebuild by now
    assert lines(ws, "changed, rebuilding") == rebuilds + 1, log(ws)
    assert "scratch.tmp" not in log(ws) and "todo.md" not in log(ws)


def test_a_plain_up_hands_its_options_to_the_watcher(ws: Path, docker_client: Any) -> None:
    # Else the next rebuild would re-run `up` without them and undo them.
    up = ok(run_cli(ws, "up", "-d", "--env-var-override", "web:FROM_UP=1", "--timeout", "90"))
    assert "now rebuilds with this `up`'s options" in up.stderr, up.stderr
    (ws / "web" / "index.html").write_text("version 10\n")
    until(ws, "the new content", lambda: served(docker_client, ws) == "version 10", 60)

    def every_replica_has_it() -> bool:
        # The roll may still be removing an old replica that `ps` listed a moment ago.
        state = json.loads(ok(run_cli(ws, "ps", "--json")).stdout)
        replicas = state["services"]["web"]["replicas"]
        try:
            envs = [
                docker_client.api.inspect_container(r["container_id"])["Config"]["Env"]
                for r in replicas
            ]
        except docker.errors.NotFound:
            return False
        return bool(envs) and all("FROM_UP=1" in env for env in envs)

    until(ws, "every web replica with the up's override", every_replica_has_it, 30)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has stopped; only its parent's reaping is left


def test_down_stops_the_watcher_and_leaves_nothing(ws: Path, docker_client: Any) -> None:
    pid, log_path = watcher(ws)
    assert _alive(pid)
    pid_file = log_path.with_name(log_path.name.removesuffix(".log") + ".pid")
    assert pid_file.read_text().strip() == str(pid)
    # `logs` shows the watcher's log too, under its own prefix; a service's logs don't.
    shown = ok(run_cli(ws, "logs", "--tail", "20")).stdout
    assert re.search(r"^meshlocal-watch +\| \[watch\] watching ", shown, re.M), shown
    assert "meshlocal-watch" not in ok(run_cli(ws, "logs", "web")).stdout
    down = ok(run_cli(ws, "down")).stderr
    assert f"[+] Stopped the watcher (pid {pid})" in down, down
    assert not _alive(pid)
    assert not pid_file.exists() and not log_path.exists()
    assert leftovers(docker_client, project_of(ws)) == []
