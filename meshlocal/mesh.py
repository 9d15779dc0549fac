"""One running mesh: the agent that wires runtime, registry, DNS and proxy.

The agent owns one environment. The reconciler keeps `count` replicas alive
and feeds the registry from Docker's event stream; DNS and the Service
Connect proxy answer from the registry; an admin API serves state, metrics
and scaling to the CLI.

It runs either in the data-plane container on the environment's network
(the default: no root on the host, works under Docker Desktop) or
in-process on the network's gateway address (host mode, Linux root). The
code is the same; only the addresses differ.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

from meshlocal.dns.resolver import MeshResolver
from meshlocal.dns.server import DnsServer
from meshlocal.errors import MeshlocalError, RuntimeFailure
from meshlocal.manifest.codec import from_jsonable, to_jsonable
from meshlocal.manifest.model import EnvironmentSpec
from meshlocal.naming import NamingModel
from meshlocal.proxy.app import Engine as ProxyCore
from meshlocal.proxy.app import PublicEndpoint, ServiceConnectProxy, admin_app
from meshlocal.proxy.healthcheck import HttpHealthChecker
from meshlocal.proxy.settings import ProxySettings
from meshlocal.registry import ReplicaRegistry
from meshlocal.runtime import vipnet
from meshlocal.runtime.backoff import Crash
from meshlocal.runtime.engine import Engine, NetworkInfo
from meshlocal.runtime.reconcile import DesiredService, desired_from_json, desired_to_json
from meshlocal.runtime.replicas import Reconciler
from meshlocal.vips import allocate, vip_block

log = logging.getLogger("meshlocal.agent")

Mode = Literal["container", "host"]

# Ports inside the data-plane container. Envoy's admin port is 9901 and
# Istio's 15000; high ports keep clear of the client alias ports.
ADMIN_PORT = 15000
PUBLIC_PORT = 15080
API_VERSION = "v1"


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs, as JSON: it may run where the workspace isn't."""

    project: str
    spec: EnvironmentSpec
    desired: Mapping[str, DesiredService]
    mode: Mode = "container"
    bind: str = "0.0.0.0"  # DNS and Service Connect listen here
    advertise: str | None = None  # replicas' DNS and SC address; None: own network address
    self_container: str | None = None  # container mode: own name, to find own address
    public_host: str = "0.0.0.0"
    public_port: int = PUBLIC_PORT
    admin_host: str = "0.0.0.0"
    admin_port: int = ADMIN_PORT
    dns_port: int = 53
    proxy: ProxySettings = field(default_factory=ProxySettings)
    # Holds a task's network namespace so sidecars can start before the main
    # container (image.depends_on); any image with `sleep` will do.
    pause_image: str | None = None
    # Where an applied configuration is kept, so a restarted agent resumes it.
    state_file: str | None = None
    # Service Connect endpoint -> its address (VIP); filled in by the agent and
    # kept in the state file, so an endpoint keeps its address across restarts.
    vips: Mapping[str, str] = field(default_factory=dict)

    @property
    def env(self) -> str:
        return self.spec.env

    def to_json(self) -> str:
        return json.dumps(
            {
                "project": self.project,
                "spec": to_jsonable(self.spec),
                "desired": json.loads(desired_to_json(self.desired)),
                "mode": self.mode,
                "bind": self.bind,
                "advertise": self.advertise,
                "self_container": self.self_container,
                "public_host": self.public_host,
                "public_port": self.public_port,
                "admin_host": self.admin_host,
                "admin_port": self.admin_port,
                "dns_port": self.dns_port,
                "proxy": to_jsonable(self.proxy),
                "pause_image": self.pause_image,
                "state_file": self.state_file,
                "vips": dict(self.vips),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> AgentConfig:
        raw = json.loads(text)
        proxy = from_jsonable(ProxySettings, raw.pop("proxy"))
        proxy = ProxySettings(
            **{**proxy.__dict__, "port_map": {int(k): v for k, v in proxy.port_map.items()}}
        )
        return cls(
            spec=from_jsonable(EnvironmentSpec, raw.pop("spec")),
            desired=desired_from_json(json.dumps(raw.pop("desired"))),
            proxy=proxy,
            **raw,
        )


class Agent:
    """The running mesh for one environment."""

    def __init__(self, config: AgentConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.naming = NamingModel(config.spec)
        self.registry = ReplicaRegistry()
        self.address = ""
        self.network: NetworkInfo | None = None
        self._stack = contextlib.AsyncExitStack()
        self._admin: web.AppRunner | None = None
        self.reconciler: Reconciler | None = None
        self.dns: DnsServer | None = None
        self.proxy: ServiceConnectProxy | None = None
        self.public: PublicEndpoint | None = None
        self.admin_port = config.admin_port
        self.public_port = config.public_port
        self.applied = asyncio.Event()
        self.apply_error: MeshlocalError | None = None
        self.resolver: MeshResolver | None = None
        self.health = HttpHealthChecker(self.naming, self.registry)
        self._apply_task: asyncio.Task[None] | None = None
        self._vip_block: list[str] = []

    # -- lifecycle --------------------------------------------------------

    async def start(self) -> None:
        cfg = self.config
        self.network = await asyncio.to_thread(self.engine.ensure_network, cfg.project, cfg.env)
        self.address = cfg.advertise or await self._own_address(self.network)
        self._vip_block = vip_block(
            self.network.subnet or "", self.network.ip_range, self.network.gateway
        )
        cfg = self.config = await self._with_vips(cfg, cfg.vips)
        # Host mode puts them on the host's bridge: they must not outlive the agent.
        self._stack.push_async_callback(self._release_vips)
        self.naming = NamingModel(cfg.spec, cfg.vips)
        self.health.update(self.naming)
        core = ProxyCore(self.registry, cfg.proxy)
        self.proxy = ServiceConnectProxy(
            self.naming, self.registry, self._host(cfg.bind), engine=core
        )
        self.public = PublicEndpoint(
            self.naming, self.registry, self._host(cfg.public_host), cfg.public_port, engine=core
        )
        self.resolver = MeshResolver(self.naming, self.registry, self.address)
        self.dns = DnsServer(self.resolver, self._host(cfg.bind), cfg.dns_port)
        self.reconciler = Reconciler(
            self.engine,
            self.registry,
            project=cfg.project,
            env=cfg.env,
            network=self.network,
            dns=[self.address],
            pause_image=cfg.pause_image,
            on_change=lambda msg: log.info("%s", msg),
            max_replicas=cfg.spec.workspace.max_replicas,
        )
        self.reconciler.sc_view = self.naming.endpoint_names
        # Adopt what already runs first (a restarted data plane), so the first
        # request after a restart finds the replicas instead of a 503.
        await self.reconciler.start()
        self._stack.push_async_callback(self.reconciler.close)
        # Serve before new replicas start, so their first lookups already work.
        for part in (self.dns, self.proxy, self.public, self.health):
            await part.start()
            self._stack.push_async_callback(part.stop)
        if self.public.rules:
            self.public_port = self.public.bound
        await self._start_admin(core)
        log.info(
            "mesh %s/%s: DNS %s:%d, Service Connect endpoints %s, admin port %d",
            cfg.project,
            cfg.env,
            self.address,
            self.dns.port,
            ", ".join(f"{e.address}={e.vip} ({e.protocol})" for e in self.naming.sc_endpoints)
            or "none",
            self.admin_port,
        )
        self._persist(cfg)
        self._stack.callback(self._cancel_apply)
        self._schedule_apply(cfg.desired)

    def _host(self, configured: str) -> str:
        """The agent's own address for a wildcard: its VIPs then answer nothing else.

        Bound to 0.0.0.0, DNS, admin and public ports would also answer on
        every endpoint address; ECS refuses a connection to an endpoint on any
        port but its own.
        """
        return self.address if configured == "0.0.0.0" and self.address else configured

    def _cancel_apply(self) -> None:
        if self._apply_task is not None:
            self._apply_task.cancel()

    def _schedule_apply(self, desired: Mapping[str, DesiredService]) -> None:
        self.applied.clear()
        self.apply_error = None
        previous = self._apply_task
        if self.reconciler is not None:
            self.reconciler.supersede()  # the previous apply stops queuing, not waited out
        self._apply_task = asyncio.create_task(
            self._apply(desired, previous), name="meshlocal-apply"
        )

    async def reconfigure(self, config: AgentConfig) -> None:
        """A re-run of `up`: new names route at once, then services converge (rolling).

        The data plane keeps running, so its address, and with it every
        unchanged replica, stays as it is.
        """
        assert self.resolver is not None and self.proxy is not None and self.public is not None
        # The steps that can fail first (addresses, listeners), so a failure
        # leaves the running configuration in charge.
        config = await self._with_vips(config, self.config.vips)
        naming = NamingModel(config.spec, config.vips)
        await self.proxy.update(naming)
        self.config = config
        self.naming = naming
        if self.reconciler is not None:
            # Replicas started from now on see the new endpoints; older ones keep theirs.
            self.reconciler.sc_view = self.naming.endpoint_names
            self.reconciler.max_replicas = config.spec.workspace.max_replicas
        self.resolver.naming = self.naming
        self.public.update(self.naming)
        self.health.update(self.naming)
        self._persist(config)
        self._schedule_apply(config.desired)

    async def _with_vips(self, config: AgentConfig, previous: Mapping[str, str]) -> AgentConfig:
        """`config` with an address for every endpoint, put on the data plane's interface."""
        names = NamingModel(config.spec).endpoint_names
        vips = allocate(names, self._vip_block, previous)
        gone = [a for n, a in previous.items() if vips.get(n) != a]
        await asyncio.to_thread(vipnet.assign, self.address, sorted(vips.values()), gone)
        return dataclasses.replace(config, vips=vips)

    async def _release_vips(self) -> None:
        # Best effort at shutdown: the bridge may be gone already (`down`).
        with contextlib.suppress(Exception):
            await asyncio.to_thread(
                vipnet.assign, self.address, (), sorted(self.config.vips.values())
            )

    def _persist(self, config: AgentConfig) -> None:
        if config.state_file:
            path = Path(config.state_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(config.to_json())
            tmp.replace(path)  # atomic: a crash never leaves half a config

    async def _apply(
        self, desired: Mapping[str, DesiredService], previous: asyncio.Task[None] | None
    ) -> None:
        assert self.reconciler is not None
        if previous is not None and not previous.done():
            # One apply at a time: the reconciler's per-service locks don't
            # order whole applies.
            with contextlib.suppress(asyncio.CancelledError):
                await previous
        current = asyncio.current_task()
        try:
            await self.reconciler.apply(desired)
        except MeshlocalError as exc:
            log.error("%s", exc.render())
            if current is self._apply_task:  # a superseded apply's error is not the new one's
                self.apply_error = exc
        finally:
            if current is self._apply_task:
                self.applied.set()

    async def stop(self) -> None:
        await self._stack.aclose()

    async def _own_address(self, network: NetworkInfo) -> str:
        name = self.config.self_container
        if name is None:
            raise RuntimeFailure("the agent needs `advertise` or `self_container` to find itself")
        info = await asyncio.to_thread(self.engine.inspect, name)
        address = info.address_on(network.name) if info else None
        if not address:
            raise RuntimeFailure(
                f"the data-plane container {name} has no address on {network.name}"
            )
        return address

    # -- admin API --------------------------------------------------------

    async def _start_admin(self, core: ProxyCore) -> None:
        app = admin_app(core.metrics)
        app.middlewares.append(self._admin_guard)
        app.router.add_get(f"/{API_VERSION}/state", self._state)
        app.router.add_post(f"/{API_VERSION}/scale", self._scale)
        app.router.add_post(f"/{API_VERSION}/apply", self._reconfigure)
        app.router.add_post(f"/{API_VERSION}/replace", self._replace)
        app.router.add_get("/healthz", self._healthz)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self._host(self.config.admin_host), self.config.admin_port)
        await site.start()
        self._stack.push_async_callback(runner.cleanup)
        server: Any = site._server
        self.admin_port = server.sockets[0].getsockname()[1]

    @web.middleware
    async def _admin_guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        # In container mode the admin port listens on the environment's network,
        # where every replica could reach it (and /v1/apply starts containers).
        # Only the host may talk to it: via the published 127.0.0.1 port its
        # requests arrive from the network's gateway.
        gateway = self.network.gateway if self.network else None
        if not admin_peer_allowed(request.remote, gateway):
            return web.json_response(
                {"error": "the admin API answers only the host (its published 127.0.0.1 port)"},
                status=403,
            )
        response: web.StreamResponse = await handler(request)
        return response

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    def state(self) -> dict[str, Any]:
        """What `ps`, `up -d` and the pytest plugin read."""
        rec = self.reconciler
        services: dict[str, Any] = {}
        restarting = rec.restarting() if rec else []
        for svc in self.naming.services.values():
            desired = rec.desired.get(svc.name) if rec else None
            starting = [r for r in (rec.starting() if rec else []) if r.service == svc.name]
            replicas = sorted(
                [*self.registry.for_service(svc.name), *starting], key=lambda r: r.index
            )
            services[svc.name] = {
                "type": svc.type.value,
                "desired": desired.count if desired else 0,
                "port": svc.target_port,
                "discovery_name": (
                    self.naming.sd_name(svc.name) if svc.name in self.naming.registered else None
                ),
                "connect_endpoints": [
                    e.url for e in self.naming.sc_endpoints if e.service == svc.name
                ],
                "connect": self._endpoint_state(svc.name),
                "shadowed_name": self.naming.shadowed_name(svc.name),
                # Endpoints some replica of this client can't resolve: it started
                # before they existed (replace it to see them, as on ECS).
                "unresolved_endpoints": sorted(
                    {
                        e.name
                        for r in replicas
                        for e in self.naming.missing_from(svc.name, r.sc_view)
                    }
                ),
                # Replicas neither running nor starting: queued, or backing off.
                "not_started": rec.pending_starts(svc.name) if rec else 0,
                "ready": bool(rec and self.applied.is_set() and rec.service_ready(svc.name)),
                "restarting": [_crash_state(c) for c in restarting if c.service == svc.name],
                "replicas": [
                    {
                        "name": r.name,
                        "index": r.index,
                        "container_id": r.container_id,
                        "address": r.address,
                        "port": r.port,
                        "health": r.health.value,
                        "draining": r.draining,
                        "in_rotation": r.in_rotation,
                        "ejected_by": self.proxy.balancer.ejected_for(r) if self.proxy else [],
                        "sc_view": None if r.sc_view is None else sorted(r.sc_view),
                    }
                    for r in replicas
                ],
            }
        crashes = rec.crashes() if rec else []
        return {
            "project": self.config.project,
            "app": self.naming.app,
            "env": self.naming.env,
            "mode": self.config.mode,
            "address": self.address,
            "dns_port": self.dns.port if self.dns else None,
            "public_port": self.public_port if self.public and self.public.rules else None,
            "public_rules": [[p, s] for p, s in self.public.rules] if self.public else [],
            "applied": self.applied.is_set(),
            "ready": bool(rec and self.applied.is_set() and rec.all_ready()),
            "error": self.apply_error.render() if self.apply_error else None,
            "crashes": [
                {
                    "service": c.service,
                    "index": c.index,
                    "exit_code": c.exit_code,
                    "count": c.count,
                    "last_logs": c.last_logs,
                    "health": c.health.describe() if c.health else None,
                }
                for c in crashes
            ],
            "services": services,
        }

    def _endpoint_state(self, service: str) -> dict[str, Any] | None:
        ep = self.naming.endpoint_of(service)
        if ep is None:
            return None
        return {
            "name": ep.name,
            "port": ep.port,
            "url": ep.url,
            "vip": ep.vip,
            "protocol": ep.protocol.value,
        }

    async def _state(self, _: web.Request) -> web.Response:
        return web.json_response(self.state())

    async def _reconfigure(self, request: web.Request) -> web.Response:
        try:
            config = AgentConfig.from_json(await request.text())
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": f"bad configuration: {exc}"}, status=400)
        try:
            await self.reconfigure(config)
        except MeshlocalError as exc:
            return web.json_response({"error": exc.render()}, status=409)
        return web.json_response(self.state())

    async def _scale(self, request: web.Request) -> web.Response:
        assert self.reconciler is not None
        try:
            body = await request.json()
            service, count = str(body["service"]), int(body["count"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected {service, count}"}, status=400)
        try:
            # Returns at once: the caller waits for readiness with its own timeout.
            self.reconciler.request_scale(service, count)
        except MeshlocalError as exc:
            return web.json_response({"error": exc.render()}, status=409)
        return web.json_response(self.state())

    async def _replace(self, request: web.Request) -> web.Response:
        """Roll every replica of a service (`up --replace`): new tasks see every endpoint."""
        assert self.reconciler is not None
        try:
            body = await request.json()
            service = str(body["service"])
        except (ValueError, KeyError, TypeError):
            return web.json_response({"error": "expected {service}"}, status=400)
        try:
            await self.applied.wait()
            await self.reconciler.replace(service)
        except MeshlocalError as exc:
            return web.json_response({"error": exc.render()}, status=409)
        return web.json_response(self.state())


def _crash_state(crash: Crash) -> dict[str, Any]:
    return {
        "index": crash.index,
        "exit_code": crash.exit_code,
        "count": crash.count,
        "looping": crash.looping,
        "retry_in": round(crash.retry_in, 1),
        "status": crash.status(),
        "kept": crash.kept,
        "last_log": crash.last_logs[-1] if crash.last_logs else None,
        "health": crash.health.describe() if crash.health else None,
    }


def admin_peer_allowed(peer: str | None, gateway: str | None) -> bool:
    """Loopback, or the network's gateway (the host, through a published port)."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return True
    return gateway is not None and str(address) == gateway


CONFIG_ENV = "MESHLOCAL_AGENT_CONFIG"


async def serve(
    config: AgentConfig,
    engine: Engine | None = None,
    on_started: Callable[[Agent], None] | None = None,
) -> None:
    """Run an agent until SIGTERM/SIGINT; the data-plane container's main."""
    owned = engine is None
    if engine is None:
        engine = await asyncio.to_thread(Engine.from_env)
    agent = Agent(config, engine)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await agent.start()
        if on_started is not None:
            on_started(agent)
        await stop.wait()
    finally:
        await agent.stop()
        if owned:
            engine.close()


CONTAINER_STATE_FILE = "/var/lib/meshlocal/agent.json"


def config_from_environment() -> AgentConfig:
    """The last applied configuration if one was kept, else the one started with."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise RuntimeFailure(f"{CONFIG_ENV} is not set: the agent has no configuration")
    initial = AgentConfig.from_json(text)
    return load_kept(initial)


def load_kept(initial: AgentConfig) -> AgentConfig:
    if initial.state_file:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return AgentConfig.from_json(Path(initial.state_file).read_text())
    return initial
