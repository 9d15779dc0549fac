"""The engine and the user guarded, through the real CLI: bounded work, back-off, limits.

A huge `scale` must not swamp the data plane or outlive its `--timeout`, and
the next `scale` takes over; a replica that keeps dying backs off and `ps`
says so; a count above `max_replicas` is refused before anything starts; a
failing health check is quoted when `up -d` gives up.
"""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from meshlocal.deployment import Deployment
from meshlocal.runtime import labels as L

from .conftest import (
    copy_workspace,
    counts,
    failed,
    labelled,
    ok,
    popen_cli,
    project_of,
    run_cli,
    wait_for,
)

pytestmark = pytest.mark.docker
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def guard(
    tmp_path_factory: pytest.TempPathFactory,
    docker_client: Any,
    busybox_image: str,
    dataplane_image: str,
) -> Iterator[Path]:
    ws = copy_workspace(tmp_path_factory, "guard")
    try:
        ok(run_cli(ws, "up", "-d", "--timeout", "60"))
        yield ws
    finally:
        run_cli(ws, "down", "--rmi")


def replica_containers(client: Any, project: str, *, running: bool = True) -> list[Any]:
    label = [f"{L.PROJECT}={project}", f"{L.ROLE}={L.Role.REPLICA.value}"]
    return list(client.containers.list(all=not running, filters={"label": label}))


def used_memory(stats: dict[str, Any]) -> int:
    """As `docker stats` shows it: usage less the page cache the kernel can drop."""
    cache = stats.get("stats", {})
    inactive = cache.get("inactive_file", cache.get("total_inactive_file", 0))
    return int(stats.get("usage", 0)) - int(inactive)


def test_a_huge_scale_is_bounded_keeps_its_timeout_and_is_superseded(
    guard: Path, docker_client: Any
) -> None:
    project = project_of(guard)
    dep = Deployment(guard, "test")
    try:
        plane = dep.dataplane()
        admin = plane.admin_url
    finally:
        dep.close()
    dataplane = docker_client.containers.get(L.dataplane_name(project, "test"))
    memory: list[int] = []
    unanswered: list[str] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            stats = docker_client.api.stats(dataplane.id, stream=False, one_shot=True)
            memory.append(used_memory(stats["memory_stats"]))
            try:
                with urllib.request.urlopen(f"{admin}/healthz", timeout=2) as resp:
                    resp.read()
            except OSError as exc:
                unanswered.append(str(exc))
            stop.wait(0.3)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        t0 = time.monotonic()
        proc = popen_cli(guard, "scale", "orders=100000", "--timeout", "5")
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - t0
    finally:
        stop.set()
        sampler.join(timeout=10)
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    # The timeout holds, and the message says what was still pending.
    assert took < 20, took
    assert "not healthy after 5s" in out, out
    pending = re.search(r"orders \d+/100000 healthy \(.*?(\d+) not started", out)
    assert pending is not None and int(pending.group(1)) > 99_000, out
    # The data plane stayed small and answered throughout.
    assert memory and max(memory) < 100 * MiB, [m // MiB for m in memory]
    assert unanswered == [], unanswered
    started = len(replica_containers(docker_client, project))
    assert started < 500, started  # a few per second, never all at once

    # The next count takes over at once instead of waiting behind the first.
    t0 = time.monotonic()
    ok(run_cli(guard, "scale", "orders=2", "--timeout", "90", timeout=120))
    assert time.monotonic() - t0 < 90
    running = replica_containers(docker_client, project)
    assert sorted(c.labels[L.REPLICA] for c in running) == ["1", "2"], [c.name for c in running]


def test_up_takes_over_from_a_pending_huge_scale(guard: Path, docker_client: Any) -> None:
    failed(run_cli(guard, "scale", "orders=100000", "--timeout", "3", timeout=60))
    t0 = time.monotonic()
    ok(run_cli(guard, "up", "-d", "--timeout", "90", timeout=150))
    assert time.monotonic() - t0 < 90
    # Back to the manifest's count: the queued starts were dropped, the extra replicas removed.
    running = replica_containers(docker_client, project_of(guard))
    assert [c.labels[L.REPLICA] for c in running] == ["1"], [c.name for c in running]


def test_a_dying_replica_backs_off_and_ps_says_why(guard: Path, docker_client: Any) -> None:
    project = project_of(guard)
    name = L.container_name(project, "test", "orders", 1)

    def fresh(previous: str | None) -> str | None:
        try:
            c = docker_client.containers.get(name)
        except Exception:  # not there yet
            return None
        if c.status != "running" or c.id == previous:
            return None
        # Killed before its first line, a crashed container has nothing for `logs` to show.
        return str(c.id) if b"orders up on" in c.logs() else None

    first = wait_for("orders-1", lambda: fresh(None), timeout=30)
    docker_client.containers.get(first).kill()
    second = wait_for("orders-1 restarted at once", lambda: fresh(first), timeout=10)
    docker_client.containers.get(second).kill()
    time.sleep(1)  # the second death: the next start waits 5 s

    ps = ok(run_cli(guard, "ps"))
    shown = ps.stdout + ps.stderr
    assert re.search(r"orders-1 .*restarting, exit 137, 2 in a row, next try in [2-5] s", shown), (
        shown
    )
    assert "`meshlocal logs orders` shows the crashed container" in shown, shown
    logs = ok(run_cli(guard, "logs", "orders"))
    assert re.search(r"^orders-1-crashed +\| orders up on ", logs.stdout, re.M), logs.stdout
    # It comes back by itself after the delay.
    wait_for("orders-1 back after its back-off", lambda: fresh(second), timeout=20)


def test_a_count_above_the_limit_is_refused_before_anything_starts(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, busybox_image: str
) -> None:
    ws = copy_workspace(tmp_path_factory, "toomany")
    manifest = ws / "copilot" / "orders" / "manifest.yml"
    validated = ok(run_cli(ws, "validate"))
    # Copilot deploys it: validate warns, at the count's line, and passes.
    assert f"{manifest}:9:8:" in validated.stdout + validated.stderr, validated
    assert "above meshlocal's limit of 50" in validated.stdout + validated.stderr
    err = failed(run_cli(ws, "up", "-d", "--timeout", "30"))
    assert "orders: count 100000 is above meshlocal's limit of 50 replicas per service" in err
    assert f"{manifest}:9:8:" in err and "max_replicas" in err, err
    assert counts(labelled(docker_client, project_of(ws))) == {
        "containers": 0,
        "networks": 0,
        "images": 0,
    }


def test_up_quotes_the_failing_health_check(
    tmp_path_factory: pytest.TempPathFactory, docker_client: Any, busybox_image: str
) -> None:
    ws = copy_workspace(tmp_path_factory, "checkfail")
    try:
        err = failed(run_cli(ws, "up", "-d", "--timeout", "8"))
    finally:
        run_cli(ws, "down", "--rmi")
    assert "health check `CMD-SHELL echo cannot reach db:5432; exit 1` exited 1" in err, err
    assert "cannot reach db:5432" in err
    # Not the hint meant for replicas without a health check.
    assert "does it listen on image.port" not in err, err


def test_a_roll_keeps_the_old_replica_until_its_successor_listens(
    guard: Path, docker_client: Any
) -> None:
    project = project_of(guard)
    before = {c.id for c in replica_containers(docker_client, project)}
    manifest = guard / "copilot" / "orders" / "manifest.yml"
    original = manifest.read_text()
    # The new version runs but never listens on its port: never in rotation.
    manifest.write_text(original.replace("httpd -f -p 8000 -h /tmp & pid=$!", "sleep 600 & pid=$!"))
    try:
        err = failed(run_cli(guard, "up", "-d", "--timeout", "15", timeout=120))
    finally:
        manifest.write_text(original)
    assert "not healthy after 15s" in err or "did not become healthy" in err, err
    # The replica that served before the failed roll is the one serving now.
    after = {c.id for c in replica_containers(docker_client, project)}
    assert before <= after, (before, after)


def test_a_changed_replica_limit_reaches_the_running_mesh(guard: Path) -> None:
    settings = guard / "copilot" / ".meshlocal.yml"
    original = settings.read_text()
    try:
        settings.write_text("max_replicas: 2\n")
        ok(run_cli(guard, "up", "-d", "--timeout", "60"))
        err = failed(run_cli(guard, "scale", "orders=3", "--timeout", "30"))
        assert "above meshlocal's limit of 2 replicas per service" in err, err
        settings.write_text("max_replicas: 3\n")
        ok(run_cli(guard, "up", "-d", "--timeout", "60"))
        ok(run_cli(guard, "scale", "orders=3", "--timeout", "60"))
        # A broken settings file must not lock the user out of a running mesh.
        settings.write_text("max_replicas: ten\n")
        ok(run_cli(guard, "ps"))
        ok(run_cli(guard, "scale", "orders=1", "--timeout", "60"))
    finally:
        settings.write_text(original)


def test_a_failed_up_leaves_no_crashed_container_behind(guard: Path, docker_client: Any) -> None:
    boom = guard / "copilot" / "boom"
    boom.mkdir()
    (boom / "manifest.yml").write_text(
        "name: boom\ntype: Backend Service\nimage:\n  location: ${BUSYBOX_IMAGE}\n"
        'command: ["sh", "-c", "echo boom; exit 3"]\n'
    )
    try:
        err = failed(run_cli(guard, "up", "-d", "--timeout", "60", timeout=120))
    finally:
        (boom / "manifest.yml").unlink()
        boom.rmdir()
    assert "boom-1 keeps crashing (exit code 3" in err, err
    project = project_of(guard)

    def boom_gone() -> bool:
        label = [f"{L.PROJECT}={project}", f"{L.SERVICE}=boom"]
        return not docker_client.containers.list(all=True, filters={"label": label})

    # The undo hands the data plane its previous configuration: boom and its kept
    # crashed container go.
    wait_for("boom's containers to go", boom_gone, timeout=30)
