"""The pure planner and the desired-state codec: no engine needed."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from meshlocal.manifest.model import ContainerHealthCheck
from meshlocal.runtime import labels as L
from meshlocal.runtime.reconcile import (
    DesiredService,
    Observed,
    ReplicaTemplate,
    SidecarTemplate,
    desired_from_json,
    desired_to_json,
    plan,
    start_order,
)


def obs(cid: str, index: int, h: str = "h1", alive: bool = True, svc: str = "api") -> Observed:
    return Observed(cid, svc, index, h, alive)


def test_missing_indexes_start_and_extra_ones_go_highest_first() -> None:
    p = plan({"api": (3, "h1")}, [obs("a", 2)])
    assert p.start == (("api", 1), ("api", 3)) and not p.roll and not p.remove
    p = plan({"api": (1, "h1")}, [obs("a", 1), obs("b", 2), obs("c", 3)])
    assert [o.container_id for o in p.remove] == ["c", "b"]


def test_stale_replicas_roll_and_unchanged_ones_stay() -> None:
    p = plan(
        {"api": (2, "h2"), "web": (1, "w")},
        [obs("a", 1, "h1"), obs("b", 2, "h2"), obs("w", 1, "w", svc="web")],
    )
    assert [o.container_id for o in p.roll] == ["a"]
    assert not p.start and not p.remove


def test_dead_containers_are_removed_and_their_slot_restarted() -> None:
    p = plan({"api": (1, "h1")}, [obs("a", 1, alive=False)])
    assert p.start == (("api", 1),)
    assert [o.container_id for o in p.remove] == ["a"]


def test_an_interrupted_roll_keeps_the_new_replica() -> None:
    p = plan({"api": (1, "h2")}, [obs("old", 1, "h1"), obs("new", 1, "h2")])
    assert [o.container_id for o in p.remove] == ["old"] and not p.roll and not p.start


def test_services_no_longer_desired_are_removed_and_scope_limits() -> None:
    current = [obs("a", 1), obs("w", 1, svc="worker")]
    p = plan({"api": (1, "h1")}, current)
    assert [o.container_id for o in p.remove] == ["w"]
    assert plan({"api": (1, "h1")}, current, services=["api"]).empty


observed_lists = st.lists(
    st.builds(
        Observed,
        container_id=st.uuids().map(str),
        service=st.sampled_from(["api", "web", "gone"]),
        index=st.integers(1, 6),
        config_hash=st.sampled_from(["h1", "h2", None]),
        alive=st.booleans(),
        healthy=st.sampled_from([True, False, None]),
    ),
    max_size=12,
)


@given(observed_lists, st.integers(0, 5), st.integers(0, 5))
def test_plan_converges_to_exactly_count_fresh_replicas(
    observed: list[Observed], n_api: int, n_web: int
) -> None:
    desired = {"api": (n_api, "h1"), "web": (n_web, "h2")}
    p = plan(desired, observed)
    removed = {o.container_id for o in p.remove}
    rolled = {o.container_id for o in p.roll}
    assert not removed & rolled
    for svc, (count, want) in desired.items():
        # After the plan: kept fresh + rolled (replaced in place) + started, one per index.
        kept = [
            o
            for o in observed
            if o.service == svc and o.alive and o.container_id not in removed | rolled
        ]
        indexes = [o.index for o in kept]
        indexes += [o.index for o in p.roll if o.service == svc]
        indexes += [i for s, i in p.start if s == svc]
        assert sorted(indexes) == list(range(1, count + 1))
        assert all(o.config_hash == want for o in kept)
    assert all(o.container_id in removed for o in observed if o.service == "gone" or not o.alive)


def test_config_hash_changes_with_what_runs_and_only_that() -> None:
    base = ReplicaTemplate("api", "img", {"A": "1"}, command=("x",), port=80)
    assert (
        base.config_hash()
        == ReplicaTemplate("api", "img", {"A": "1"}, ("x",), port=80).config_hash()
    )
    assert (
        base.config_hash()
        != ReplicaTemplate("api", "img", {"A": "2"}, ("x",), port=80).config_hash()
    )
    assert base.config_hash() != base.config_hash("10.0.0.2")  # e.g. a new DNS address


def test_desired_state_json_round_trip() -> None:
    check = ContainerHealthCheck(("CMD", "true"), 1.0, 2.0, 3, 4.0)
    template = ReplicaTemplate(
        service="api",
        image="img:1",
        environment={"ON": "on", "EMPTY": ""},
        command=("python3", "app.py"),
        entrypoint=None,
        healthcheck=check,
        port=80,
        sidecars=(SidecarTemplate("nginx", "nginx:1", {"X": "y"}, depends_on={"api": "start"}),),
        depends_on={"nginx": "healthy"},
        image_id="sha256:abc",
    )
    desired = {"api": DesiredService(template, 3)}
    back = desired_from_json(desired_to_json(desired))
    assert back == desired
    assert back["api"].template.config_hash() == template.config_hash()


def test_names_never_equal_a_mesh_name() -> None:
    project = L.project_id("kudos", Path("/work/x"))
    assert project.startswith("kudos-") and len(project) == len("kudos-") + 8
    assert project != L.project_id("kudos", Path("/work/y"))
    name = L.container_name(project, "test", "api", 1)
    assert name == f"{project}-test-api-1"
    assert L.network_name(project, "test") == f"{project}-test"
    assert len(L.hostname_for("x" * 100)) == 63
    assert L.filters(project, "test", role=L.Role.REPLICA, service="api") == [
        f"meshlocal.project={project}",
        "meshlocal.env=test",
        "meshlocal.role=replica",
        "meshlocal.service=api",
    ]


def test_start_order_follows_depends_on() -> None:
    def sc(name: str, **deps: str) -> SidecarTemplate:
        return SidecarTemplate(name, "img", depends_on=deps)

    plain = ReplicaTemplate("api", "img", sidecars=(sc("log"), sc("envoy")))
    assert start_order(plain) == ["api", "log", "envoy"]
    waits = ReplicaTemplate(
        "api", "img", sidecars=(sc("log"), sc("init", log="start")), depends_on={"init": "success"}
    )
    assert start_order(waits) == ["log", "init", "api"]
    cycle = ReplicaTemplate(
        "api", "img", sidecars=(sc("a", api="start"),), depends_on={"a": "start"}
    )
    assert sorted(start_order(cycle)) == ["a", "api"]
    unknown = ReplicaTemplate("api", "img", depends_on={"nope": "start"})
    assert start_order(unknown) == ["api"]
