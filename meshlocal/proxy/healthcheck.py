"""http.healthcheck: the load balancer's target-group check, probed by the mesh.

ECS relies on the ALB to take a task whose health check fails out of
rotation. A replica of a service that declares `http.healthcheck` starts out
of rotation, joins after `healthy_threshold` passing probes and leaves after
`unhealthy_threshold` failing ones, which DNS and the proxy see at once
through the registry.

Difference from ECS (docs/concepts.md): until a replica first passes, it is
probed every 0.1 s rather than every `interval`, so `up` doesn't wait
`healthy_threshold x interval` (150 s with Copilot's defaults) per replica.

A replica with no health check at all joins once its port accepts a TCP
connection (ECS would route to it as soon as it runs). Without that, the
first requests meet a refused connection, and outlier detection ejects a
replica that is merely still starting. One that never listens never joins,
so `up -d` fails and says why instead of routing to a closed port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from meshlocal.manifest.model import HttpHealthCheck
from meshlocal.naming import NamingModel
from meshlocal.registry import Health, Replica, ReplicaRegistry

log = logging.getLogger(__name__)

STARTUP_INTERVAL_S = 0.1  # 5 probes (Copilot's healthy_threshold) in 0.5 s
LISTEN_POLL_S = 0.05
LISTEN_WARN_AFTER_S = 10.0


def success_codes(spec: str) -> set[int]:
    """ALB matcher syntax: "200", "200,202", "200-299"."""
    codes: set[int] = set()
    for part in spec.replace(" ", "").split(","):
        low, sep, high = part.partition("-")
        if not low.isdigit():
            continue
        codes.update(range(int(low), int(high) + 1) if sep and high.isdigit() else {int(low)})
    return codes or {200}


class HttpHealthChecker:
    def __init__(
        self,
        naming: NamingModel,
        registry: ReplicaRegistry,
        *,
        startup_interval_s: float = STARTUP_INTERVAL_S,
    ) -> None:
        self.naming = naming
        self.registry = registry
        self.startup_interval_s = startup_interval_s
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._unsubscribe: object = None

    def check_for(self, service: str) -> HttpHealthCheck | None:
        svc = self.naming.services.get(service)
        return svc.http_healthcheck if svc is not None else None

    async def start(self) -> None:
        # No keep-alive: a probe must see a fresh connection, as the ALB's does.
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True), auto_decompress=False
        )
        self._unsubscribe = self.registry.subscribe(self._on_change)
        for replica in self.registry.all():
            self._watch(replica, fresh=False)

    async def stop(self) -> None:
        if callable(self._unsubscribe):
            self._unsubscribe()
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()
        if self._session is not None:
            await self._session.close()

    def update(self, naming: NamingModel) -> None:
        self.naming = naming
        for replica in self.registry.all():
            self._watch(replica, fresh=False)

    def _on_change(self, before: Replica | None, after: Replica | None) -> None:
        if after is None and before is not None:
            task = self._tasks.pop(before.container_id, None)
            if task is not None:
                task.cancel()
        elif after is not None and before is None:
            self._watch(after, fresh=True)

    def _needs_listen_probe(self, replica: Replica) -> bool:
        svc = self.naming.services.get(replica.service)
        return (
            svc is not None
            and svc.container_healthcheck is None
            and replica.port is not None
            and replica.health is Health.HEALTHY
        )

    def _watch(self, replica: Replica, *, fresh: bool) -> None:
        if replica.container_id in self._tasks:
            return
        check = self.check_for(replica.service)
        if check is not None:
            probe = self._probe_loop(replica.container_id, check)
        elif fresh and self._needs_listen_probe(replica):
            probe = self._until_listening(replica)
        else:
            return
        if fresh:
            # Out of rotation until the first probes pass. Listeners run inside
            # the registry's upsert, so no answer ever sees it healthy.
            self.registry.set_health(replica.container_id, Health.STARTING)
        self._tasks[replica.container_id] = asyncio.create_task(
            probe, name=f"healthcheck-{replica.name}"
        )

    async def _until_listening(self, replica: Replica) -> None:
        assert replica.port is not None
        loop = asyncio.get_running_loop()
        warn_at = loop.time() + LISTEN_WARN_AFTER_S
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                try:
                    # Not wait_for: on 3.11 it returns the refusal instead of a cancel that
                    # arrives with it (gh-86296), and this loop would outlive `stop`.
                    async with asyncio.timeout(1.0):
                        _, writer = await asyncio.open_connection(replica.address, replica.port)
                except (TimeoutError, OSError):
                    if warn_at and loop.time() > warn_at:
                        warn_at = 0.0
                        log.warning(
                            "%s does not accept connections on port %d: out of rotation until "
                            "it does (does it listen on image.port, on all interfaces?)",
                            replica.name,
                            replica.port,
                        )
                    await asyncio.sleep(LISTEN_POLL_S if warn_at else STARTUP_INTERVAL_S)
                    continue
                writer.close()
                break
            if self.registry.get(replica.container_id) is not None:
                self.registry.set_health(replica.container_id, Health.HEALTHY)
            self._tasks.pop(replica.container_id, None)

    async def probe(self, replica: Replica, check: HttpHealthCheck) -> bool:
        assert self._session is not None
        port = check.port or replica.port
        if port is None:
            return False
        url = f"http://{replica.address}:{port}{check.path}"
        try:
            async with self._session.get(
                url, timeout=aiohttp.ClientTimeout(total=check.timeout_s), allow_redirects=False
            ) as resp:
                return resp.status in success_codes(check.success_codes)
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def _probe_loop(self, container_id: str, check: HttpHealthCheck) -> None:
        passes = fails = 0
        settled = False
        with contextlib.suppress(asyncio.CancelledError):
            while True:
                replica = self.registry.get(container_id)
                if replica is None:
                    return
                if await self.probe(replica, check):
                    passes, fails = passes + 1, 0
                    if passes >= check.healthy_threshold and replica.health is not Health.HEALTHY:
                        log.info("%s passes %s: in rotation", replica.name, check.path)
                        self.registry.set_health(container_id, Health.HEALTHY)
                        settled = True
                else:
                    passes, fails = 0, fails + 1
                    if fails >= check.unhealthy_threshold and replica.health is Health.HEALTHY:
                        log.warning("%s fails %s: out of rotation", replica.name, check.path)
                        self.registry.set_health(container_id, Health.UNHEALTHY)
                await asyncio.sleep(check.interval_s if settled else self.startup_interval_s)
