"""Which Docker engine meshlocal talks to, and whether it runs on this machine.

The docker CLI's rules, in its order: `--context NAME`, then `DOCKER_HOST`,
then `DOCKER_CONTEXT`, then the current context of ~/.docker/config.json.
A context is applied by setting `DOCKER_HOST` (and its TLS variables) for
this process, so every later `Engine.from_env`, the quick path included,
reaches the same engine.

An engine is *local* when its socket is a unix socket on this machine:
then published 127.0.0.1 ports are this machine's. Any other (tcp://,
ssh://) is *remote*: its 127.0.0.1 is another host's, and meshlocal reaches
published ports through the engine itself (tunnel.py).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from meshlocal.errors import DockerUnavailable

DEFAULT_HOST = "unix:///var/run/docker.sock"
# The daemon's own socket on the engine's host, bind-mounted into the
# controller. A remote engine's path can't be asked of the API.
ENGINE_SOCKET_ENV = "MESHLOCAL_ENGINE_SOCKET"
REMOTE_ENV = "MESHLOCAL_ENGINE_REMOTE"  # "1": treat a unix socket as another host's


@dataclass(frozen=True)
class EngineHost:
    """Where the engine is: its URL and whether its 127.0.0.1 is ours."""

    url: str
    context: str | None = None

    @property
    def scheme(self) -> str:
        return urlparse(self.url).scheme or "unix"

    @property
    def remote(self) -> bool:
        if os.environ.get(REMOTE_ENV) == "1":
            return True
        return self.scheme not in ("unix", "npipe")

    @property
    def ssh(self) -> bool:
        return self.scheme == "ssh"

    def describe(self) -> str:
        where = "remote" if self.remote else "local"
        named = f"context {self.context}, " if self.context else ""
        return f"{self.url} ({named}{where})"


def current() -> EngineHost:
    """The engine this process talks to, after `apply_context`."""
    return EngineHost(
        os.environ.get("DOCKER_HOST") or DEFAULT_HOST,
        os.environ.get("MESHLOCAL_DOCKER_CONTEXT") or None,
    )


def _config_dir() -> Path:
    return Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def _current_context_name() -> str | None:
    """DOCKER_CONTEXT, else config.json's currentContext; None for "default"."""
    name = os.environ.get("DOCKER_CONTEXT")
    if not name:
        try:
            config = json.loads((_config_dir() / "config.json").read_text())
        except (OSError, ValueError):
            return None
        name = config.get("currentContext") if isinstance(config, dict) else None
    return None if not name or name == "default" else str(name)


def apply_context(name: str | None) -> EngineHost:
    """Select the engine as the docker CLI would; `name` is `--context`.

    An explicit `--context` wins over DOCKER_HOST (as `docker --context`
    does); without one, DOCKER_HOST wins over any context.
    """
    if name is None:
        if os.environ.get("DOCKER_HOST"):
            return current()
        name = _current_context_name()
        if name is None:
            return current()
    if name == "default":
        os.environ.pop("DOCKER_HOST", None)
        os.environ["MESHLOCAL_DOCKER_CONTEXT"] = name
        return current()
    host, tls_dir, skip_verify = _read_context(name)
    os.environ["DOCKER_HOST"] = host
    os.environ["MESHLOCAL_DOCKER_CONTEXT"] = name
    # A named context ignores the TLS variables, as `docker --context` does.
    os.environ.pop("DOCKER_CERT_PATH", None)
    os.environ.pop("DOCKER_TLS_VERIFY", None)
    if tls_dir is not None:
        os.environ["DOCKER_CERT_PATH"] = str(tls_dir)
        os.environ["DOCKER_TLS_VERIFY"] = "" if skip_verify else "1"
    return current()


def _read_context(name: str) -> tuple[str, Path | None, bool]:
    """(host, TLS folder or None, skip TLS verify) of a context, as the docker CLI
    stores it: contexts/meta/<sha256(name)>/meta.json under the config folder.
    (The SDK's ContextAPI finds that folder only when config.json exists.)"""
    ident = hashlib.sha256(name.encode()).hexdigest()
    meta = _config_dir() / "contexts" / "meta" / ident / "meta.json"
    hint = (
        "`docker context ls` lists them; create one with "
        f"`docker context create {name} --docker host=ssh://user@host`"
    )
    try:
        data = json.loads(meta.read_text())
    except FileNotFoundError:
        raise DockerUnavailable(f"no Docker context named {name}", hint=hint) from None
    except (OSError, ValueError) as exc:
        raise DockerUnavailable(
            f"the Docker context {name} can't be read ({meta}): {exc}"
        ) from None
    endpoints = data.get("Endpoints") if isinstance(data, dict) else None
    endpoint = endpoints.get("docker") if isinstance(endpoints, dict) else None
    if not isinstance(endpoint, dict):
        endpoint = {}
    host = endpoint.get("Host")
    if not host:
        raise DockerUnavailable(f"the Docker context {name} has no docker endpoint", hint=hint)
    tls = _config_dir() / "contexts" / "tls" / ident / "docker"
    return str(host), tls if tls.is_dir() else None, bool(endpoint.get("SkipTLSVerify"))


def engine_socket() -> str:
    """The path of the remote daemon's own socket, on its host."""
    return os.environ.get(ENGINE_SOCKET_ENV) or "/var/run/docker.sock"


def require_local(host: EngineHost, what: str, hint: str) -> None:
    """Refuse what only works beside the engine (`what` says why) when it is remote."""
    if host.remote:
        raise DockerUnavailable(f"{what}, and the engine at {host.url} is remote", hint=hint)
