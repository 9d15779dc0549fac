"""The task metadata endpoint: Fargate-shaped documents, the per-container URIs,
and the HTTP endpoint on real sockets answering a task's own address only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from meshlocal.metadata import (
    URI_V3,
    URI_V4,
    Context,
    TaskContainer,
    TaskRecord,
    container_document,
    container_key,
    endpoint_id,
    split_id,
    task_document,
    uri_vars,
)
from meshlocal.metadata_endpoint import MetadataEndpoint
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import ContainerInfo
from meshlocal.runtime.reconcile import ReplicaTemplate, SidecarTemplate
from meshlocal.runtime.taskbook import task_record
from meshlocal.runtime.tasks import TASK as TASK_LABEL
from meshlocal.runtime.tasks import TaskSpecs

TASK_ID = "5261e761e0e2a3d92da3f02c8e5bab1f"
DOCKER_ID = "ad9d89a36c31afef34c79e05263b06087ad354796cfd90c66ced30f40ea2dbf4"
CTX = Context(
    app="kudos",
    env="test",
    region="eu-west-1",
    account="123456789012",
    subnet="172.27.0.0/16",
    gateway="172.27.0.1",
    dns="172.27.0.2",
    ports={("api", "api"): 8080},
)


def main(**kw: Any) -> TaskContainer:
    fields: dict[str, Any] = {
        "name": "api",
        "docker_id": DOCKER_ID,
        "docker_name": "kudos-1a2b3c4d-test-api-1",
        "image": "kudos/api:latest",
        "image_id": "sha256:" + "ab" * 32,
        "created_at": "2025-03-20T16:41:24.713942268Z",
        "started_at": "2025-03-20T16:41:25.623883595Z",
    }
    fields.update(kw)
    return TaskContainer(**fields)


SIDE = main(name="envoy", docker_id="e" * 64, docker_name="kudos-1a2b3c4d-test-api-1-envoy")
RECORD = TaskRecord(TASK_ID, "api", 1, "172.27.0.5", "02:42:ac:1b:00:05", (main(), SIDE))


CLUSTER = "arn:aws:ecs:eu-west-1:123456789012:cluster/kudos-test-Cluster"


def test_the_container_document_is_fargates_shape_with_the_replicas_own_values() -> None:
    doc = container_document(CTX, RECORD, main())
    arn = f"arn:aws:ecs:eu-west-1:123456789012:task/kudos-test-Cluster/{TASK_ID}"
    assert doc == {
        "DockerId": DOCKER_ID,
        "Name": "api",
        "DockerName": "kudos-1a2b3c4d-test-api-1",
        "Image": "kudos/api:latest",
        "ImageID": "sha256:" + "ab" * 32,
        "Ports": [{"ContainerPort": 8080, "Protocol": "tcp", "HostPort": 8080}],
        "Labels": {
            "com.amazonaws.ecs.cluster": CLUSTER,
            "com.amazonaws.ecs.container-name": "api",
            "com.amazonaws.ecs.task-arn": arn,
            "com.amazonaws.ecs.task-definition-family": "kudos-test-api",
            "com.amazonaws.ecs.task-definition-version": "1",
        },
        "DesiredStatus": "RUNNING",
        "KnownStatus": "RUNNING",
        "Limits": {"CPU": 0},
        "CreatedAt": "2025-03-20T16:41:24.713942268Z",
        "StartedAt": "2025-03-20T16:41:25.623883595Z",
        "Type": "NORMAL",
        "LogDriver": "awslogs",
        "LogOptions": {
            "awslogs-group": "/copilot/kudos-test-api",
            "awslogs-region": "eu-west-1",
            "awslogs-stream": f"copilot/api/{TASK_ID}",
        },
        "ContainerARN": "arn:aws:ecs:eu-west-1:123456789012:container/kudos-test-Cluster/"
        f"{TASK_ID}/ad9d89a3-6c31-afef-34c7-9e05263b0608",
        "Networks": [
            {
                "NetworkMode": "awsvpc",
                "IPv4Addresses": ["172.27.0.5"],
                "AttachmentIndex": 0,
                "MACAddress": "02:42:ac:1b:00:05",
                "IPv4SubnetCIDRBlock": "172.27.0.0/16",
                "DomainNameServers": ["172.27.0.2"],
                "PrivateDNSName": "ip-172-27-0-5.eu-west-1.compute.internal",
                "SubnetGatewayIpv4Address": "172.27.0.1/16",
            }
        ],
    }


def test_the_task_document_lists_every_container_with_copilots_limits() -> None:
    doc = task_document(CTX, RECORD, "2025-03-20T16:45:00Z")
    assert doc["Cluster"] == "arn:aws:ecs:eu-west-1:123456789012:cluster/kudos-test-Cluster"
    assert doc["TaskARN"].endswith(f":task/kudos-test-Cluster/{TASK_ID}")
    assert (doc["Family"], doc["Revision"]) == ("kudos-test-api", "1")
    assert (doc["DesiredStatus"], doc["KnownStatus"]) == ("RUNNING", "RUNNING")
    assert doc["Limits"] == {"CPU": 0.25, "Memory": 512}
    # the manifest's cpu and memory, when the service sets them
    sized = replace(CTX, sizes={"api": (1024, 2048)})
    assert task_document(sized, RECORD, "now")["Limits"] == {"CPU": 1.0, "Memory": 2048}
    assert doc["PullStartedAt"] == doc["PullStoppedAt"] == "2025-03-20T16:41:24.713942268Z"
    assert (doc["AvailabilityZone"], doc["LaunchType"]) == ("eu-west-1a", "FARGATE")
    assert [c["Name"] for c in doc["Containers"]] == ["api", "envoy"]
    assert "Ports" not in doc["Containers"][1]  # the sidecar declares none
    assert doc["ClockDrift"]["ReferenceTimestamp"] == "2025-03-20T16:45:00Z"
    assert doc["ClockDrift"]["ClockSynchronizationStatus"] == "SYNCHRONIZED"
    assert set(doc["EphemeralStorageMetrics"]) == {"Utilized", "Reserved"}
    us = task_document(Context("a", "e", "us-east-1", "1"), RECORD, "now")
    assert us["Containers"][0]["Networks"][0]["PrivateDNSName"] == "ip-172-27-0-5.ec2.internal"


def test_v3_leaves_out_what_only_v4_has() -> None:
    doc = task_document(CTX, RECORD, "now", "v3")
    assert not {"LaunchType", "ClockDrift", "EphemeralStorageMetrics"} & set(doc)
    container = doc["Containers"][0]
    assert not {"ContainerARN", "LogDriver", "LogOptions"} & set(container)
    assert container["Networks"] == [{"NetworkMode": "awsvpc", "IPv4Addresses": ["172.27.0.5"]}]


def test_a_stopped_sidecar_says_so_with_its_exit_code() -> None:
    stopped = main(name="init", running=False, exit_code=3, finished_at="2025-03-20T16:42:00Z")
    doc = container_document(CTX, RECORD, stopped)
    assert (doc["DesiredStatus"], doc["KnownStatus"], doc["ExitCode"]) == ("STOPPED", "STOPPED", 3)
    assert doc["FinishedAt"] == "2025-03-20T16:42:00Z"


def test_each_container_has_its_own_uri() -> None:
    main_vars = uri_vars("http://172.27.0.2:51679", TASK_ID, "api")
    side_vars = uri_vars("http://172.27.0.2:51679", TASK_ID, "envoy")
    assert main_vars[URI_V4] == f"http://172.27.0.2:51679/v4/{endpoint_id(TASK_ID, 'api')}"
    assert main_vars[URI_V3].replace("/v3/", "/v4/") == main_vars[URI_V4]
    assert main_vars[URI_V4] != side_vars[URI_V4]
    assert split_id(endpoint_id(TASK_ID, "envoy")) == (TASK_ID, container_key("envoy"))
    assert RECORD.container(container_key("envoy")) == SIDE
    for bad in ("", "nodash", f"{TASK_ID}-", f"{TASK_ID}-x1", "-123"):
        assert split_id(bad) is None, bad


def test_task_specs_give_every_container_its_variables_outside_the_config_hash() -> None:
    side = SidecarTemplate("envoy", "busybox", environment={"A": "1"})
    template = ReplicaTemplate("api", "busybox", {"B": "2"}, port=80, sidecars=(side,))
    specs = TaskSpecs("p", "test", "net", ("172.27.0.2",), metadata="http://172.27.0.2:51679")
    spec = specs.replica(template, 1, template.config_hash(), task=TASK_ID)
    assert spec.environment == {"B": "2", **uri_vars(specs.metadata or "", TASK_ID, "api")}
    sidecar = specs.sidecar(template, 1, side, "netns", TASK_ID)
    assert sidecar.environment == {"A": "1", **uri_vars(specs.metadata or "", TASK_ID, "envoy")}
    assert dict(template.environment) == {"B": "2"}  # the template itself is untouched
    plain = TaskSpecs("p", "test", "net", ())
    assert plain.replica(template, 1, "h", task=TASK_ID).environment == {"B": "2"}


def info(role: L.Role, name: str, **kw: Any) -> ContainerInfo:
    labels = {L.ROLE: role.value, L.SERVICE: "api", L.REPLICA: "2", TASK_LABEL: TASK_ID}
    labels.update(kw.pop("labels", {}))
    fields: dict[str, Any] = {
        "id": name + "-id",
        "name": name,
        "image": "busybox",
        "labels": labels,
        "state": "running",
        "health": None,
        "addresses": {},
        "image_id": "sha256:1",
        "created": "2025-01-01T00:00:00Z",
        "started_at": "2025-01-01T00:00:01Z",
    }
    fields.update(kw)
    return ContainerInfo(**fields)


def test_a_task_record_from_the_engines_containers() -> None:
    pause = info(L.Role.PAUSE, "p-api-2-pause", addresses={"net": "10.0.0.9"}, macs={"net": "m"})
    side = info(L.Role.SIDECAR, "p-api-2-envoy", labels={L.SIDECAR: "envoy"})
    app = info(L.Role.REPLICA, "p-api-2")
    record = task_record(TASK_ID, [side, pause, app], "net")
    assert record is not None
    assert (record.address, record.mac, record.service, record.index) == ("10.0.0.9", "m", "api", 2)
    assert [(c.name, c.docker_name) for c in record.containers] == [
        ("api", "p-api-2"),
        ("envoy", "p-api-2-envoy"),
    ]  # the pause container is not listed, as on Fargate
    # Sidecars first (main waits for them): listed before the main container exists.
    early = task_record(TASK_ID, [pause, side], "net")
    assert early is not None and [c.name for c in early.containers] == ["envoy"]
    # A main container that stopped ends the task.
    assert task_record(TASK_ID, [pause, replace_state(app, "exited")], "net") is None
    # A container created but never started has no times: not listed.
    waiting = info(L.Role.SIDECAR, "w", labels={L.SIDECAR: "w"}, state="created", started_at="")
    own = info(L.Role.REPLICA, "p-api-2", addresses={"net": "10.0.0.3"})
    again = task_record(TASK_ID, [own, waiting], "net")
    assert again is not None and [c.name for c in again.containers] == ["api"]


def replace_state(i: ContainerInfo, state: str) -> ContainerInfo:
    from dataclasses import replace

    return replace(i, state=state)


# -- the endpoint on real sockets ------------------------------------------------------


@pytest.fixture
async def endpoint() -> AsyncIterator[tuple[MetadataEndpoint, str]]:
    ep = MetadataEndpoint(lambda: CTX, wait_s=0.3)
    runner = web.AppRunner(ep.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server: Any = site._server
    port = server.sockets[0].getsockname()[1]
    try:
        yield ep, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.get(url) as r:
        return r.status, json.loads(await r.text())


async def test_a_task_reads_its_own_metadata_and_no_other(
    endpoint: tuple[MetadataEndpoint, str],
) -> None:
    ep, base = endpoint
    own = TaskRecord(TASK_ID, "api", 1, "127.0.0.1", "m", (main(), SIDE))
    other = TaskRecord("f" * 32, "api", 2, "127.0.0.2", "m", (main(docker_id="2" * 64),))
    ep.update([own, other])
    me = f"{base}/v4/{endpoint_id(TASK_ID, 'api')}"
    status, doc = await get(me)
    assert status == 200 and doc["DockerId"] == DOCKER_ID and doc["Name"] == "api"
    status, doc = await get(me + "/task")
    assert status == 200 and doc["TaskARN"].endswith(TASK_ID)
    assert doc["Containers"][0]["Networks"][0]["IPv4Addresses"] == ["127.0.0.1"]
    status, doc = await get(f"{base}/v4/{endpoint_id(TASK_ID, 'envoy')}")
    assert status == 200 and doc["Name"] == "envoy"  # a sidecar shares the task's address
    status, doc = await get(f"{base}/v3/{endpoint_id(TASK_ID, 'api')}/task")
    assert status == 200 and "LaunchType" not in doc
    # Another task's URI, asked from this address: refused.
    theirs = f"{base}/v4/{endpoint_id('f' * 32, 'api')}"
    assert (await get(theirs))[0] == 403
    assert (await get(theirs + "/task"))[0] == 403
    # Unknown ids, and stats (not emulated).
    assert (await get(f"{base}/v4/{endpoint_id('0' * 32, 'api')}"))[0] == 404
    assert (await get(f"{base}/v4/{endpoint_id(TASK_ID, 'nope')}"))[0] == 404
    assert (await get(f"{base}/v4/garbage"))[0] == 404
    assert (await get(me + "/stats"))[0] == 404


async def test_an_id_reported_while_its_request_waits_is_answered(
    endpoint: tuple[MetadataEndpoint, str],
) -> None:
    ep, base = endpoint
    ep.wait_s = 5.0
    late = TaskRecord(TASK_ID, "api", 1, "127.0.0.1", "m", (main(),))
    loop = asyncio.get_running_loop()
    loop.call_later(0.2, ep.update, [late])
    started = loop.time()
    status, doc = await get(f"{base}/v4/{endpoint_id(TASK_ID, 'api')}")
    assert status == 200 and doc["DockerId"] == DOCKER_ID
    assert loop.time() - started < 2
