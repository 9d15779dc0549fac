"""Labels and names of everything meshlocal creates in Docker.

Everything is labelled, testcontainers-style, so `down` finds it by label
even after meshlocal was killed with SIGKILL: no state file is needed.

Names never shadow mesh names: Docker's embedded DNS (127.0.0.11) answers
container names and network aliases before it forwards a query to the mesh
DNS, so a container called `api` would hijack `api` for every client. Every
name here is prefixed with the project and environment.
"""

from __future__ import annotations

import hashlib
import re
from enum import StrEnum
from pathlib import Path

PROJECT = "meshlocal.project"  # <app>-<hash of the workspace root>
ENV = "meshlocal.env"
SERVICE = "meshlocal.service"
REPLICA = "meshlocal.replica"  # 1-based index
ROLE = "meshlocal.role"
CONFIG_HASH = "meshlocal.config-hash"  # a change means: roll the service
SIDECAR = "meshlocal.sidecar"  # the sidecar's container name in the manifest
WORKSPACE = "meshlocal.workspace"  # the workspace root, for humans and `ps`
PORT = "meshlocal.port"  # the replica's target port, so an adopter needs no manifest
# The Service Connect endpoints that existed when a replica started (comma
# separated): what it can resolve until it is replaced, as on ECS.
SC_VIEW = "meshlocal.sc-view"
IMAGE_KIND = "meshlocal.image"  # on images meshlocal builds: python-base, busybox, dataplane


class Role(StrEnum):
    REPLICA = "replica"
    SIDECAR = "sidecar"
    PAUSE = "pause"  # holds a task's network namespace when sidecars must start first
    DATAPLANE = "dataplane"  # DNS and proxies: faces replicas, holds no engine access
    CONTROLLER = "controller"  # holds the engine, faces no traffic
    NETWORK = "network"
    PROBE = "probe"  # short-lived helpers (resolve --from, tests)
    # `meshlocal run`: the one-off's network holder, a Service Connect client of
    # its service to DNS, never a replica; and its command, in the holder's namespace.
    RUN = "run"
    RUN_COMMAND = "run-command"
    PUBSUB = "pubsub"  # the local SNS/SQS (moto), while some service publishes or subscribes
    # Swarm mode: a swarm service (its tasks are replicas), and a container that
    # claims an endpoint address on the overlay for the data plane (swarm.py).
    SERVICE = "service"
    VIP_HOLDER = "vip-holder"


_UNSAFE = re.compile(r"[^a-z0-9_.-]+")


def _slug(text: str) -> str:
    slug = _UNSAFE.sub("-", text.lower()).strip("-.")
    return slug or "x"


def slug(text: str) -> str:
    """A name part Docker accepts (lower-case letters, digits, `_.-`)."""
    return _slug(text)


def project_id(app: str, root: Path) -> str:
    """`<app>-<8 hex>`: two workspaces of the same app never collide."""
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:8]
    return f"{_slug(app)}-{digest}"


def network_name(project: str, env: str) -> str:
    return f"{project}-{_slug(env)}"


def container_name(project: str, env: str, service: str, index: int) -> str:
    """`kudos-1a2b3c4d-test-api-1`: unique, and never equal to a mesh name."""
    return f"{project}-{_slug(env)}-{_slug(service)}-{index}"


def swarm_service_name(project: str, env: str, service: str) -> str:
    """`kudos-1a2b3c4d-test-api`: a swarm service's name is a name on the network."""
    return f"{project}-{_slug(env)}-{_slug(service)}"


def sidecar_name(project: str, env: str, service: str, index: int, sidecar: str) -> str:
    return f"{container_name(project, env, service, index)}-{_slug(sidecar)}"


def dataplane_name(project: str, env: str) -> str:
    return f"{project}-{_slug(env)}-meshlocal"


def controller_name(project: str, env: str) -> str:
    return f"{project}-{_slug(env)}-meshlocal-controller"


def pubsub_name(project: str, env: str) -> str:
    return f"{project}-{_slug(env)}-meshlocal-pubsub"


def link_volume_name(project: str, env: str) -> str:
    """The volume only the data plane and the controller mount: their link."""
    return f"{project}-{_slug(env)}-meshlocal-link"


def hostname_for(name: str) -> str:
    """A container's hostname: its name, cut to the 63 bytes a DNS label allows."""
    return name[:63].rstrip("-.")


def parse_view(value: str | None) -> frozenset[str] | None:
    """The SC_VIEW label back as a set; None when the replica carries none."""
    if value is None:
        return None
    return frozenset(n for n in value.split(",") if n)


def base_labels(
    project: str, env: str, role: Role, workspace: Path | None = None
) -> dict[str, str]:
    labels = {PROJECT: project, ENV: env, ROLE: role.value}
    if workspace is not None:
        labels[WORKSPACE] = str(workspace)
    return labels


def filters(
    project: str,
    env: str | None = None,
    *,
    role: Role | None = None,
    service: str | None = None,
) -> list[str]:
    """Docker `label` filters (ANDed by the engine) selecting our objects."""
    out = [f"{PROJECT}={project}"]
    if env is not None:
        out.append(f"{ENV}={env}")
    if role is not None:
        out.append(f"{ROLE}={role.value}")
    if service is not None:
        out.append(f"{SERVICE}={service}")
    return out
