"""The engine adapter against the real Docker engine."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from typing import Any

import docker
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlocal.errors import DockerUnavailable, ImageError, PortInUse
from meshlocal.registry import Health
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import (
    ContainerSpec,
    Engine,
    map_docker_error,
    parse_event,
    parse_port_in_use,
)

# -- pure parsing -------------------------------------------------------------------


def test_parse_port_in_use_messages_of_docker_20_10() -> None:
    other_container = (
        "driver failed programming external connectivity on endpoint x (abc): "
        "Bind for 0.0.0.0:8080 failed: port is already allocated"
    )
    host_process = (
        "driver failed programming external connectivity on endpoint x (abc): Error starting "
        "userland proxy: listen tcp4 127.0.0.1:18080: bind: address already in use"
    )
    assert parse_port_in_use(other_container) == ("0.0.0.0", 8080)
    assert parse_port_in_use(host_process) == ("127.0.0.1", 18080)
    assert parse_port_in_use("No such image: foo") is None


@given(st.integers(min_value=1, max_value=65535), st.sampled_from(["0.0.0.0", "127.0.0.1"]))
def test_parse_port_in_use_finds_any_port(port: int, addr: str) -> None:
    msg = f"Error starting userland proxy: listen tcp4 {addr}:{port}: bind: address already in use"
    assert parse_port_in_use(msg) == (addr, port)
    msg2 = f"Bind for {addr}:{port} failed: port is already allocated"
    assert parse_port_in_use(msg2) == (addr, port)


def test_parse_event_health_and_die() -> None:
    health = parse_event(
        {
            "Type": "container",
            "Action": "health_status: healthy",
            "Actor": {"ID": "abc", "Attributes": {"name": "n", L.SERVICE: "api", "image": "i"}},
            "timeNano": 5,
        }
    )
    assert health is not None
    assert (health.action, health.health, health.service, health.time_ns) == (
        "health_status",
        Health.HEALTHY,
        "api",
        5,
    )
    assert "image" not in health.labels
    die = parse_event(
        {
            "Type": "container",
            "Action": "die",
            "Actor": {"ID": "x", "Attributes": {"exitCode": "137"}},
        }
    )
    assert die is not None and die.exit_code == 137
    assert parse_event({"Type": "network", "Action": "connect", "Actor": {"ID": "n"}}) is None


def test_unreachable_engine_is_docker_unavailable() -> None:
    import docker

    with pytest.raises(Exception) as info:
        docker.DockerClient(base_url="unix:///nonexistent/docker.sock").ping()
    err = map_docker_error(info.value)
    assert isinstance(err, DockerUnavailable)
    assert err.hint and "DOCKER_HOST" in err.hint


def test_from_env_without_engine_raises_docker_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(DockerUnavailable) as info:
        Engine.from_env(timeout=2)
    assert "unix:///nonexistent/docker.sock" in info.value.message


# -- against the engine ------------------------------------------------------------------


def _spec(project: str, net: str, image: str, name: str, **kw: Any) -> ContainerSpec:
    lbl = L.base_labels(project, "test", L.Role.REPLICA)
    lbl[L.SERVICE] = "svc"
    lbl[L.REPLICA] = "1"
    kw.setdefault("command", ("sleep", "300"))
    return ContainerSpec(name=name, image=image, labels=lbl, network=net, **kw)


@pytest.mark.docker
def test_network_is_labelled_reused_and_removed(engine: Engine, project: str) -> None:
    net = engine.ensure_network(project, "test")
    again = engine.ensure_network(project, "test")
    assert again == net
    assert net.name == L.network_name(project, "test")
    assert net.subnet and net.gateway
    assert ipaddress.ip_address(net.gateway) in ipaddress.ip_network(net.subnet)
    raw = engine.api.inspect_network(net.id)
    assert raw["Labels"][L.PROJECT] == project
    assert raw["Labels"][L.ENV] == "test"
    other_env = engine.ensure_network(project, "prod")
    assert other_env.id != net.id and other_env.subnet != net.subnet


@pytest.mark.docker
def test_container_labels_env_dns_and_remove_all(
    engine: Engine, project: str, busybox_image: str
) -> None:
    net = engine.ensure_network(project, "test")
    cid = engine.run_container(
        _spec(
            project,
            net.name,
            busybox_image,
            f"{project}-c1",
            environment={"GREETING": "on"},
            dns=("10.1.2.3",),
        )
    )
    info = engine.inspect(cid)
    assert info is not None and info.running
    assert info.labels[L.PROJECT] == project and info.service == "svc" and info.index == 1
    assert ipaddress.ip_address(info.address_on(net.name) or "") in ipaddress.ip_network(
        net.subnet or ""
    )
    raw = engine.api.inspect_container(cid)
    assert "GREETING=on" in raw["Config"]["Env"]
    assert raw["HostConfig"]["Dns"] == ["10.1.2.3"]
    listed = engine.list_replicas(project, "test")
    assert [c.id for c in listed] == [cid]
    assert listed[0].address_on(net.name) == info.address_on(net.name)

    removed = engine.remove_all(project)
    assert removed.containers == (f"{project}-c1",)
    assert removed.networks == (net.name,)
    assert engine.list_containers(project) == []
    assert engine.api.networks(filters={"label": L.filters(project)}) == []
    # Idempotent: nothing left, nothing to fail on.
    assert engine.remove_all(project) == type(removed)((), ())


@pytest.mark.docker
def test_remove_all_scopes_to_one_environment(
    engine: Engine, project: str, busybox_image: str
) -> None:
    for env in ("test", "prod"):
        net = engine.ensure_network(project, env)
        lbl = L.base_labels(project, env, L.Role.REPLICA)
        engine.run_container(
            ContainerSpec(
                f"{project}-{env}-x", busybox_image, lbl, network=net.name, command=("sleep", "300")
            )
        )
    engine.remove_all(project, "test")
    left = engine.list_containers(project)
    assert [c.labels[L.ENV] for c in left] == ["prod"]


@pytest.mark.docker
def test_published_port_taken_is_port_in_use(
    engine: Engine, project: str, busybox_image: str
) -> None:
    net = engine.ensure_network(project, "test")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        spec = _spec(
            project, net.name, busybox_image, f"{project}-p", ports={80: ("127.0.0.1", port)}
        )
        with pytest.raises(PortInUse) as info:
            engine.run_container(spec)
    assert str(port) in info.value.message
    assert engine.list_containers(project) == []  # the half-created container is gone


@pytest.mark.docker
def test_missing_image_is_image_error(engine: Engine, project: str) -> None:
    net = engine.ensure_network(project, "test")
    with pytest.raises(ImageError):
        engine.run_container(_spec(project, net.name, "meshlocal/no-such-image:1", f"{project}-m"))


@pytest.mark.docker
async def test_events_arrive_through_the_stream(
    engine: Engine, project: str, busybox_image: str
) -> None:
    net = await asyncio.to_thread(engine.ensure_network, project, "test")
    stream = engine.events(project, "test")
    try:
        spec = _spec(
            project,
            net.name,
            busybox_image,
            f"{project}-e",
            command=("sh", "-c", "sleep 0.5; exit 3"),
        )
        cid = await asyncio.to_thread(engine.run_container, spec)
        seen: list[str] = []
        deadline = time.monotonic() + 20
        die = None
        while die is None and time.monotonic() < deadline:
            event = await asyncio.wait_for(stream.get(), timeout=20)
            assert event is not None
            assert event.container_id == cid
            seen.append(event.action)
            if event.action == "die":
                die = event
        assert die is not None, seen
        assert die.exit_code == 3
        assert die.labels[L.PROJECT] == project
        assert seen[:2] == ["create", "start"]
    finally:
        stream.close()
    assert await asyncio.wait_for(_drain(stream), timeout=5) is None


async def _drain(stream: Any) -> None:
    while (await stream.get()) is not None:
        pass


@pytest.mark.docker
async def test_logs_follow_in_order_and_end_with_the_container(
    engine: Engine, project: str, busybox_image: str
) -> None:
    net = await asyncio.to_thread(engine.ensure_network, project, "test")
    script = "echo one; echo two >&2; sleep 0.5; printf 'three\\nfour'"
    cid = await asyncio.to_thread(
        engine.run_container,
        _spec(project, net.name, busybox_image, f"{project}-l", command=("sh", "-c", script)),
    )
    lines = [line async for line in engine.log_stream(cid)]
    # stdout and stderr are separate pipes: their relative order is not kept.
    assert sorted(lines[:2]) == ["one", "two"] and lines[2:] == ["three", "four"]
    assert engine.logs(cid, tail=1) == ["four"]
    # Closing a stream of a silent, running container ends the iteration at once.
    quiet = await asyncio.to_thread(
        engine.run_container, _spec(project, net.name, busybox_image, f"{project}-q")
    )
    stream = engine.log_stream(quiet)
    stream.close()
    assert [line async for line in stream] == []


@pytest.mark.docker
def test_exec_is_bounded_by_its_timeout(engine: Engine, project: str, busybox_image: str) -> None:
    from meshlocal.errors import RuntimeFailure

    net = engine.ensure_network(project, "test")
    cid = engine.run_container(_spec(project, net.name, busybox_image, f"{project}-x"))
    assert engine.exec(cid, ["sh", "-c", "echo hi; exit 4"]) == (4, "hi\n")
    started = time.monotonic()
    with pytest.raises(RuntimeFailure):
        engine.exec(cid, ["sleep", "30"], timeout=1)
    assert time.monotonic() - started < 10


@pytest.mark.docker
def test_a_subnet_taken_between_probe_and_create_is_tried_again(
    engine: Engine, project: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another engine user (a second mesh coming up) creates a network in the
    # instant after the probe is removed, on the subnet the probe had.
    interlopers: list[str] = []
    remove = engine.api.remove_network

    def remove_then_take(net_id: str) -> None:
        subnet = engine.api.inspect_network(net_id)["IPAM"]["Config"][0]["Subnet"]
        remove(net_id)
        if not interlopers:
            pool = docker.types.IPAMPool(subnet=subnet)
            made = engine.api.create_network(
                f"{project}-interloper",
                driver="bridge",
                ipam=docker.types.IPAMConfig(pool_configs=[pool]),
            )
            interlopers.append(made["Id"])

    monkeypatch.setattr(engine.api, "remove_network", remove_then_take)
    try:
        net = engine.ensure_network(project, "test")
        taken = engine.api.inspect_network(interlopers[0])["IPAM"]["Config"][0]["Subnet"]
        assert net.subnet is not None and net.subnet != taken
    finally:
        monkeypatch.undo()
        for net_id in interlopers:
            engine.api.remove_network(net_id)
