"""The reconciler against the real engine: events drive the registry, ECS-style lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import io
import ipaddress
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest

from meshlocal.errors import RuntimeFailure
from meshlocal.manifest.model import ContainerHealthCheck
from meshlocal.registry import Health, Replica, ReplicaRegistry
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import Engine, NetworkInfo
from meshlocal.runtime.reconcile import DesiredService, ReplicaTemplate, SidecarTemplate
from meshlocal.runtime.replicas import Reconciler

from .conftest import until

pytestmark = pytest.mark.docker

# Serve $VERSION and the hostname on port 80 with busybox httpd.
HTTPD = (
    "sh",
    "-c",
    'echo "v=${VERSION:-1} host=$(hostname)" > /var/www/index.html;'
    " exec httpd -f -p 80 -h /var/www",
)
HTTP_CHECK = ContainerHealthCheck(
    command=("CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1/"),
    interval_s=0.3,
    timeout_s=2,
    retries=1,
)


def httpd(image: str, service: str = "api", **kw: object) -> ReplicaTemplate:
    return ReplicaTemplate(service=service, image=image, command=HTTPD, port=80, **kw)  # type: ignore[arg-type]


@pytest.fixture
async def setup(
    engine: Engine, project: str
) -> AsyncIterator[tuple[Reconciler, ReplicaRegistry, NetworkInfo]]:
    net = await asyncio.to_thread(engine.ensure_network, project, "test")
    registry = ReplicaRegistry()
    rec = Reconciler(
        engine, registry, project=project, env="test", network=net, drain_s=0.3, stop_timeout_s=1
    )
    await rec.start()
    try:
        yield rec, registry, net
    finally:
        await rec.close()


async def test_apply_runs_count_replicas_and_feeds_the_registry(
    setup: tuple[Reconciler, ReplicaRegistry, NetworkInfo], engine: Engine, busybox_image: str
) -> None:
    rec, registry, net = setup
    await rec.apply({"api": DesiredService(httpd(busybox_image), 3)})
    await rec.wait_ready(30)
    replicas = registry.for_service("api")
    assert [r.index for r in replicas] == [1, 2, 3]
    assert all(r.port == 80 and r.in_rotation for r in replicas)
    subnet = ipaddress.ip_network(net.subnet or "")
    assert all(ipaddress.ip_address(r.address) in subnet for r in replicas)
    assert len({r.address for r in replicas}) == 3
    for r in replicas:
        code, out = await asyncio.to_thread(
            engine.exec, r.container_id, ["wget", "-q", "-O", "-", "http://127.0.0.1/"]
        )
        assert code == 0 and out.startswith("v=1 host="), out
        info = engine.inspect(r.container_id)
        assert info is not None
        # Never a name Docker's embedded DNS would answer for `api`.
        assert info.name == L.container_name(rec.project, "test", "api", r.index)
        raw = engine.api.inspect_container(r.container_id)
        aliases = raw["NetworkSettings"]["Networks"][net.name]["Aliases"] or []
        assert "api" not in aliases and raw["Config"]["Hostname"] != "api"


async def test_a_dead_replica_leaves_within_1s_and_is_replaced(
    setup: tuple[Reconciler, ReplicaRegistry, NetworkInfo], engine: Engine, busybox_image: str
) -> None:
    rec, registry, _ = setup
    await rec.apply({"api": DesiredService(httpd(busybox_image), 2)})
    await rec.wait_ready(30)
    victim, survivor = registry.for_service("api")
    removed_at: dict[str, int] = {}

    def on_change(before: Replica | None, after: Replica | None) -> None:
        if before is not None and after is None:
            removed_at[before.container_id] = time.time_ns()

    registry.subscribe(on_change)
    watch = engine.events(rec.project, "test")
    try:
        await asyncio.to_thread(engine.kill, victim.container_id)
        die_ns = None
        deadline = time.monotonic() + 10
        while die_ns is None and time.monotonic() < deadline:
            ev = await asyncio.wait_for(watch.get(), timeout=10)
            if ev is not None and ev.action == "die" and ev.container_id == victim.container_id:
                die_ns = ev.time_ns
    finally:
        watch.close()
    assert die_ns is not None
    await until(registry, lambda: victim.container_id in removed_at, 5, "the victim to leave")
    delay_s = (removed_at[victim.container_id] - die_ns) / 1e9
    assert delay_s < 1.0, f"removed {delay_s:.3f} s after the die event"

    def replaced() -> bool:
        now = registry.in_rotation("api")
        return len(now) == 2 and victim.container_id not in {r.container_id for r in now}

    await until(registry, replaced, 20, "a replacement replica")
    new = [r for r in registry.for_service("api") if r.container_id != survivor.container_id]
    assert [r.index for r in new] == [victim.index]
    assert registry.get(survivor.container_id) == survivor  # untouched
    # The dead container is kept, stopped and renamed, so `logs` can show why it died.
    kept = engine.inspect(victim.container_id)
    assert kept is not None and kept.state == "exited", kept
    assert kept.name == L.container_name(rec.project, "test", "api", victim.index) + "-crashed"


async def test_health_check_drives_registry_health_and_unhealthy_is_replaced(
    setup: tuple[Reconciler, ReplicaRegistry, NetworkInfo], engine: Engine, busybox_image: str
) -> None:
    rec, registry, _ = setup
    check = ContainerHealthCheck(
        command=("CMD-SHELL", "test -f /tmp/ready"),
        interval_s=0.3,
        timeout_s=2,
        retries=1,
        start_period_s=10,  # failures before the first success do not count
    )
    template = ReplicaTemplate(
        service="api",
        image=busybox_image,
        command=("sh", "-c", "sleep 1.5; touch /tmp/ready; exec sleep 300"),
        port=80,
        healthcheck=check,
    )
    seen: list[tuple[str, Health]] = []
    registry.subscribe(
        lambda _b, a: seen.append((a.container_id, a.health)) if a is not None else None
    )
    await rec.apply({"api": DesiredService(template, 1)})
    # Running but not healthy yet: listed as starting, not in the registry (DNS, proxy).
    deadline = time.monotonic() + 15
    while not rec.starting() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert [r.health for r in rec.starting()] == [Health.STARTING]
    assert registry.for_service("api") == []
    await until(registry, lambda: bool(registry.in_rotation("api")), 20, "healthy")
    first = registry.for_service("api")[0]
    assert [h for c, h in seen if c == first.container_id][:1] == [Health.HEALTHY]
    assert rec.starting() == []

    await asyncio.to_thread(engine.exec, first.container_id, ["rm", "/tmp/ready"])

    def replaced() -> bool:
        now = registry.in_rotation("api")
        return len(now) == 1 and now[0].container_id != first.container_id

    await until(registry, replaced, 30, "the unhealthy replica to be replaced")
    assert (first.container_id, Health.UNHEALTHY) in seen


async def test_a_dockerfile_healthcheck_is_ignored(
    setup: tuple[Reconciler, ReplicaRegistry, NetworkInfo],
    engine: Engine,
    project: str,
    busybox_image: str,
    docker_client: Any,
) -> None:
    """ECS runs only the task definition's check: an image's failing HEALTHCHECK
    neither keeps a replica out of rotation nor gets it replaced."""
    rec, registry, _ = setup
    tag = f"meshlocal-test/failing-healthcheck:{uuid.uuid4().hex[:8]}"
    dockerfile = (
        f"FROM {busybox_image}\nHEALTHCHECK --interval=1s --timeout=1s --retries=1 CMD false\n"
    )
    await asyncio.to_thread(
        docker_client.images.build, fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True
    )
    try:
        declared = docker_client.images.get(tag).attrs["Config"]["Healthcheck"]
        assert declared["Test"] == ["CMD-SHELL", "false"]  # the image does declare one
        await rec.apply({"api": DesiredService(httpd(tag), 1)})
        await rec.wait_ready(20)
        [replica] = registry.for_service("api")
        assert replica.in_rotation
        # Long past the point where the image's check (every 1 s, 1 retry) would
        # have made the container unhealthy: the same replica, still in rotation.
        await asyncio.sleep(4)
        assert [r.container_id for r in registry.in_rotation("api")] == [replica.container_id]
        info = await asyncio.to_thread(docker_client.api.inspect_container, replica.container_id)
        assert info["Config"]["Healthcheck"]["Test"] == ["NONE"]
        assert "Health" not in info["State"]
    finally:
        await rec.close()
        await asyncio.to_thread(engine.remove_all, project)
        with contextlib.suppress(Exception):
            docker_client.images.remove(tag, force=True)


async def test_rolling_update_keeps_capacity_and_spares_unchanged_services(
    setup: tuple[Reconciler, ReplicaRegistry, NetworkInfo], engine: Engine, busybox_image: str
) -> None:
    rec, registry, _ = setup
    v1 = httpd(busybox_image, healthcheck=HTTP_CHECK, environment={"VERSION": "1"})
    other = httpd(busybox_image, service="worker")
    await rec.apply({"api": DesiredService(v1, 2), "worker": DesiredService(other, 1)})
    await rec.wait_ready(30)
    old_ids = {r.container_id for r in registry.for_service("api")}
    worker_ids = {r.container_id for r in registry.for_service("worker")}

    low_water: list[int] = []
    registry.subscribe(lambda _b, _a: low_water.append(len(registry.in_rotation("api"))))
    v2 = replace(v1, environment={"VERSION": "2"})
    assert rec.config_hash(v2) != rec.config_hash(v1)
    await asyncio.wait_for(
        rec.apply({"api": DesiredService(v2, 2), "worker": DesiredService(other, 1)}), 60
    )
    await rec.wait_ready(30)

    now = registry.for_service("api")
    assert len(now) == 2 and not ({r.container_id for r in now} & old_ids)
    assert min(low_water) >= 2, low_water  # never below the desired count
    for r in now:
        _, out = await asyncio.to_thread(
            engine.exec, r.container_id, ["wget", "-q", "-O", "-", "http://127.0.0.1/"]
        )
        assert out.startswith("v=2"), out
    assert {r.container_id for r in registry.for_service("worker")} == worker_ids
    names = sorted(c.name for c in engine.list_replicas(rec.project, "test", "api"))
    assert names == [L.container_name(rec.project, "test", "api", i) for i in (1, 2)]


async def test_scale_out_and_in_drains_first(
    setup: tuple[Reconciler, ReplicaRegistry, NetworkInfo], busybox_image: str
) -> None:
    rec, registry, _ = setup
    await rec.apply({"api": DesiredService(httpd(busybox_image), 1)})
    await rec.wait_ready(30)
    await rec.scale("api", 3)
    await rec.wait_ready(30)
    assert [r.index for r in registry.in_rotation("api")] == [1, 2, 3]
    drained: list[int] = []
    registry.subscribe(
        lambda _b, a: drained.append(a.index) if a is not None and a.draining else None
    )
    await rec.scale("api", 1)
    assert [r.index for r in registry.for_service("api")] == [1]
    assert sorted(drained) == [2, 3]
    with pytest.raises(RuntimeFailure):
        await rec.scale("nope", 1)


async def test_crash_loop_fails_wait_ready_with_the_last_log_lines(
    setup: tuple[Reconciler, ReplicaRegistry, NetworkInfo], busybox_image: str
) -> None:
    rec, _, _ = setup
    crashing = ReplicaTemplate(
        service="api", image=busybox_image, command=("sh", "-c", "echo boom-from-api; exit 2")
    )
    await rec.apply({"api": DesiredService(crashing, 1)})
    with pytest.raises(RuntimeFailure) as info:
        await rec.wait_ready(30)
    assert "keeps crashing" in info.value.message and "exited 2" in info.value.message
    assert info.value.hint is not None and "boom-from-api" in info.value.hint


async def test_a_new_agent_adopts_running_replicas(
    setup: tuple[Reconciler, ReplicaRegistry, NetworkInfo], engine: Engine, busybox_image: str
) -> None:
    rec, registry, net = setup
    desired = {"api": DesiredService(httpd(busybox_image), 2)}
    await rec.apply(desired)
    await rec.wait_ready(30)
    ids = {r.container_id for r in registry.for_service("api")}
    await rec.close()  # the agent goes away; the replicas keep running

    registry2 = ReplicaRegistry()
    rec2 = Reconciler(engine, registry2, project=rec.project, env="test", network=net)
    await rec2.start()
    try:
        assert {r.container_id for r in registry2.for_service("api")} == ids
        await rec2.apply(desired)
        await rec2.wait_ready(10)
        assert {r.container_id for r in registry2.for_service("api")} == ids  # not recreated
    finally:
        await rec2.close()


async def test_sidecars_share_the_replica_network_namespace(
    setup: tuple[Reconciler, ReplicaRegistry, NetworkInfo], engine: Engine, busybox_image: str
) -> None:
    rec, registry, _ = setup
    sidecar = SidecarTemplate(name="probe", image=busybox_image, command=("sleep", "300"))
    await rec.apply({"api": DesiredService(httpd(busybox_image, sidecars=(sidecar,)), 1)})
    await rec.wait_ready(30)
    sidecars = await asyncio.to_thread(
        engine.list_containers, rec.project, "test", role=L.Role.SIDECAR
    )
    assert len(sidecars) == 1 and sidecars[0].labels[L.SIDECAR] == "probe"
    code, out = await asyncio.to_thread(
        engine.exec, sidecars[0].id, ["wget", "-q", "-O", "-", "http://127.0.0.1/"]
    )
    assert code == 0 and out.startswith("v=1"), out  # localhost is the replica's

    # An essential sidecar that dies takes its task down; the task is replaced.
    main = registry.for_service("api")[0]
    await asyncio.to_thread(engine.kill, sidecars[0].id)

    def replaced() -> bool:
        now = registry.in_rotation("api")
        return len(now) == 1 and now[0].container_id != main.container_id

    await until(registry, replaced, 30, "the task to be replaced")


async def test_depends_on_orders_a_task_in_a_pause_namespace_and_rolls_it_whole(
    engine: Engine, project: str, busybox_image: str
) -> None:
    net = await asyncio.to_thread(engine.ensure_network, project, "test")
    registry = ReplicaRegistry()
    rec = Reconciler(
        engine,
        registry,
        project=project,
        env="test",
        network=net,
        drain_s=0.1,
        stop_timeout_s=1,
        pause_image=busybox_image,
    )
    await rec.start()
    try:
        serve_8081 = "echo from-sidecar > /var/www/index.html; exec httpd -f -p 8081 -h /var/www"
        sidecar = SidecarTemplate(
            name="side",
            image=busybox_image,
            command=("sh", "-c", serve_8081),
            healthcheck=ContainerHealthCheck(
                ("CMD-SHELL", "wget -q -O /dev/null http://127.0.0.1:8081/"), 0.3, 2, 1, 5
            ),
        )
        init = SidecarTemplate(
            name="init", image=busybox_image, command=("sh", "-c", "sleep 0.3"), essential=False
        )
        # The main container serves what it fetched from the sidecar at start-up.
        main_cmd = (
            "sh",
            "-c",
            "wget -q -O /var/www/index.html http://127.0.0.1:8081/ && "
            "exec httpd -f -p 80 -h /var/www",
        )
        template = ReplicaTemplate(
            service="api",
            image=busybox_image,
            command=main_cmd,
            port=80,
            sidecars=(sidecar, init),
            depends_on={"side": "healthy", "init": "success"},
            environment={"V": "1"},
        )
        await rec.apply({"api": DesiredService(template, 1)})
        await rec.wait_ready(30)
        replica = registry.for_service("api")[0]
        pauses = engine.list_containers(project, "test", role=L.Role.PAUSE)
        assert len(pauses) == 1
        assert replica.address == pauses[0].address_on(net.name)  # the task's address
        code, out = await asyncio.to_thread(
            engine.exec, replica.container_id, ["wget", "-q", "-O", "-", "http://127.0.0.1/"]
        )
        assert code == 0 and out.strip() == "from-sidecar"
        raw_main = engine.api.inspect_container(replica.container_id)
        init_info = [
            c
            for c in engine.list_containers(project, "test", role=L.Role.SIDECAR)
            if c.labels[L.SIDECAR] == "init"
        ]
        raw_init = engine.api.inspect_container(init_info[0].id)
        assert raw_init["State"]["ExitCode"] == 0
        assert raw_main["State"]["StartedAt"] > raw_init["State"]["FinishedAt"]

        # Roll: the whole task is replaced, and nothing of the old one remains.
        await rec.apply({"api": DesiredService(replace(template, environment={"V": "2"}), 1)})
        await rec.wait_ready(30)
        tasks = {c.labels.get("meshlocal.task") for c in engine.list_containers(project, "test")}
        assert len(tasks) == 1, tasks
        roles = sorted(c.role or "" for c in engine.list_containers(project, "test"))
        assert roles == ["pause", "replica", "sidecar", "sidecar"]
        assert registry.for_service("api")[0].container_id != replica.container_id
    finally:
        await rec.close()


async def test_a_broken_event_stream_is_resubscribed_and_caught_up(
    setup: tuple[Reconciler, ReplicaRegistry, NetworkInfo], engine: Engine, busybox_image: str
) -> None:
    rec, registry, _ = setup
    await rec.apply({"api": DesiredService(httpd(busybox_image), 2)})
    await rec.wait_ready(30)
    broken = rec._events
    assert broken is not None
    broken._stream.close()  # as if the engine went away, without close()
    victim = registry.for_service("api")[0]
    await asyncio.to_thread(engine.kill, victim.container_id)

    def healed() -> bool:
        now = registry.in_rotation("api")
        return (
            rec._events is not broken
            and len(now) == 2
            and victim.container_id not in {r.container_id for r in now}
        )

    await until(registry, healed, 30, "resubscription and a replacement")
