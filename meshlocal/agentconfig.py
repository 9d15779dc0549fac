"""The controller's configuration: everything `up` decides, as JSON.

It may run where the workspace isn't (the controller's container), so it
carries the whole environment model; the controller keeps the last one
applied in its state file and resumes it when restarted.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshlocal.errors import RuntimeFailure
from meshlocal.manifest.codec import from_jsonable, to_jsonable
from meshlocal.manifest.model import EnvironmentSpec
from meshlocal.ports import ADMIN_PORT, PUBLIC_PORT, Mode
from meshlocal.proxy.settings import ProxySettings
from meshlocal.runtime.reconcile import DesiredService, desired_from_json, desired_to_json

CONFIG_ENV = "MESHLOCAL_AGENT_CONFIG"


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs, as JSON: it may run where the workspace isn't."""

    project: str
    spec: EnvironmentSpec
    desired: Mapping[str, DesiredService]
    mode: Mode = "container"
    bind: str = "0.0.0.0"  # DNS and Service Connect listen here
    advertise: str | None = None  # replicas' DNS and SC address; None: own network address
    self_container: str | None = None  # container mode: the data plane's container
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
    # Container mode: the image of the one-shot helper that puts those
    # addresses in the data plane's namespace (it needs NET_ADMIN; the data
    # plane has no capability at all). Any image with busybox's `ip`.
    helper_image: str | None = None
    # `up --env-var-override/--port-override` (overrides.Overrides.describe), for `ps`:
    # the environment is already in `desired`, the port in the published ports.
    overrides: Mapping[str, Any] = field(default_factory=dict)
    # Container mode: the host port the public endpoint is published on (the data
    # plane listens on PUBLIC_PORT inside), for the mesh page's link; 0: none.
    public_host_port: int = 0
    # "swarm": replicas are swarm services' tasks (runtime/swarm.py); else containers.
    orchestrator: str = "docker"

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
                "helper_image": self.helper_image,
                "overrides": dict(self.overrides),
                "public_host_port": self.public_host_port,
                "orchestrator": self.orchestrator,
            },
            sort_keys=True,
        )

    def digest(self) -> str:
        """Names this exact configuration: `up` sends none a running controller has."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]

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


def config_from_environment() -> AgentConfig:
    """The last applied configuration if one was kept, else the one started with."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise RuntimeFailure(f"{CONFIG_ENV} is not set: the controller has no configuration")
    initial = AgentConfig.from_json(text)
    return load_kept(initial)


def load_kept(initial: AgentConfig) -> AgentConfig:
    if initial.state_file:
        with contextlib.suppress(OSError, ValueError, KeyError):
            return AgentConfig.from_json(Path(initial.state_file).read_text())
    return initial
