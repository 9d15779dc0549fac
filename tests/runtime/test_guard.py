"""The reconciler guards the engine: crash back-off, kept crashed containers, bounded work."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator

import pytest

from meshlocal.errors import RuntimeFailure
from meshlocal.manifest.model import ContainerHealthCheck
from meshlocal.registry import ReplicaRegistry
from meshlocal.runtime import labels as L
from meshlocal.runtime.backoff import KEPT_SUFFIX, restart_delay
from meshlocal.runtime.engine import Engine, NetworkInfo
from meshlocal.runtime.reconcile import DesiredService, ReplicaTemplate
from meshlocal.runtime.replicas import Reconciler

from .conftest import until

pytestmark = pytest.mark.docker

SLEEPER = ("sh", "-c", "trap 'exit 0' TERM; sleep 600 & wait")


@pytest.fixture
async def rec(engine: Engine, project: str) -> AsyncIterator[Reconciler]:
    net: NetworkInfo = await asyncio.to_thread(engine.ensure_network, project, "test")
    reconciler = Reconciler(
        engine,
        ReplicaRegistry(),
        project=project,
        env="test",
        network=net,
        drain_s=0.1,
        stop_timeout_s=1,
        max_parallel=3,
        max_replicas=10_000,
    )
    await reconciler.start()
    try:
        yield reconciler
    finally:
        await reconciler.close(remove=True)


def test_restart_delays_double_from_5_s_to_5_minutes() -> None:
    assert [restart_delay(n) for n in range(1, 7)] == [0, 5, 10, 20, 40, 80]
    assert restart_delay(9) == 300 and restart_delay(10_000) == 300


async def test_a_crashing_replica_backs_off_and_its_last_container_is_kept(
    rec: Reconciler, engine: Engine, busybox_image: str
) -> None:
    crashing = ReplicaTemplate(
        service="api", image=busybox_image, command=("sh", "-c", "echo boom-$$; exit 3")
    )
    watch = engine.events(rec.project, "test")
    deaths: list[float] = []
    try:
        await rec.apply({"api": DesiredService(crashing, 1)})
        # Watch until the third death (immediate, immediate, then after 5 s),
        # and 2 s more: the next try is then ~8 s away, so nothing moves while
        # the state is checked (the fourth death would replace the kept container).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                ev = await asyncio.wait_for(watch.get(), timeout=deadline - time.monotonic())
            except TimeoutError:
                break
            if ev is not None and ev.action == "die" and ev.role == L.Role.REPLICA.value:
                deaths.append(time.monotonic())
                if len(deaths) == 3:
                    deadline = min(deadline, time.monotonic() + 2)
    finally:
        watch.close()
    gaps = [b - a for a, b in itertools.pairwise(deaths)]
    # Without the back-off a container exiting at once dies several times a second.
    assert len(deaths) == 3, gaps
    assert gaps[1] >= 4.5, gaps

    (crash,) = rec.restarting()
    assert crash.looping and crash.exit_code == 3 and crash.count == 3
    # The delay doubled to 10 s; 2 s of it have passed.
    assert 5 <= crash.retry_in <= 10.5, crash.retry_in
    assert rec.pending_starts("api") == 0  # waiting out its back-off, not queued
    assert crash.status().startswith("crash-looping, exit 3"), crash.status()
    # The last crashed container stays, stopped, with its output; only one.
    kept = L.container_name(rec.project, "test", "api", 1) + KEPT_SUFFIX
    assert crash.kept == kept
    info = engine.inspect(kept)
    assert info is not None and info.state == "exited" and info.exit_code == 3
    assert any(line.startswith("boom-") for line in engine.logs(kept, 5))
    names = [c.name for c in engine.list_containers(rec.project, "test", role=L.Role.REPLICA)]
    assert names.count(kept) == 1 and len(names) <= 2, names
    with pytest.raises(RuntimeFailure, match="keeps crashing"):
        await rec.wait_ready(1)

    # A new container definition ends the throttling at once (as on ECS), and
    # a replica that stays up removes the kept container.
    fixed = ReplicaTemplate(service="api", image=busybox_image, command=SLEEPER)
    await rec.apply({"api": DesiredService(fixed, 1)})
    await rec.wait_ready(20)
    assert rec.crashes() == []

    def recovered() -> bool:
        return engine.inspect(kept) is None and not rec.restarting()

    await until(rec.registry, recovered, 20, "the kept container to go once api-1 is stable")


async def test_an_unhealthy_replica_keeps_its_checks_words(
    rec: Reconciler, busybox_image: str
) -> None:
    check = ContainerHealthCheck(
        command=("CMD-SHELL", "echo cannot reach db:5432; exit 1"),
        interval_s=0.5,
        timeout_s=2,
        retries=1,
    )
    sick = ReplicaTemplate(service="api", image=busybox_image, command=SLEEPER, healthcheck=check)
    await rec.apply({"api": DesiredService(sick, 1)})

    def reported() -> bool:
        return any(c.health is not None for c in rec.restarting())

    await until(rec.registry, reported, 20, "api-1 to be replaced as unhealthy")
    (crash,) = rec.restarting()
    assert crash.health is not None
    assert crash.health.command == "CMD-SHELL echo cannot reach db:5432; exit 1"
    assert crash.health.exit_code == 1 and crash.health.output == "cannot reach db:5432"
    assert "unhealthy" in crash.status()


async def test_a_huge_count_is_worked_off_a_few_at_a_time_and_a_new_count_supersedes_it(
    rec: Reconciler, engine: Engine, busybox_image: str
) -> None:
    template = ReplicaTemplate(service="api", image=busybox_image, command=SLEEPER)
    await rec.apply({"api": DesiredService(template, 1)})
    await rec.wait_ready(20)

    in_flight: list[int] = []
    original = rec._start_replica
    active = 0

    async def counted(service: str, index: int, wait_ready: bool = False) -> str:
        nonlocal active
        active += 1
        in_flight.append(active)
        try:
            return await original(service, index, wait_ready)
        finally:
            active -= 1

    rec._start_replica = counted  # type: ignore[method-assign]
    huge = rec.request_scale("api", 10_000)
    await asyncio.sleep(3)
    assert not huge.done()
    assert max(in_flight) <= 3, max(in_flight)  # the bound, whatever the count
    assert rec.pending_starts("api") > 9_000
    started = len(in_flight)

    # The next count takes over at once: the queued starts are dropped.
    t0 = time.monotonic()
    await rec.scale("api", 2)
    took = time.monotonic() - t0
    await asyncio.wait_for(huge, timeout=5)
    assert took < 30, took
    assert len(in_flight) <= started + 3  # at most the starts already in flight
    await rec.wait_ready(20)
    alive = [c for c in engine.list_containers(rec.project, "test", role=L.Role.REPLICA)]
    assert sorted(c.index or 0 for c in alive if c.running) == [1, 2]


async def test_scale_above_the_limit_is_refused(rec: Reconciler, busybox_image: str) -> None:
    template = ReplicaTemplate(service="api", image=busybox_image, command=SLEEPER)
    await rec.apply({"api": DesiredService(template, 0)})
    with pytest.raises(RuntimeFailure) as info:
        rec.request_scale("api", 10_001)
    assert "above meshlocal's limit of 10000" in info.value.message
    assert info.value.hint is not None and "max_replicas" in info.value.hint
    assert rec.desired["api"].count == 0


async def test_a_superseded_roll_keeps_the_old_replica_serving(
    rec: Reconciler, busybox_image: str
) -> None:
    v1 = ReplicaTemplate(service="api", image=busybox_image, command=SLEEPER)
    await rec.apply({"api": DesiredService(v1, 1)})
    await rec.wait_ready(20)
    (old,) = rec.registry.in_rotation("api")
    # v2 never becomes healthy: its roll waits for it.
    never = ContainerHealthCheck(
        command=("CMD-SHELL", "exit 1"), interval_s=0.5, timeout_s=2, retries=10, start_period_s=60
    )
    v2 = ReplicaTemplate(
        service="api",
        image=busybox_image,
        command=SLEEPER,
        environment={"V": "2"},
        healthcheck=never,
    )
    rolling = asyncio.create_task(rec.apply({"api": DesiredService(v2, 1)}))
    await asyncio.sleep(2)
    assert not rolling.done()
    # A new desired state takes over: not a failure, and the old replica keeps serving
    # instead of being pushed out by a successor that never served.
    again = rec.request_scale("api", 1)
    await asyncio.wait_for(rolling, timeout=15)
    await asyncio.sleep(3)
    assert old.container_id in {r.container_id for r in rec.registry.in_rotation("api")}
    again.cancel()
