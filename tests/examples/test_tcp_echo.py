"""compose-examples/tcp-echo: a line protocol (no HTTP) behind Service Connect in TCP mode."""

from __future__ import annotations

from typing import Any

import pytest

from meshlocal.testing import Mesh

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]
EXAMPLE = "tcp-echo"
ECHO = ("echo-1", "echo-2", "echo-3")


def connections(mesh: Mesh, n: int, lines: int = 3) -> dict[str, Any]:
    """caller's /connections: n connections to echo:7000, one after the other."""
    response = mesh.get("caller", f"/connections?n={n}&lines={lines}", timeout=30)
    assert response.status == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def held(mesh: Mesh, held_id: int, say: str | None = None) -> dict[str, Any]:
    path = f"/held?id={held_id}" + (f"&say={say}" if say else "")
    response = mesh.get("caller", path, timeout=15)
    assert response.status == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_one_connection_stays_on_one_replica_and_the_half_close_gets_the_bye(
    example_mesh: Mesh,
) -> None:
    body = connections(example_mesh, 1, lines=5)
    (conn,) = body["connections"]
    assert conn["ok"], conn
    replica = conn["replica"]
    assert replica in ECHO
    # Every line of the connection came back from the replica that greeted it.
    assert conn["echoed_by"] == [replica]
    assert conn["echoes"] == [f"{replica}: line {i}" for i in range(1, 6)]
    # The client's half-close reached the server, whose last line came back.
    assert conn["bye"] == f"bye from {replica} after 5 lines"
    assert conn["closed_by_server"]
    # echo:7000 is the endpoint's own address; the replica sees the proxy, not caller.
    assert body["resolved"] == [example_mesh.state()["services"]["echo"]["connect"]["vip"]]
    assert conn["peer"] != example_mesh.replica("caller").address


def test_new_connections_rotate_over_every_replica(example_mesh: Mesh) -> None:
    n = 9
    body = connections(example_mesh, n, lines=2)
    conns = body["connections"]
    assert all(c["ok"] for c in conns), conns
    order = [c["replica"] for c in conns]
    # Per-client strict round robin: one caller task, each replica in turn.
    assert body["per_replica"] == {name: n // 3 for name in ECHO}, order
    assert sorted(order[:3]) == list(ECHO)
    assert order == order[:3] * 3
    assert all(c["echoed_by"] == [c["replica"]] for c in conns)


def test_tcp_mode_counts_connections_and_bytes_but_no_requests(example_mesh: Mesh) -> None:
    before = example_mesh.stats("echo")
    body = connections(example_mesh, 6, lines=4)
    assert all(c["ok"] for c in body["connections"]), body

    def counted() -> Any:
        after = example_mesh.stats("echo")
        return after if after.new_connections >= before.new_connections + 6 else None

    after = example_mesh.wait_until(counted, timeout=10, message="6 new connections counted")
    assert after.processed_bytes > before.processed_bytes
    # TCP mode sees bytes, not requests: nothing HTTP is counted.
    assert after.request_count == 0
    assert after.http_2xx == after.http_4xx == after.http_5xx == 0
    assert example_mesh.stats("caller").request_count >= 1  # the public endpoint's GETs


def test_killing_the_pinned_replica_ends_its_connection_and_the_next_goes_to_a_live_one(
    example_mesh: Mesh,
) -> None:
    mesh = example_mesh
    response = mesh.get("caller", "/hold", timeout=15)
    assert response.status == 200, response.text
    pinned = response.json()
    replica, boot = pinned["replica"], pinned["boot"]
    assert held(mesh, pinned["id"], say="ping")["echo"] == f"{replica}: ping"

    killed = mesh.kill("echo", int(replica.rsplit("-", 1)[1]))

    def ended() -> dict[str, Any] | None:
        state = held(mesh, pinned["id"])
        return None if state["open"] else state

    state = mesh.wait_until(ended, timeout=10, message=f"the connection held on {replica} to end")
    assert state["ended"], state
    # The dying process closes its socket before Docker reports it dead; the
    # data plane takes it out of rotation on that event (milliseconds later).
    mesh.wait_until(
        lambda: all(
            r.container_id != killed.container_id for r in mesh.replicas("echo") if r.in_rotation
        ),
        timeout=5,
        message=f"{replica} to leave the rotation",
    )
    # The next connections are served, by live replicas only (a replacement
    # may already be up under the same name, with another boot id).
    body = connections(mesh, 4, lines=1)
    conns = body["connections"]
    assert all(c["ok"] for c in conns), conns
    assert all(c["boot"] != boot for c in conns), (boot, conns)

    # The mesh replaces the killed replica, as ECS replaces a stopped task.
    mesh.wait_replicas("echo", 3, timeout=60)
    after = connections(mesh, 3, lines=1)["connections"]
    assert all(c["ok"] for c in after), after
    assert sorted(c["replica"] for c in after) == list(ECHO)
