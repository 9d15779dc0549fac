"""`up --env-var-override` and `up --port-override`: Copilot's `run local` flags, here.

Copilot (internal/pkg/cli/run_local.go, flag.go) reads
`--env-var-override [container]:KEY=VALUE` and `--port-override
<host port>:<service port>` for the one task it runs. meshlocal runs every
service of an environment, so the container is a service (its main
container) or `SERVICE/SIDECAR`, and the only port published on the host is
the public endpoint of the Load Balanced Web Services.

Pure: parsing, checking against the environment's spec, applying to replica
templates, and the text `ps` shows. Light to import: `cli/up.py` declares
its options with the parsers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from meshlocal.errors import MeshlocalError, ServiceNotFound

if TYPE_CHECKING:
    from meshlocal.manifest.model import EnvironmentSpec
    from meshlocal.runtime.reconcile import ReplicaTemplate

ENV_FORMAT = "[SERVICE[/SIDECAR]:]KEY=VALUE"
PORT_FORMAT = "HOSTPORT:SERVICEPORT"
# Portable variable names (letters, digits, `_`, and `.`/`-` as Java-style names use).
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class OverrideSyntaxError(ValueError):
    """A flag value that can't be read; the CLI turns it into a usage error."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(f"{message} ({hint})")
        self.message = message
        self.hint = hint


class OverrideError(MeshlocalError):
    """A well-formed override that names nothing this environment has."""


@dataclass(frozen=True)
class EnvOverride:
    key: str
    value: str
    service: str | None = None  # None: every container of every service (Copilot's "all")
    sidecar: str | None = None

    @property
    def target(self) -> str | None:
        if self.service is None:
            return None
        return f"{self.service}/{self.sidecar}" if self.sidecar else self.service

    def __str__(self) -> str:
        prefix = f"{self.target}:" if self.target else ""
        return f"{prefix}{self.key}={self.value}"


@dataclass(frozen=True)
class PortOverride:
    host: int
    service_port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.service_port}"


def parse_env_override(text: str) -> EnvOverride:
    """`[SERVICE[/SIDECAR]:]KEY=VALUE`; the value is everything after the first `=`."""
    hint = f"write {ENV_FORMAT}, e.g. `--env-var-override api:LOG_LEVEL=debug`"
    left, sep, value = text.partition("=")
    if not sep:
        raise OverrideSyntaxError(f"{text!r} has no '='", hint)
    # As Copilot: the container is what precedes the first ':' of the part before '='.
    target, colon, key = left.partition(":")
    if not colon:
        target, key = "", left
    elif not target:
        raise OverrideSyntaxError(f"{text!r} has nothing before ':'", hint)
    service, slash, sidecar = target.partition("/")
    if colon and not all(_NAME.fullmatch(n) for n in ((service, sidecar) if slash else (service,))):
        raise OverrideSyntaxError(f"{text!r}: {target!r} is no SERVICE or SERVICE/SIDECAR", hint)
    if not _KEY.fullmatch(key):
        raise OverrideSyntaxError(
            f"{text!r}: {key!r} is no variable name (letters, digits, '_', '.', '-'; "
            "not starting with a digit)",
            hint,
        )
    return EnvOverride(key, value, service or None, sidecar or None)


def parse_port_override(text: str) -> PortOverride:
    """`HOSTPORT:SERVICEPORT`, two numbers (Copilot: "should be in format 8080:80")."""
    parts = text.split(":")
    if len(parts) != 2 or not all(p.isascii() and p.isdigit() for p in parts):
        raise OverrideSyntaxError(
            f"{text!r} should be in format 8080:80",
            f"write {PORT_FORMAT}, e.g. `--port-override 8000:80` puts the service's "
            "port 80 on localhost:8000",
        )
    host, port = int(parts[0]), int(parts[1])
    for number in (host, port):
        if not 1 <= number <= 65535:
            raise OverrideSyntaxError(
                f"{text!r}: port {number} is out of range", "ports are 1 to 65535"
            )
    return PortOverride(host, port)


# -- the environment's side -------------------------------------------------------------------


@dataclass(frozen=True)
class Overrides:
    """What one `up` was given, checked: applied to the templates, kept in the config."""

    env: tuple[EnvOverride, ...] = ()
    ports: tuple[PortOverride, ...] = ()
    public_port: int = 0  # the public endpoint's host port the port overrides ask for

    def describe(self) -> dict[str, Any]:
        """As the controller's configuration carries it, for `ps` (`/v1/state`)."""
        return {
            "env": [{"target": o.target, "key": o.key, "value": o.value} for o in self.env],
            "ports": [{"host": p.host, "service_port": p.service_port} for p in self.ports],
        }


NO_OVERRIDES = Overrides()


def check(
    spec: EnvironmentSpec,
    env: Sequence[EnvOverride],
    ports: Sequence[PortOverride],
    public_port: int = 0,
) -> Overrides:
    """Overrides checked against the environment, before anything is built or started.

    `public_port`: `--port`, which must agree with the port overrides.
    """
    services = {s.name: s for s in spec.services}
    for o in env:
        if o.service is None:
            continue
        if o.service not in services:
            # The words every command uses for an unknown service (cli/running.py).
            raise ServiceNotFound(
                f'no service "{o.service}" in environment {spec.env} of application {spec.app}',
                hint=f"services: {', '.join(sorted(services)) or 'none'}",
            )
        sidecars = [sc.name for sc in services[o.service].sidecars]
        if o.sidecar is not None and o.sidecar not in sidecars:
            raise OverrideError(
                f"--env-var-override {o}: service {o.service} has no sidecar {o.sidecar!r}",
                hint=f"sidecars of {o.service}: {', '.join(sidecars) or 'none'}; "
                f"`{o.service}:{o.key}=...` targets its main container",
            )
    return Overrides(tuple(env), tuple(ports), _public_port(spec, ports, public_port))


def _public_port(spec: EnvironmentSpec, ports: Sequence[PortOverride], public_port: int) -> int:
    from meshlocal.naming import NamingModel, public_rules  # the manifest model: only when needed

    on_public: dict[int, list[str]] = {}
    for _path, name in public_rules(NamingModel(spec)):
        port = spec.service(name).target_port
        if port is not None and name not in on_public.setdefault(port, []):
            on_public[port].append(name)
    choices = ", ".join(f"{p} ({', '.join(sorted(n))})" for p, n in sorted(on_public.items()))
    hint = (
        f"ports that can be overridden: {choices}, the port the public endpoint forwards to"
        if choices
        else "no service is published on the host here: only a Load Balanced Web Service "
        "with http.path is (the public endpoint)"
    )
    chosen: PortOverride | None = None
    for p in ports:
        if p.service_port not in on_public:
            owners = sorted(
                f"{s.name} ({s.type.value})"
                for s in spec.services
                if p.service_port in (s.port, s.target_port)
                or any(sc.port == p.service_port for sc in s.sidecars)
            )
            why = (
                f"port {p.service_port} is {', '.join(owners)}'s, and meshlocal publishes on "
                "the host only the public endpoint of Load Balanced Web Services"
                if owners
                else f"no service listens on port {p.service_port}"
            )
            raise OverrideError(f"--port-override {p}: {why}", hint=hint)
        if chosen is not None and chosen.host != p.host:
            raise OverrideError(
                f"--port-override {chosen} and {p} put the one public endpoint on two host ports",
                hint="give every service behind the public endpoint the same host port",
            )
        chosen = p
    if chosen is None:
        return 0
    if public_port and public_port != chosen.host:
        raise OverrideError(
            f"--port {public_port} and --port-override {chosen} name two host ports for the "
            "public endpoint",
            hint="give one of them",
        )
    return chosen.host


def env_for(env: Iterable[EnvOverride], service: str, sidecar: str | None = None) -> dict[str, str]:
    """The overrides one container gets: everyone's, then its own (the more precise wins)."""
    general = {o.key: o.value for o in env if o.service is None}
    own = {o.key: o.value for o in env if o.service == service and o.sidecar == sidecar}
    return {**general, **own}


def apply(template: ReplicaTemplate, env: Sequence[EnvOverride]) -> ReplicaTemplate:
    """The template with the overrides last in each container's environment: they win.

    Part of the template, so a changed override rolls the service, and an
    `up` without it rolls it back.
    """
    if not env:
        return template
    sidecars = tuple(
        replace(sc, environment={**sc.environment, **env_for(env, template.service, sc.name)})
        for sc in template.sidecars
    )
    main = {**template.environment, **env_for(env, template.service)}
    return replace(template, environment=main, sidecars=sidecars)


def summary(doc: Mapping[str, Any] | None) -> str | None:
    """`ps`'s line for the overrides in `/v1/state`, or None when there are none."""
    if not doc:
        return None
    parts: list[str] = []
    by_target: dict[str, list[str]] = {}
    for o in doc.get("env") or []:
        target = o.get("target") or "all containers"
        by_target.setdefault(str(target), []).append(f"{o['key']}={o['value']}")
    parts += [f"{target}: {' '.join(kv)}" for target, kv in by_target.items()]
    for p in doc.get("ports") or []:
        parts.append(
            f"public endpoint 127.0.0.1:{p['host']} "
            f"(--port-override {p['host']}:{p['service_port']})"
        )
    return f"overrides: {'; '.join(parts)}" if parts else None
