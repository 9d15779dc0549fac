"""`down` needs no state: after the agent is SIGKILLed, labels find everything it made."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import Engine

pytestmark = pytest.mark.docker

AGENT = textwrap.dedent(
    """
    import asyncio, sys, docker
    from meshlocal.registry import ReplicaRegistry
    from meshlocal.runtime.engine import Engine
    from meshlocal.runtime.reconcile import DesiredService, ReplicaTemplate, SidecarTemplate
    from meshlocal.runtime.replicas import Reconciler

    project, image = sys.argv[1], sys.argv[2]
    async def main():
        engine = Engine(docker.from_env())
        net = engine.ensure_network(project, "test")
        rec = Reconciler(engine, ReplicaRegistry(), project=project, env="test", network=net,
                         pause_image=image)
        await rec.start()
        side = SidecarTemplate("side", image, command=("sleep", "300"))
        t = ReplicaTemplate("api", image, command=("sleep", "300"), sidecars=(side,),
                            depends_on={"side": "start"})
        await rec.apply({"api": DesiredService(t, 2)})
        await rec.wait_ready(60)
        print("ready", flush=True)
        await asyncio.sleep(300)
    asyncio.run(main())
    """
)


def test_remove_all_after_the_agent_was_sigkilled(
    engine: Engine, project: str, busybox_image: str
) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT, project, busybox_image],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    roles = sorted(c.role or "" for c in engine.list_containers(project))
    assert roles == ["pause", "pause", "replica", "replica", "sidecar", "sidecar"]
    removed = engine.remove_all(project)
    assert len(removed.containers) == 6 and removed.networks == (L.network_name(project, "test"),)
    assert engine.list_containers(project) == []
    assert engine.api.networks(filters={"label": L.filters(project)}) == []
    assert engine.remove_all(project).containers == ()  # idempotent
