"""Time from Docker's `die` event to the replica leaving the registry, and to a replacement
being back in rotation. Real engine, busybox httpd replicas.

    .venv/bin/python bench/runtime/die_to_removal.py [kills]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time
import uuid

import docker

from meshlocal.registry import Replica, ReplicaRegistry
from meshlocal.runtime.engine import Engine
from meshlocal.runtime.images import ensure_busybox_image
from meshlocal.runtime.reconcile import DesiredService, ReplicaTemplate
from meshlocal.runtime.replicas import Reconciler

HTTPD = ("sh", "-c", "echo ok > /var/www/index.html; exec httpd -f -p 80 -h /var/www")


async def main(kills: int) -> None:
    engine = Engine(docker.from_env())
    image = ensure_busybox_image(engine.client)
    project = f"mlbench-{uuid.uuid4().hex[:8]}"
    net = engine.ensure_network(project, "bench")
    registry = ReplicaRegistry()
    rec = Reconciler(engine, registry, project=project, env="bench", network=net, drain_s=0)
    removed: dict[str, int] = {}
    joined: dict[str, int] = {}

    def on_change(before: Replica | None, after: Replica | None) -> None:
        if before is not None and after is None:
            removed[before.container_id] = time.time_ns()
        if after is not None and after.in_rotation and after.container_id not in joined:
            joined[after.container_id] = time.time_ns()

    registry.subscribe(on_change)
    to_removal: list[float] = []
    to_replaced: list[float] = []
    try:
        await rec.start()
        t0 = time.monotonic()
        await rec.apply(
            {"api": DesiredService(ReplicaTemplate("api", image, command=HTTPD, port=80), 3)}
        )
        await rec.wait_ready(60, settle_s=0)
        print(f"apply -> 3 replicas in rotation: {time.monotonic() - t0:.2f} s")
        watch = engine.events(project, "bench")
        for k in range(kills):
            # Round-robin over the indexes: a slot killed again and again is a crash
            # loop, and the reconciler throttles it on purpose.
            victim = registry.in_rotation("api")[k % 3]
            await asyncio.to_thread(engine.kill, victim.container_id)
            die_ns = None
            while die_ns is None:
                ev = await asyncio.wait_for(watch.get(), 10)
                if ev is not None and ev.action == "die" and ev.container_id == victim.container_id:
                    die_ns = ev.time_ns
            deadline = time.monotonic() + 30
            while len(registry.in_rotation("api")) < 3 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            new = max(
                (r for r in registry.in_rotation("api")),
                key=lambda r: joined.get(r.container_id, 0),
            )
            to_removal.append((removed[victim.container_id] - die_ns) / 1e6)
            to_replaced.append((joined[new.container_id] - die_ns) / 1e6)
        watch.close()
    finally:
        await rec.close()
        engine.remove_all(project)
    for label, xs in (
        ("die -> out of registry", to_removal),
        ("die -> replacement in rotation", to_replaced),
    ):
        print(f"{label}: n={len(xs)} median {statistics.median(xs):.1f} ms, max {max(xs):.1f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 10))
