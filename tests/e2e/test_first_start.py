"""A mesh from nothing: replicas start beside the data plane, and the controller adopts them.

runtime/firststart.py creates the first replicas from the CLI while the
data-plane and controller containers start; prebind.py binds the data
plane's DNS port before anything else, so an early query waits instead of
being refused.
"""

from __future__ import annotations

import socket
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import dns.message
import pytest

from meshlocal.deployment import Deployment
from meshlocal.prebind import ENV as EARLY_DNS
from meshlocal.runtime import images
from meshlocal.runtime import labels as L
from meshlocal.runtime.dataplane import dataplane_spec
from meshlocal.runtime.firststart import planned_address

from .conftest import ok, project_of, run_cli

pytestmark = pytest.mark.docker


def _created(client: Any, cid: str) -> str:
    return str(client.api.inspect_container(cid)["Created"])


@pytest.mark.ws("mini")
def test_first_replicas_start_beside_the_data_plane_and_are_adopted(
    workspace: Path, docker_client: Any
) -> None:
    ok(run_cli(workspace, "up", "-d"))
    project = project_of(workspace)
    rows = docker_client.api.containers(all=True, filters={"label": f"{L.PROJECT}={project}"})
    by_role: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_role.setdefault(row["Labels"].get(L.ROLE, ""), []).append(row)
    (ctl,) = by_role["controller"]
    (plane,) = by_role["dataplane"]
    started = docker_client.api.inspect_container(ctl["Id"])["State"]["StartedAt"]
    replicas = by_role["replica"]
    # mini: api x3, client, legacy, web x2; none has sidecars, so the CLI made them all.
    assert len(replicas) == 7
    # Made before the controller ran, and still the same containers once all are
    # ready: the controller adopted them instead of rolling them.
    assert all(_created(docker_client, r["Id"]) < started for r in replicas)
    assert all(r["State"] == "running" for r in replicas)
    address = docker_client.api.inspect_container(plane["Id"])["NetworkSettings"]["Networks"]
    (dp_address,) = [n["IPAddress"] for n in address.values()]
    for r in replicas:
        host_config = docker_client.api.inspect_container(r["Id"])["HostConfig"]
        assert host_config["Dns"] == [dp_address]
    # Another `up` changes nothing: same containers.
    ok(run_cli(workspace, "up", "-d"))
    after = docker_client.api.containers(
        filters={"label": [f"{L.PROJECT}={project}", f"{L.ROLE}=replica"]}
    )
    assert {r["Id"] for r in after} == {r["Id"] for r in replicas}


def _ask(address: str, timeout: float) -> str:
    """One UDP query to address:53: 'answered', 'refused' or 'waiting' (no reply yet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.connect((address, 53))
        sock.send(dns.message.make_query("api.test.mini.local", "A").to_wire())
        try:
            sock.recv(4096)
        except ConnectionRefusedError:
            return "refused"
        except TimeoutError:
            return "waiting"
        return "answered"


@pytest.mark.ws("mini")
def test_the_data_plane_dns_port_queues_queries_before_it_is_configured(
    workspace: Path, docker_client: Any
) -> None:
    """Alone, with no controller to configure it, the data plane holds a query, not refuses it.

    The same container without the early bind refuses it: what the replicas
    started beside it would see.
    """
    dep = Deployment(workspace)
    try:
        network = dep.network()
        client = dep.engine.client
        image = images.ensure_dataplane_image(client, images.ensure_python_base(client))
        address = planned_address(network, dep.engine.network_addresses(network.id))
        assert address is not None
        spec = dataplane_spec(
            project=dep.project,
            env=dep.env,
            image=image,
            network=network,
            workspace=workspace,
            address=address,
        )
        assert spec.environment[EARLY_DNS] == address
        dep.engine.ensure_volume(
            L.link_volume_name(dep.project, dep.env),
            L.base_labels(dep.project, dep.env, L.Role.DATAPLANE),
        )
        outcomes = {}
        for early in (True, False):
            env = dict(spec.environment)
            if not early:
                env.pop(EARLY_DNS)
            cid = dep.engine.run_container(replace(spec, environment=env))
            try:
                time.sleep(3.0)  # well past its imports: waiting for a controller
                outcomes[early] = _ask(address, timeout=1.0)
            finally:
                dep.engine.remove(cid)
        assert outcomes == {True: "waiting", False: "refused"}
    finally:
        dep.down()
        dep.close()
