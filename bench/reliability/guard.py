"""Figures for docs/reliability.md, "Guarding the engine": crash restarts and a huge count.

    .venv/bin/python bench/reliability/guard.py --label after
    # the same work on an older meshlocal, e.g. before issue 12:
    git worktree add /tmp/ml-before 5fd8ba7
    PYTHONPATH=/tmp/ml-before .venv/bin/python bench/reliability/guard.py --label before

Uses whichever meshlocal is importable (PYTHONPATH first). Two measurements:

1. **Crash restarts per minute**: one replica whose command exits at once
   (`echo boom; exit 3`), run by the reconciler for `--crash-seconds`; the
   replica `die` events Docker reports in that time, scaled to a minute.
2. **A huge count**: the `guard` test workspace up, then
   `meshlocal scale orders=100000 --timeout 5`: its wall time and exit status,
   the data plane's peak memory (as `docker stats` counts it) and whether its
   admin API answered every 0.3 s sample; then `scale orders=2`, its wall time.
   A command still running after `--command-limit` s is killed and reported so.

Prints one JSON document (and writes it with --out).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import docker

import meshlocal
from meshlocal.registry import ReplicaRegistry
from meshlocal.runtime import images
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import Engine
from meshlocal.runtime.reconcile import DesiredService, ReplicaTemplate
from meshlocal.runtime.replicas import Reconciler

ROOT = Path(__file__).resolve().parents[2]
GUARD_WS = ROOT / "tests" / "e2e" / "workspaces" / "guard"
MiB = 1024 * 1024


async def crash_restarts(engine: Engine, image: str, seconds: float) -> dict[str, Any]:
    project = f"mlbench-{uuid.uuid4().hex[:8]}"
    net = await asyncio.to_thread(engine.ensure_network, project, "bench")
    rec = Reconciler(engine, ReplicaRegistry(), project=project, env="bench", network=net)
    await rec.start()
    watch = engine.events(project, "bench")
    deaths = 0
    try:
        crashing = ReplicaTemplate(
            service="boom", image=image, command=("sh", "-c", "echo boom; exit 3")
        )
        await rec.apply({"boom": DesiredService(crashing, 1)})
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                ev = await asyncio.wait_for(watch.get(), timeout=left)
            except TimeoutError:
                break
            if ev is not None and ev.action == "die" and ev.role == L.Role.REPLICA.value:
                deaths += 1
    finally:
        watch.close()
        await rec.close(remove=True)
        await asyncio.to_thread(engine.remove_all, project)
    return {"seconds": seconds, "deaths": deaths, "per_minute": round(deaths * 60 / seconds, 1)}


def used_memory(stats: dict[str, Any]) -> int:
    cache = stats.get("stats", {})
    inactive = cache.get("inactive_file", cache.get("total_inactive_file", 0))
    return int(stats.get("usage", 0)) - int(inactive)


def cli(ws: Path, *args: str, limit: float) -> dict[str, Any]:
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshlocal", "-C", str(ws), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ws.parent,  # `python -m` puts the working directory first on sys.path
    )
    try:
        out, _ = proc.communicate(timeout=limit)
        killed = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        killed = True
    return {
        "command": "meshlocal " + " ".join(args),
        "seconds": round(time.monotonic() - t0, 1),
        "exit": None if killed else proc.returncode,
        "killed_after_limit": killed,
        "last_line": (out.strip().splitlines() or [""])[-1][:200],
    }


def huge_count(client: Any, limit: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="mlbench-guard-"))
    ws = tmp / "guard"
    shutil.copytree(GUARD_WS, ws)
    if not hasattr(__import__("meshlocal.manifest.model").manifest.model, "MAX_REPLICAS"):
        (ws / "copilot" / ".meshlocal.yml").unlink()  # an older meshlocal knows no limit
    result: dict[str, Any] = {}
    try:
        up = cli(ws, "up", "-d", "--timeout", "120", limit=300)
        if up["exit"] != 0:
            raise SystemExit(f"up -d failed: {up}")
        from meshlocal.deployment import Deployment

        dep = Deployment(ws, "test")
        admin = dep.dataplane().admin_url
        project = dep.project
        dep.close()
        plane = client.containers.get(L.dataplane_name(project, "test"))
        memory: list[int] = []
        unanswered = 0
        stop = threading.Event()

        def sample() -> None:
            nonlocal unanswered
            while not stop.is_set():
                try:
                    stats = client.api.stats(plane.id, stream=False, one_shot=True)
                    memory.append(used_memory(stats["memory_stats"]))
                except Exception:  # the container went away: stop sampling
                    return
                try:
                    with urllib.request.urlopen(f"{admin}/healthz", timeout=2) as resp:
                        resp.read()
                except OSError:
                    unanswered += 1
                stop.wait(0.3)

        idle = used_memory(client.api.stats(plane.id, stream=False, one_shot=True)["memory_stats"])
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            result["huge"] = cli(ws, "scale", "orders=100000", "--timeout", "5", limit=limit)
            result["after_huge"] = cli(ws, "scale", "orders=2", "--timeout", "90", limit=limit)
        finally:
            stop.set()
            sampler.join(timeout=10)
        result["dataplane_idle_mib"] = round(idle / MiB, 1)
        result["dataplane_peak_mib"] = round(max(memory, default=0) / MiB, 1)
        result["admin_samples"] = len(memory)
        result["admin_unanswered"] = unanswered
        label = [f"{L.PROJECT}={project}", f"{L.ROLE}={L.Role.REPLICA.value}"]
        result["replicas_running_after"] = len(client.containers.list(filters={"label": label}))
    finally:
        result["down"] = cli(ws, "down", limit=300)
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--label", default="current")
    parser.add_argument("--crash-seconds", type=float, default=60.0)
    parser.add_argument("--command-limit", type=float, default=60.0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    client = docker.from_env()
    engine = Engine(client)
    image = images.ensure_busybox_image(client)
    os.environ["BUSYBOX_IMAGE"] = image  # the guard workspace's manifest names it
    report = {
        "label": args.label,
        "meshlocal": str(Path(meshlocal.__file__).parent),
        "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
        "crash": asyncio.run(crash_restarts(engine, image, args.crash_seconds)),
        "count": huge_count(client, args.command_limit),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
