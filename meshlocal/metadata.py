"""The ECS Task Metadata Endpoint (v4, and v3) documents: data in, dicts out.

Every replica container and sidecar gets `ECS_CONTAINER_METADATA_URI_V4`
(and `ECS_CONTAINER_METADATA_URI`, v3) pointing at the data plane, which
answers with documents shaped as Fargate's (Amazon ECS Developer Guide,
"Task metadata endpoint version 4 for tasks on Fargate"). The controller
knows each task's containers from the engine and sends them over the link
as `TaskRecord`s: names, ids, images, times, the task's address. No
environment, no labels of the user's: nothing a replica could not see of
itself anyway. Pure: no I/O here.
"""

from __future__ import annotations

import ipaddress
import uuid
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

# The ECS agent's own port for this endpoint (ECS DNATs 169.254.170.2:80 to it).
# It is served on the data plane's address: 169.254.170.2 would need a route
# or a NAT rule inside every replica or on the host, i.e. a privilege.
METADATA_PORT = 51679
URI_V4 = "ECS_CONTAINER_METADATA_URI_V4"
URI_V3 = "ECS_CONTAINER_METADATA_URI"
# Copilot's defaults (`cpu: 256`, `memory: 512`), set at the task level only.
DEFAULT_CPU_UNITS = 256
DEFAULT_MEMORY_MIB = 512
EPHEMERAL_RESERVED_MIB = 20496  # what a Fargate task with the default 20 GiB reports

Version = Literal["v3", "v4"]


@dataclass(frozen=True)
class TaskContainer:
    """One container of a task as the engine reports it."""

    name: str  # as in the task definition: the service's name, or the sidecar's
    docker_id: str
    docker_name: str
    image: str
    image_id: str
    created_at: str
    started_at: str
    finished_at: str = ""
    exit_code: int | None = None
    running: bool = True


@dataclass(frozen=True)
class TaskRecord:
    """One task (replica): what its metadata documents are made of."""

    task_id: str
    service: str
    index: int
    address: str  # the task's address: every container of it shares the namespace
    mac: str
    containers: tuple[TaskContainer, ...]

    def container(self, key: str) -> TaskContainer | None:
        for c in self.containers:
            if container_key(c.name) == key:
                return c
        return None


@dataclass(frozen=True)
class Context:
    """What the environment adds: names, region, the network."""

    app: str
    env: str
    region: str
    account: str
    subnet: str | None = None  # e.g. 172.27.0.0/16
    gateway: str | None = None
    dns: str | None = None  # the replicas' DNS server: the data plane
    ports: Mapping[tuple[str, str], int] | None = None  # (service, container) -> port
    # service -> (CPU units, memory MiB), the manifest's `cpu` and `memory`
    sizes: Mapping[str, tuple[int, int]] | None = None

    @property
    def cluster_name(self) -> str:
        # Copilot's cluster is CloudFormation-named `{app}-{env}-Cluster-<random>`.
        return f"{self.app}-{self.env}-Cluster"

    @property
    def cluster_arn(self) -> str:
        return f"arn:aws:ecs:{self.region}:{self.account}:cluster/{self.cluster_name}"

    def family(self, service: str) -> str:
        return f"{self.app}-{self.env}-{service}"  # Copilot's task definition family

    def task_arn(self, task_id: str) -> str:
        return f"arn:aws:ecs:{self.region}:{self.account}:task/{self.cluster_name}/{task_id}"


# -- the URI -------------------------------------------------------------------------


def container_key(name: str) -> str:
    """A number per container name, as Fargate's ids end in one (`<task>-<number>`)."""
    return str(zlib.crc32(name.encode()))


def endpoint_id(task_id: str, name: str) -> str:
    return f"{task_id}-{container_key(name)}"


def split_id(ident: str) -> tuple[str, str] | None:
    task, sep, key = ident.rpartition("-")
    if not sep or not task or not key.isdigit():
        return None
    return task, key


def uri_vars(base: str, task_id: str, name: str) -> dict[str, str]:
    """The two variables of one container; `base`: `http://<data plane>:<port>`."""
    ident = endpoint_id(task_id, name)
    return {URI_V4: f"{base}/v4/{ident}", URI_V3: f"{base}/v3/{ident}"}


# -- the documents -------------------------------------------------------------------


def container_document(
    ctx: Context, task: TaskRecord, c: TaskContainer, version: Version = "v4"
) -> dict[str, Any]:
    """`GET ${ECS_CONTAINER_METADATA_URI_V4}`: one container."""
    revision = "1"  # one task definition per service locally (see docs/concepts.md)
    task_arn = ctx.task_arn(task.task_id)
    doc: dict[str, Any] = {
        "DockerId": c.docker_id,
        "Name": c.name,
        "DockerName": c.docker_name,
        "Image": c.image,
        "ImageID": c.image_id,
    }
    port = (ctx.ports or {}).get((task.service, c.name))
    if port is not None:
        doc["Ports"] = [{"ContainerPort": port, "Protocol": "tcp", "HostPort": port}]
    doc["Labels"] = {
        "com.amazonaws.ecs.cluster": ctx.cluster_arn,
        "com.amazonaws.ecs.container-name": c.name,
        "com.amazonaws.ecs.task-arn": task_arn,
        "com.amazonaws.ecs.task-definition-family": ctx.family(task.service),
        "com.amazonaws.ecs.task-definition-version": revision,
    }
    status = "RUNNING" if c.running else "STOPPED"  # a sidecar may exit, its task runs on
    doc["DesiredStatus"] = status
    doc["KnownStatus"] = status
    if not c.running and c.exit_code is not None:
        doc["ExitCode"] = c.exit_code
    doc["Limits"] = {"CPU": 0}  # Copilot sets CPU and memory on the task, not the container
    doc["CreatedAt"] = c.created_at
    doc["StartedAt"] = c.started_at
    if not c.running and c.finished_at:
        doc["FinishedAt"] = c.finished_at
    doc["Type"] = "NORMAL"
    if version == "v4":
        doc["LogDriver"] = "awslogs"
        doc["LogOptions"] = {
            "awslogs-group": f"/copilot/{ctx.family(task.service)}",
            "awslogs-region": ctx.region,
            "awslogs-stream": f"copilot/{c.name}/{task.task_id}",
        }
        doc["ContainerARN"] = (
            f"arn:aws:ecs:{ctx.region}:{ctx.account}:container/"
            f"{ctx.cluster_name}/{task.task_id}/{_container_uuid(c.docker_id)}"
        )
    doc["Networks"] = [_network(ctx, task, version)]
    return doc


def _limits(ctx: Context, service: str) -> dict[str, float | int]:
    cpu, memory = (ctx.sizes or {}).get(service, (DEFAULT_CPU_UNITS, DEFAULT_MEMORY_MIB))
    return {"CPU": cpu / 1024, "Memory": memory}


def task_document(
    ctx: Context, task: TaskRecord, now: str, version: Version = "v4"
) -> dict[str, Any]:
    """`GET ${ECS_CONTAINER_METADATA_URI_V4}/task`; `now`: e.g. 2025-03-20T16:41:24Z."""
    created = sorted(c.created_at for c in task.containers if c.created_at)
    pulled = created[0] if created else now  # local images: no pull, it took no time
    doc: dict[str, Any] = {
        "Cluster": ctx.cluster_arn,
        "TaskARN": ctx.task_arn(task.task_id),
        "Family": ctx.family(task.service),
        "Revision": "1",
        "DesiredStatus": "RUNNING",
        "KnownStatus": "RUNNING",
        "Limits": _limits(ctx, task.service),
        "PullStartedAt": pulled,
        "PullStoppedAt": pulled,
        "AvailabilityZone": f"{ctx.region}a",
    }
    if version == "v4":
        doc["ServiceName"] = f"{ctx.family(task.service)}-Service"
        doc["LaunchType"] = "FARGATE"
    doc["Containers"] = [container_document(ctx, task, c, version) for c in task.containers]
    if version == "v4":
        doc["ClockDrift"] = {
            "ClockErrorBound": 0,
            "ReferenceTimestamp": now,
            "ClockSynchronizationStatus": "SYNCHRONIZED",
        }
        doc["EphemeralStorageMetrics"] = {"Utilized": 0, "Reserved": EPHEMERAL_RESERVED_MIB}
    return doc


def _network(ctx: Context, task: TaskRecord, version: Version) -> dict[str, Any]:
    net: dict[str, Any] = {"NetworkMode": "awsvpc", "IPv4Addresses": [task.address]}
    if version == "v3":
        return net
    net["AttachmentIndex"] = 0
    net["MACAddress"] = task.mac
    prefix = None
    if ctx.subnet:
        try:
            network = ipaddress.ip_network(ctx.subnet, strict=False)
        except ValueError:
            network = None
        if network is not None:
            net["IPv4SubnetCIDRBlock"] = str(network)
            prefix = network.prefixlen
    if ctx.dns:
        net["DomainNameServers"] = [ctx.dns]
    net["PrivateDNSName"] = private_dns_name(task.address, ctx.region)
    if ctx.gateway and prefix is not None:
        net["SubnetGatewayIpv4Address"] = f"{ctx.gateway}/{prefix}"
    return net


def private_dns_name(address: str, region: str) -> str:
    """As the VPC names an address: `ip-10-0-0-5.ec2.internal` in us-east-1."""
    domain = "ec2.internal" if region == "us-east-1" else f"{region}.compute.internal"
    return f"ip-{address.replace('.', '-')}.{domain}"


def _container_uuid(docker_id: str) -> str:
    """A stable UUID per container, as the ARN's last part is one on ECS."""
    digits = "".join(ch for ch in docker_id.lower() if ch in "0123456789abcdef")
    if len(digits) >= 32:
        return str(uuid.UUID(digits[:32]))
    return str(uuid.uuid5(uuid.NAMESPACE_OID, docker_id))


# -- across the link -----------------------------------------------------------------


def record_to_json(r: TaskRecord) -> dict[str, Any]:
    return {
        "task": r.task_id,
        "service": r.service,
        "index": r.index,
        "address": r.address,
        "mac": r.mac,
        "containers": [
            {
                "name": c.name,
                "id": c.docker_id,
                "docker_name": c.docker_name,
                "image": c.image,
                "image_id": c.image_id,
                "created": c.created_at,
                "started": c.started_at,
                "finished": c.finished_at,
                "exit_code": c.exit_code,
                "running": c.running,
            }
            for c in r.containers
        ],
    }


def record_from_json(raw: Mapping[str, Any]) -> TaskRecord:
    """Raises KeyError, TypeError or ValueError on a malformed record."""
    containers = []
    for c in raw["containers"]:
        code = c.get("exit_code")
        containers.append(
            TaskContainer(
                name=str(c["name"]),
                docker_id=str(c["id"]),
                docker_name=str(c["docker_name"]),
                image=str(c["image"]),
                image_id=str(c["image_id"]),
                created_at=str(c["created"]),
                started_at=str(c["started"]),
                finished_at=str(c.get("finished") or ""),
                exit_code=None if code is None else int(code),
                running=bool(c.get("running", True)),
            )
        )
    return TaskRecord(
        task_id=str(raw["task"]),
        service=str(raw["service"]),
        index=int(raw["index"]),
        address=str(raw["address"]),
        mac=str(raw.get("mac") or ""),
        containers=tuple(containers),
    )


def parse_records(items: Iterable[Any]) -> list[TaskRecord]:
    """The records that parse; a malformed one is skipped, never fatal."""
    out = []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        try:
            out.append(record_from_json(item))
        except (KeyError, TypeError, ValueError, AttributeError):
            continue
    return out
