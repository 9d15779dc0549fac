"""The local SNS/SQS container: its image, its address, its provisioning.

moto in server mode, in a container of its own on the environment's
network, so its topics, queues and messages outlive a data-plane restart
(they live in its memory: a restart of the emulator itself keeps the
topics and queues, which it provisions again, and loses the messages).
Started by `up` only when some service publishes or is a Worker Service;
removed by `down` with everything else of the project (by label).

Replicas reach it at a fixed address (vips.emulator_address), the host at
a published loopback port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import docker

from meshlocal.errors import DataPlaneError, MeshlocalError
from meshlocal.manifest.model import EnvironmentSpec
from meshlocal.pubsub import provision as provision_module
from meshlocal.pubsub import serve as serve_module
from meshlocal.pubsubplan import PubSubPlan, QueuePlan, SubscriptionPlan, TopicPlan
from meshlocal.pubsubplan import plan as pubsub_plan
from meshlocal.runtime import images
from meshlocal.runtime import labels as L
from meshlocal.runtime.dataplane import published_ports
from meshlocal.runtime.engine import ContainerSpec, Engine, NetworkInfo
from meshlocal.runtime.tunnel import on_overlay, reach
from meshlocal.vips import emulator_address

EMULATOR_PORT = 4566  # LocalStack's, which SDK users know
_READY_TIMEOUT = 60.0

EMULATOR_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY site/ /opt/meshlocal-pubsub/site/
# Byte-compiled once here: moto's imports are many, and every start waits for them.
RUN python3 -m compileall -q -j 0 /opt/meshlocal-pubsub/site >/dev/null || true
# The plan `up` leaves here survives a restart of the container (its writable layer).
RUN mkdir -p /var/lib/meshlocal-pubsub && chown 65534:65534 /var/lib/meshlocal-pubsub
ENV PYTHONPATH=/opt/meshlocal-pubsub/site PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
LABEL meshlocal.image=pubsub
USER 65534
ENTRYPOINT ["python3", "/opt/meshlocal-pubsub/site/serve.py"]
"""


def moto_version() -> str:
    return metadata.version("moto")


def _image_files() -> dict[str, Path]:
    files = images.distribution_files(images.runtime_distributions(*images.EMULATOR_ROOTS))
    for module in (serve_module, provision_module):
        assert module.__file__ is not None
        files[Path(module.__file__).name] = Path(module.__file__)
    return files


def ensure_image(client: docker.DockerClient, progress: images.Progress) -> str:
    """The emulator's image: the Python base plus moto and its server, offline.

    Tagged by moto's version and a hash of the distributions' versions and
    meshlocal's two entry files (hashing moto's 50 MB on every `up` would cost
    more than it tells).
    """
    base = images.ensure_python_base(client, progress=progress)
    dists = images.runtime_distributions(*images.EMULATOR_ROOTS)
    digest = hashlib.sha256()
    digest.update(str(client.images.get(base).id).encode())
    digest.update(EMULATOR_DOCKERFILE.encode())
    for dist in dists:
        digest.update(f"{dist.metadata['Name']}=={dist.version}\0".encode())
    for module in (serve_module, provision_module):
        assert module.__file__ is not None
        digest.update(Path(module.__file__).read_bytes())
    tag = f"meshlocal/pubsub:{moto_version()}-{digest.hexdigest()[:12]}"
    if images.image_exists(client, tag):
        return tag
    files = _image_files()
    progress(f"building {tag}: moto {moto_version()}, the local SNS/SQS ({len(files)} files)")
    images.build_site_image(
        client, tag, base, files, EMULATOR_DOCKERFILE, progress, "the SNS/SQS emulator image"
    )
    images.prune_images(client, "meshlocal/pubsub", keep=tag)
    return tag


@dataclass(frozen=True)
class Emulator:
    container_id: str
    address: str  # on the environment's network
    host_port: int
    image: str = ""
    reached: str = ""  # host_url through a tunnel, for a remote engine (tunnel.py)

    @property
    def endpoint(self) -> str:
        """What replicas use: AWS_ENDPOINT_URL_SNS/SQS, and queue URLs' base."""
        return endpoint_for(self.address)

    @property
    def host_url(self) -> str:
        return self.reached or f"http://127.0.0.1:{self.host_port}"


def endpoint_for(address: str) -> str:
    return f"http://{address}:{EMULATOR_PORT}"


def emulator_spec(
    project: str,
    env: str,
    image: str,
    network: NetworkInfo,
    workspace: Path | None,
    host_port: int = 0,
) -> ContainerSpec:
    """`host_port`: the loopback port to publish on (0: any); a port given explicitly stays
    the same when Docker restarts the container, so a host client keeps its endpoint."""
    assert network.subnet is not None
    name = L.pubsub_name(project, env)
    labels = L.base_labels(project, env, L.Role.PUBSUB, workspace)
    spec = ContainerSpec(
        name=name,
        image=image,
        labels=labels,
        command=("--port", str(EMULATOR_PORT)),
        network=network.name,
        hostname=L.hostname_for(name),
        ports={EMULATOR_PORT: ("127.0.0.1", host_port)},
        cap_drop=("ALL",),
        security_opt=("no-new-privileges",),
        tmpfs={"/tmp": "rw,nosuid,nodev,noexec,size=64m"},
        # Docker brings it back after a crash or an engine restart; serve.py
        # then provisions again from the plan left in the container.
        restart_policy="unless-stopped",
        ipv4_address=emulator_address(network.subnet),
    )
    identity = json.dumps([image, str(network.id), spec.ipv4_address]).encode()
    labels[L.CONFIG_HASH] = hashlib.sha256(identity).hexdigest()[:16]
    return spec


def find(engine: Engine, project: str, env: str) -> Emulator | None:
    """The running emulator of an environment, or None."""
    for info in engine.list_containers(project, env, role=L.Role.PUBSUB):
        if not info.running:
            continue
        address = next(iter(info.addresses.values()), None)
        port = published_ports(engine, info.id).get(EMULATOR_PORT)
        if address and port:
            overlay = on_overlay(engine, L.network_name(project, env))
            reached = reach(engine, info.id, EMULATOR_PORT, port, overlay=overlay)
            return Emulator(info.id, address, port, info.image, reached)
    return None


def start(
    engine: Engine,
    project: str,
    spec: EnvironmentSpec,
    network: NetworkInfo,
    workspace: Path | None,
    progress: images.Progress,
    *,
    subset: bool = False,
) -> Emulator | None:
    """The emulator `up` leaves: running and provisioned with the environment's plan, or
    None (removed) when no service publishes or is a Worker Service. With `subset`
    (`up SERVICE...`) it only adds and updates, and a running one stays whatever
    this subset needs."""
    plan = pubsub_plan(spec)
    if not plan:
        if subset:
            return find(engine, project, spec.env)
        remove(engine, project, spec.env)
        return None
    emulator = ensure(engine, project, spec.env, network, workspace, progress)
    done = provision(engine, emulator, plan, spec.workspace.region, prune=not subset)
    if done["created"]:
        progress(f"SNS/SQS: {done['created']} topic(s), queue(s) and subscription(s) created")
    for note in done["notes"]:
        progress(f"SNS/SQS: {note}")
    return emulator


def ensure(
    engine: Engine,
    project: str,
    env: str,
    network: NetworkInfo,
    workspace: Path | None,
    progress: images.Progress,
) -> Emulator:
    """The environment's emulator, running and answering: kept when unchanged (with its
    messages), else replaced."""
    image = ensure_image(engine.client, progress)
    kept = find(engine, project, env)
    spec = emulator_spec(
        project, env, image, network, workspace, kept.host_port if kept else _free_port()
    )
    for old in engine.list_containers(project, env, role=L.Role.PUBSUB):
        if old.running and old.config_hash == spec.labels[L.CONFIG_HASH]:
            found = find(engine, project, env)
            if found is not None:
                return found
        engine.remove(old.id)
    progress(f"starting the SNS/SQS emulator (moto {moto_version()}) at {spec.ipv4_address}")
    cid = engine.create_container(spec)
    engine.start(cid)
    port = published_ports(engine, cid).get(EMULATOR_PORT)
    if port is None:
        raise DataPlaneError("the SNS/SQS emulator's port was not published")
    assert spec.ipv4_address is not None
    reached = reach(engine, cid, EMULATOR_PORT, port, overlay=network.driver == "overlay")
    emulator = Emulator(cid, spec.ipv4_address, port, image, reached)
    wait_ready(engine, emulator)
    return emulator


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def stopped(engine: Engine, project: str, env: str) -> str | None:
    """The state of an emulator container that exists but does not run (None: none such)."""
    for info in engine.list_containers(project, env, role=L.Role.PUBSUB):
        if not info.running:
            return info.state
    return None


def wait_ready(engine: Engine, emulator: Emulator, timeout: float = _READY_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(emulator.host_url + "/_meshlocal/ready", timeout=2):
                return
        except (urllib.error.URLError, OSError):
            info = engine.inspect(emulator.container_id)
            if info is None or time.monotonic() > deadline or info.state == "exited":
                logs = "\n".join(engine.logs(emulator.container_id, 20))
                raise DataPlaneError(
                    f"the SNS/SQS emulator did not answer within {timeout:.0f}s",
                    hint=f"its last output:\n{logs}" if logs else None,
                ) from None
            time.sleep(0.1)


def plan_document(plan: PubSubPlan, region: str) -> dict[str, Any]:
    """The plan as provision.apply reads it, with the manifests' names too (JSON-able).

    Left in the container: `stats`, `publish` and `queue peek` name what the
    running mesh has from it, whatever the manifests say now.
    """
    return {
        "region": region,
        "topics": [dataclasses.asdict(t) for t in plan.topics],
        "queues": [dataclasses.asdict(q) for q in plan.queues],
        "subscriptions": [dataclasses.asdict(s) for s in plan.subscriptions],
    }


def plan_from_document(doc: dict[str, Any]) -> PubSubPlan:
    return PubSubPlan(
        topics=tuple(TopicPlan(**t) for t in doc["topics"]),
        queues=tuple(QueuePlan(**q) for q in doc["queues"]),
        subscriptions=tuple(SubscriptionPlan(**s) for s in doc["subscriptions"]),
    )


def applied(engine: Engine, emulator: Emulator) -> tuple[PubSubPlan, str]:
    """(the plan `up` last applied, its region), from the emulator's own copy."""
    text = engine.read_file(emulator.container_id, serve_module.PLAN_FILE)
    try:
        doc = json.loads(text or "")
        return plan_from_document(doc), str(doc["region"])
    except (ValueError, KeyError, TypeError):
        raise DataPlaneError(
            "the SNS/SQS emulator holds no plan meshlocal can read",
            hint="`meshlocal up -d` provisions it again",
        ) from None


def provision(
    engine: Engine, emulator: Emulator, plan: PubSubPlan, region: str, *, prune: bool = True
) -> dict[str, Any]:
    """Create, update and delete so the emulator holds exactly `plan`; kept for a restart.

    Without `prune` (`up SERVICE...`) it only adds and updates, and the plan
    kept for a restart is the previous one plus this.
    """
    document = plan_document(plan, region)
    if not prune:
        kept = engine.read_file(emulator.container_id, serve_module.PLAN_FILE)
        with contextlib.suppress(ValueError, TypeError, KeyError):
            document = provision_module.merge(json.loads(kept or ""), document)
    engine.write_file(
        emulator.container_id, serve_module.PLAN_FILE, json.dumps(document).encode(), 0o644
    )
    try:
        return provision_module.apply(document, emulator.host_url, prune=prune)
    except MeshlocalError:
        raise
    except Exception as exc:  # botocore's errors: the emulator refused the plan
        raise DataPlaneError(
            f"could not create the topics and queues in the SNS/SQS emulator: {exc}",
            hint="`meshlocal logs` shows the emulator's output (meshlocal-pubsub)",
        ) from exc


def remove(engine: Engine, project: str, env: str) -> list[str]:
    """The emulator of an environment that no longer needs one; the names removed."""
    gone = []
    for info in engine.list_containers(project, env, role=L.Role.PUBSUB):
        engine.remove(info.id)
        gone.append(info.name)
    return gone
