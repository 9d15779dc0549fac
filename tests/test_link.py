"""The controller <-> data plane link: the mirror, the served view, the framing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from meshlocal.link import (
    LinkClosed,
    Mirror,
    parse_served,
    receive,
    replica_from_json,
    replica_to_json,
    served_to_json,
    serving_view,
)
from meshlocal.metadata import TaskContainer, TaskRecord, parse_records, record_to_json
from meshlocal.registry import Health, Replica, ReplicaRegistry


def rep(cid: str, health: Health = Health.HEALTHY, **kw: Any) -> Replica:
    return Replica("api", int(cid[-1]), cid, f"10.0.0.{cid[-1]}", 80, health=health, **kw)


def test_replicas_cross_the_link_unchanged() -> None:
    r = rep("c1", Health.STARTING, draining=True, sc_view=frozenset({"b", "a"}))
    assert replica_from_json(json.loads(json.dumps(replica_to_json(r)))) == r
    plain = rep("c2")
    assert replica_from_json(replica_to_json(plain)) == plain


def test_the_mirror_takes_membership_from_the_controller() -> None:
    reg = ReplicaRegistry()
    mirror = Mirror(reg)
    mirror.apply([rep("c1"), rep("c2")])
    assert [r.container_id for r in reg.all()] == ["c1", "c2"]
    mirror.apply([rep("c2", draining=True)])
    assert [(r.container_id, r.draining) for r in reg.all()] == [("c2", True)]


def test_a_probe_verdict_stands_until_docker_reports_something_new() -> None:
    reg = ReplicaRegistry()
    mirror = Mirror(reg)
    mirror.apply([rep("c1")])
    reg.set_health("c1", Health.STARTING)  # the data plane's probe holds it out
    mirror.apply([rep("c1")])  # the same word from the controller: no change
    assert reg.get("c1") is not None and reg.get("c1").health is Health.STARTING  # type: ignore[union-attr]
    mirror.apply([rep("c1", Health.UNHEALTHY)])  # Docker's check failed: that wins
    assert reg.get("c1").health is Health.UNHEALTHY  # type: ignore[union-attr]
    reg.set_health("c1", Health.HEALTHY)
    mirror.apply([rep("c1", Health.UNHEALTHY)])
    assert reg.get("c1").health is Health.HEALTHY  # type: ignore[union-attr]


def test_the_view_holds_only_what_the_data_plane_serves() -> None:
    ctl, view = ReplicaRegistry(), ReplicaRegistry()
    ctl.upsert(rep("c1"))
    ctl.upsert(rep("c2"))
    serving_view(ctl, {"c1": (Health.STARTING, False)}, view)
    assert [(r.container_id, r.in_rotation) for r in view.all()] == [("c1", False)]
    serving_view(ctl, {"c1": (Health.HEALTHY, False), "c2": (Health.HEALTHY, False)}, view)
    assert [r.container_id for r in view.all() if r.in_rotation] == ["c1", "c2"]
    ctl.remove("c2")  # gone from the controller: gone from the view, whatever was served
    serving_view(ctl, {"c1": (Health.HEALTHY, False), "c2": (Health.HEALTHY, False)}, view)
    assert [r.container_id for r in view.all()] == ["c1"]
    # A data plane cannot invent a replica the controller does not have.
    serving_view(ctl, {"evil": (Health.HEALTHY, False)}, view)
    assert view.all() == []


def test_served_round_trips_and_bad_entries_are_skipped() -> None:
    reg = ReplicaRegistry()
    reg.upsert(rep("c1", Health.STARTING))
    assert parse_served(served_to_json(reg.all())) == {"c1": (Health.STARTING, False)}
    assert parse_served([{"id": "x", "health": "nope"}, 3, None, {"health": "healthy"}]) == {}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parse_served_never_raises_on_anything_a_data_plane_sends(value: Any) -> None:
    items = value if isinstance(value, list) else [value]
    out = parse_served(items)
    assert all(isinstance(k, str) and isinstance(v[0], Health) for k, v in out.items())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_receive_gives_an_object_or_link_closed(data: bytes) -> None:
    async def run() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(data + b"\n")
        reader.feed_eof()
        try:
            message = await receive(reader)
        except LinkClosed:
            return
        assert isinstance(message, dict)

    asyncio.run(run())


# -- task metadata records (metadata.py) --------------------------------------------

texts = st.text(max_size=12)
containers = st.builds(
    TaskContainer,
    name=texts,
    docker_id=texts,
    docker_name=texts,
    image=texts,
    image_id=texts,
    created_at=texts,
    started_at=texts,
    finished_at=texts,
    exit_code=st.none() | st.integers(-(2**31), 2**31),
    running=st.booleans(),
)
records = st.builds(
    TaskRecord,
    task_id=texts,
    service=texts,
    index=st.integers(0, 10**6),
    address=texts,
    mac=texts,
    containers=st.lists(containers, max_size=3).map(tuple),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(records, max_size=4))
def test_task_records_cross_the_link_unchanged(sent: list[TaskRecord]) -> None:
    line = json.dumps({"t": "tasks", "tasks": [record_to_json(r) for r in sent]})
    assert parse_records(json.loads(line)["tasks"]) == sent


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_parse_records_never_raises_on_a_malformed_message(value: Any) -> None:
    items = value if isinstance(value, list) else [value]
    assert all(isinstance(r, TaskRecord) for r in parse_records(items))


def test_the_task_records_carry_no_environment() -> None:
    """Names, ids, images, times, the address: nothing of the container's variables."""
    c = TaskContainer("api", "id", "dn", "img", "sha256:1", "t0", "t1")
    sent = record_to_json(TaskRecord("t", "api", 1, "10.0.0.2", "m", (c,)))
    assert set(sent) == {"task", "service", "index", "address", "mac", "containers"}
    assert set(sent["containers"][0]) == {
        "name", "id", "docker_name", "image", "image_id",
        "created", "started", "finished", "exit_code", "running",
    }  # fmt: skip


def test_the_serving_config_carries_the_subnet() -> None:
    from meshlocal.link import ServingConfig
    from meshlocal.manifest.model import Environment, EnvironmentSpec, Workspace

    spec = EnvironmentSpec(Workspace(Path("/w"), "app", {}, {}), Environment("test", None), ())
    config = ServingConfig("p", spec, "172.27.0.2", "172.27.0.1", subnet="172.27.0.0/16")
    back = ServingConfig.from_jsonable(json.loads(json.dumps(config.to_jsonable())))
    assert (back.subnet, back.gateway) == ("172.27.0.0/16", "172.27.0.1")
    raw = config.to_jsonable()
    del raw["subnet"]  # a controller from before it: no subnet, no harm
    assert ServingConfig.from_jsonable(raw).subnet is None
