"""http.healthcheck: replicas enter and leave rotation from real HTTP probes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from aiohttp import web

from meshlocal.manifest.model import (
    Connect,
    Environment,
    EnvironmentSpec,
    HttpHealthCheck,
    Service,
    ServiceType,
    Workspace,
)
from meshlocal.naming import NamingModel
from meshlocal.proxy.healthcheck import HttpHealthChecker, success_codes
from meshlocal.registry import Health, Replica, ReplicaRegistry


def test_success_code_matcher() -> None:
    assert success_codes("200") == {200}
    assert success_codes("200,202") == {200, 202}
    assert success_codes("200-204") == {200, 201, 202, 203, 204}
    assert success_codes("junk") == {200}


def naming(check: HttpHealthCheck | None) -> NamingModel:
    web_svc = Service(
        name="web",
        type=ServiceType.LOAD_BALANCED_WEB_SERVICE,
        manifest_path=Path("/ws/copilot/web/manifest.yml"),
        port=8080,
        target_port=8080,
        http_path="/",
        http_healthcheck=check,
        connect=Connect(True),
    )
    ws = Workspace(Path("/ws"), "app", {}, {})
    return NamingModel(EnvironmentSpec(ws, Environment("test", None), (web_svc,)))


@pytest.fixture
async def backend() -> AsyncIterator[tuple[int, Callable[[int], None]]]:
    status = {"code": 200}

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=status["code"], text="ok")

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.61", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def set_status(code: int) -> None:
        status["code"] = code

    yield port, set_status
    await runner.cleanup()


async def wait_for(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_replica_joins_after_passing_and_leaves_after_failing(
    backend: tuple[int, Callable[[int], None]],
) -> None:
    port, set_status = backend
    check = HttpHealthCheck(
        path="/health", port=port, healthy_threshold=2, unhealthy_threshold=2, interval_s=0.05
    )
    registry = ReplicaRegistry()
    checker = HttpHealthChecker(naming(check), registry, startup_interval_s=0.05)
    await checker.start()
    try:
        seen: list[Health] = []
        registry.subscribe(lambda _b, a: seen.append(a.health) if a else None)
        registry.upsert(Replica("web", 1, "c1", "127.0.0.61", 8080))
        # Never in rotation before the probes pass: the first state seen after
        # the reconciler's HEALTHY upsert is already STARTING.
        assert registry.get("c1") is not None
        assert registry.get("c1").health is Health.STARTING  # type: ignore[union-attr]
        assert registry.in_rotation("web") == []
        await wait_for(lambda: registry.in_rotation("web") != [])
        set_status(503)
        await wait_for(lambda: registry.get("c1").health is Health.UNHEALTHY)  # type: ignore[union-attr]
        assert registry.in_rotation("web") == []
        set_status(200)
        await wait_for(lambda: registry.in_rotation("web") != [])
        assert Health.UNHEALTHY in seen and seen[-1] is Health.HEALTHY
    finally:
        await checker.stop()


async def test_without_a_check_a_replica_joins_once_it_listens(
    backend: tuple[int, Callable[[int], None]],
) -> None:
    port, _ = backend
    registry = ReplicaRegistry()
    checker = HttpHealthChecker(naming(None), registry, startup_interval_s=0.05)
    await checker.start()
    try:
        # A replica still starting (nothing listens on 127.0.0.63) stays out...
        registry.upsert(Replica("web", 2, "c2", "127.0.0.63", port))
        # ... one whose port accepts connections joins.
        registry.upsert(Replica("web", 1, "c1", "127.0.0.61", port))
        assert registry.in_rotation("web") == []
        await wait_for(lambda: [r.name for r in registry.in_rotation("web")] == ["web-1"])
        await asyncio.sleep(0.3)
        assert [r.name for r in registry.in_rotation("web")] == ["web-1"]
    finally:
        await checker.stop()


async def test_unreachable_replica_never_joins() -> None:
    check = HttpHealthCheck(path="/health", port=9, interval_s=0.05, timeout_s=0.2)
    registry = ReplicaRegistry()
    checker = HttpHealthChecker(naming(check), registry, startup_interval_s=0.05)
    await checker.start()
    try:
        registry.upsert(Replica("web", 1, "c1", "127.0.0.62", 8080))
        await asyncio.sleep(0.5)
        assert registry.in_rotation("web") == []
        registry.remove("c1")
        await asyncio.sleep(0.05)
        assert checker._tasks == {}
    finally:
        await checker.stop()
