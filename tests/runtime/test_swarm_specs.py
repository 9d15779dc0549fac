"""Swarm mode's pure side: service specs, task readings, address holders (no Docker).

The task JSON has the shape of the Engine API 1.41's `GET /tasks`; the specs are
checked field by field against what swarmengine.py sends to `POST /services/create`.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import time
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meshlocal.manifest.model import ContainerHealthCheck
from meshlocal.registry import ReplicaRegistry
from meshlocal.runtime import labels as L
from meshlocal.runtime.enginetypes import ContainerInfo, NetworkInfo
from meshlocal.runtime.reconcile import DesiredService, ReplicaTemplate
from meshlocal.runtime.swarm import (
    HOLDER_SYSCTLS,
    SwarmTask,
    holder_spec,
    read_task,
    service_spec,
    service_specs,
)
from meshlocal.runtime.swarmreplicas import SwarmReplicas
from meshlocal.vips import container_range, emulator_address, reserved_address, vip_block

PROJECT = "kudos-1a2b3c4d"
ENV = "test"
NETWORK = "kudos-1a2b3c4d-test"
DNS = ("10.224.2.1",)
NS = 1_000_000_000


def template(**over: Any) -> ReplicaTemplate:
    fields: dict[str, Any] = {
        "service": "api",
        "image": "kudos/api:latest",
        "environment": {"COPILOT_SERVICE_NAME": "api"},
        "port": 8080,
    }
    fields.update(over)
    return ReplicaTemplate(**fields)


def spec(tpl: ReplicaTemplate | None = None, **over: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "project": PROJECT,
        "env": ENV,
        "network": NETWORK,
        "dns": DNS,
        "template": tpl or template(),
        "image": "kudos/api@sha256:0123",
        "config_hash": "c0ffee0123456789",
        "count": 3,
        "sc_view": frozenset({"orders", "api", "billing"}),
    }
    args.update(over)
    return service_spec(**args)


def container(s: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = s["TaskTemplate"]["ContainerSpec"]
    return out


# -- service_spec ---------------------------------------------------------------------


def test_the_service_is_named_as_labels_says_and_runs_the_given_image() -> None:
    s = spec()
    assert s["Name"] == L.swarm_service_name(PROJECT, ENV, "api") == "kudos-1a2b3c4d-test-api"
    assert container(s)["Image"] == "kudos/api@sha256:0123"
    assert s["TaskTemplate"]["Networks"] == [{"Target": NETWORK}]
    # What the Engine API gets is JSON: nothing in the spec may be a tuple or a set.
    assert json.loads(json.dumps(s)) == s


def test_container_and_service_labels_are_exact() -> None:
    s = spec()
    assert container(s)["Labels"] == {
        L.PROJECT: PROJECT,
        L.ENV: ENV,
        L.ROLE: "replica",
        L.SERVICE: "api",
        L.CONFIG_HASH: "c0ffee0123456789",
        L.PORT: "8080",
        L.SC_VIEW: "api,billing,orders",  # sorted, comma-joined
    }
    # The service itself is no replica: `ps` and clean-up find its tasks by the container's.
    assert s["Labels"] == {
        L.PROJECT: PROJECT,
        L.ENV: ENV,
        L.ROLE: "service",
        L.SERVICE: "api",
        L.CONFIG_HASH: "c0ffee0123456789",
    }


def test_the_view_label_is_sorted_whatever_the_set_s_order() -> None:
    names = frozenset(f"svc-{c}" for c in "qwertyuiopasdfgh")
    assert list(names) != sorted(names)  # 16 names: a set is (almost) never sorted
    assert container(spec(sc_view=names))["Labels"][L.SC_VIEW] == ",".join(sorted(names))


def test_no_port_and_no_view_leave_their_labels_out_and_an_empty_view_is_kept() -> None:
    labels = container(spec(template(port=None), sc_view=None))["Labels"]
    assert L.PORT not in labels and L.SC_VIEW not in labels
    assert L.WORKSPACE not in labels
    # An empty view (no endpoint yet) differs from none: the replica resolves nothing.
    empty = container(spec(sc_view=frozenset()))["Labels"]
    assert empty[L.SC_VIEW] == "" and L.parse_view(empty[L.SC_VIEW]) == frozenset()
    assert L.parse_view(container(spec())["Labels"][L.SC_VIEW]) == frozenset(
        {"api", "billing", "orders"}
    )


def test_the_workspace_label_is_on_the_container_only() -> None:
    s = spec(workspace="/home/me/kudos")
    assert container(s)["Labels"][L.WORKSPACE] == "/home/me/kudos"
    assert L.WORKSPACE not in s["Labels"]


def test_env_is_the_exact_key_value_strings_in_order() -> None:
    env = {
        "COPILOT_SERVICE_NAME": "api",
        "DSN": "postgres://u:p@db/kudos?sslmode=disable&x=y",
        "GREETING": "hello  world ",
        "EMPTY": "",
        "EQ": "a=b=c",
    }
    assert container(spec(template(environment=env)))["Env"] == [
        "COPILOT_SERVICE_NAME=api",
        "DSN=postgres://u:p@db/kudos?sslmode=disable&x=y",
        "GREETING=hello  world ",
        "EMPTY=",
        "EQ=a=b=c",
    ]
    assert container(spec(template(environment={})))["Env"] == []


@pytest.mark.parametrize(
    ("entrypoint", "command", "expected"),
    [
        (None, None, {}),
        (("/bin/app", "--serve"), None, {"Command": ["/bin/app", "--serve"]}),
        (None, ("--port", "8080"), {"Args": ["--port", "8080"]}),
        (
            ("/bin/sh", "-c"),
            ("exec app 'a b'",),
            {"Command": ["/bin/sh", "-c"], "Args": ["exec app 'a b'"]},
        ),
    ],
)
def test_entrypoint_is_command_and_command_is_args(
    entrypoint: tuple[str, ...] | None,
    command: tuple[str, ...] | None,
    expected: dict[str, list[str]],
) -> None:
    c = container(spec(template(entrypoint=entrypoint, command=command)))
    assert {k: c[k] for k in ("Command", "Args") if k in c} == expected


@pytest.mark.parametrize(
    ("check", "expected"),
    [
        (None, {"Test": ["NONE"]}),
        (ContainerHealthCheck(command=("NONE",)), {"Test": ["NONE"]}),
        (
            ContainerHealthCheck(
                command=("CMD-SHELL", "curl -f http://localhost:8080/ || exit 1"),
                interval_s=0.5,
                timeout_s=2.0,
                retries=3,
                start_period_s=1.5,
            ),
            {
                "Test": ["CMD-SHELL", "curl -f http://localhost:8080/ || exit 1"],
                "Interval": 500_000_000,
                "Timeout": 2 * NS,
                "Retries": 3,
                "StartPeriod": 1_500_000_000,
            },
        ),
        (
            ContainerHealthCheck(command=("CMD", "wget", "-q", "-O-", "http://localhost/")),
            {
                "Test": ["CMD", "wget", "-q", "-O-", "http://localhost/"],
                "Interval": 10 * NS,
                "Timeout": 5 * NS,
                "Retries": 2,
                "StartPeriod": 0,
            },
        ),
        # A bare command string runs in a shell, as Copilot's string form does.
        (
            ContainerHealthCheck(command=("test -f /tmp/ready",), interval_s=1, timeout_s=1),
            {
                "Test": ["CMD-SHELL", "test -f /tmp/ready"],
                "Interval": NS,
                "Timeout": NS,
                "Retries": 2,
                "StartPeriod": 0,
            },
        ),
        (
            ContainerHealthCheck(command=("curl", "-f", "http://localhost/")),
            {
                "Test": ["CMD-SHELL", "curl -f http://localhost/"],
                "Interval": 10 * NS,
                "Timeout": 5 * NS,
                "Retries": 2,
                "StartPeriod": 0,
            },
        ),
    ],
)
def test_the_health_check_in_engine_terms(
    check: ContainerHealthCheck | None, expected: dict[str, Any]
) -> None:
    hc = container(spec(template(healthcheck=check)))["Healthcheck"]
    assert hc == expected
    for key in ("Interval", "Timeout", "StartPeriod"):
        if key in hc:
            assert type(hc[key]) is int  # the API wants integer nanoseconds


def test_dns_hostname_and_the_swarm_policies() -> None:
    s = spec(dns=("10.224.2.1", "10.224.2.9"), count=4)
    c = container(s)
    assert c["DNSConfig"] == {"Nameservers": ["10.224.2.1", "10.224.2.9"]}
    # Swarm fills the slot in per task: kudos-1a2b3c4d-test-api-1, -2, ...
    assert c["Hostname"] == "kudos-1a2b3c4d-test-api-{{.Task.Slot}}"
    assert c["StopGracePeriod"] == 10 * NS
    assert s["EndpointSpec"] == {"Mode": "dnsrr"}  # no swarm VIP, no routing mesh
    assert s["UpdateConfig"]["Order"] == "start-first"
    assert s["UpdateConfig"]["Parallelism"] == 1
    assert s["TaskTemplate"]["RestartPolicy"]["Condition"] == "any"
    assert s["Mode"] == {"Replicated": {"Replicas": 4}}
    assert spec(count=0)["Mode"] == {"Replicated": {"Replicas": 0}}


def test_env_and_service_slugs_make_the_name_and_hostname() -> None:
    s = spec(template(service="Orders_API"), env="Staging Env")
    assert s["Name"] == "kudos-1a2b3c4d-staging-env-orders_api"
    assert container(s)["Hostname"] == "kudos-1a2b3c4d-staging-env-orders_api-{{.Task.Slot}}"
    assert container(s)["Labels"][L.SERVICE] == "Orders_API"  # the Copilot name, unchanged
    assert container(s)["Labels"][L.ENV] == "Staging Env"


def test_a_task_hostname_fits_a_dns_label_for_any_name_swarm_accepts() -> None:
    project = "customer-engagement-platform-0a1b2c3d"  # a 28-char app name
    service = "notify-workers"
    name = L.swarm_service_name(project, "production", service)
    assert len(name) == 63  # the longest name swarm accepts for a service
    hostname = container(spec(template(service=service), project=project, env="production"))[
        "Hostname"
    ]
    for slot in ("1", "12"):
        assert len(hostname.replace("{{.Task.Slot}}", slot)) <= 63


# -- service_specs --------------------------------------------------------------------


def test_service_specs_hash_each_template_with_the_dns_and_the_network() -> None:
    api = template()
    worker = template(service="worker", image="kudos/worker:1", port=None)
    desired = {"api": DesiredService(api, 2), "worker": DesiredService(worker, 1)}
    specs = service_specs(
        desired, project=PROJECT, env=ENV, network=NETWORK, dns=DNS, sc_view=frozenset({"api"})
    )
    assert [s["Name"] for s in specs] == ["kudos-1a2b3c4d-test-api", "kudos-1a2b3c4d-test-worker"]
    assert [container(s)["Image"] for s in specs] == ["kudos/api:latest", "kudos/worker:1"]
    assert [s["Mode"]["Replicated"]["Replicas"] for s in specs] == [2, 1]
    assert [container(s)["DNSConfig"]["Nameservers"] for s in specs] == [list(DNS)] * 2
    assert all(container(s)["Labels"][L.SC_VIEW] == "api" for s in specs)

    # The controller compares running tasks with SwarmReplicas.config_hash: the same value.
    replicas = SwarmReplicas(
        cast(Any, None),
        ReplicaRegistry(),
        project=PROJECT,
        env=ENV,
        network=NetworkInfo(NETWORK, "netid", "10.224.0.0/22", "10.224.0.1", driver="overlay"),
        dns=DNS,
    )
    for s, (tpl, d) in zip(
        specs, [(api, desired["api"]), (worker, desired["worker"])], strict=True
    ):
        expected = tpl.config_hash(*DNS, NETWORK)
        assert expected == replicas.config_hash(d)
        assert container(s)["Labels"][L.CONFIG_HASH] == expected
        assert s["Labels"][L.CONFIG_HASH] == expected
    # A new DNS address or network rolls the tasks; the count does not.
    assert api.config_hash("10.224.2.2", NETWORK) != api.config_hash(*DNS, NETWORK)
    assert api.config_hash(*DNS, "other") != api.config_hash(*DNS, NETWORK)
    again = service_specs(
        {"api": DesiredService(api, 5)},
        project=PROJECT,
        env=ENV,
        network=NETWORK,
        dns=DNS,
        sc_view=None,
    )
    assert container(again[0])["Labels"][L.CONFIG_HASH] == api.config_hash(*DNS, NETWORK)


# -- read_task ------------------------------------------------------------------------

OVERLAY_ID = "x9mgk1sw2dw3nqmfmrbwzj4n1"
INGRESS_ID = "4qvuz4ko70xaltuqbt8956gd1"
CONTAINER_ID = "e5d62702a1b48d01c3e02ca1e0212a250801fa8d67caca0b6f35919ebc12f035"
REPLICA_LABELS = {
    L.PROJECT: PROJECT,
    L.ENV: ENV,
    L.ROLE: "replica",
    L.SERVICE: "api",
    L.CONFIG_HASH: "c0ffee0123456789",
    L.PORT: "8080",
    L.SC_VIEW: "api,orders",
}

# One task of `GET /tasks` (Engine API 1.41), as a 20.10 manager answers.
TASK: dict[str, Any] = {
    "ID": "0kzzo1i0y4jz6027t0k7aezc7",
    "Version": {"Index": 71},
    "CreatedAt": "2026-12-05T23:00:01.123456789Z",
    "UpdatedAt": "2026-12-05T23:00:03.987654321Z",
    "Spec": {
        "ContainerSpec": {
            "Image": "kudos/api@sha256:0123",
            "Labels": REPLICA_LABELS,
            "Env": ["COPILOT_SERVICE_NAME=api"],
            "Hostname": "kudos-1a2b3c4d-test-api-{{.Task.Slot}}",
            "DNSConfig": {"Nameservers": ["10.224.2.1"]},
            "Isolation": "default",
        },
        "Resources": {"Limits": {}, "Reservations": {}},
        "RestartPolicy": {"Condition": "any", "Delay": 1000000000, "MaxAttempts": 0},
        "Placement": {"Platforms": [{"Architecture": "amd64", "OS": "linux"}]},
        "Networks": [{"Target": OVERLAY_ID}],
        "ForceUpdate": 0,
    },
    "ServiceID": "9mnpnzenvg8p8tdbtq4wvbkcz",
    "Slot": 2,
    "NodeID": "60gvrl6tm78dmak4yl7srz94v",
    "Status": {
        "Timestamp": "2026-12-05T23:00:03.9Z",
        "State": "running",
        "Message": "started",
        "ContainerStatus": {"ContainerID": CONTAINER_ID, "PID": 677, "ExitCode": 0},
        "PortStatus": {},
    },
    "DesiredState": "running",
    "NetworksAttachments": [
        {
            "Network": {
                "ID": INGRESS_ID,
                "Version": {"Index": 6},
                "Spec": {"Name": "ingress", "Ingress": True},
                "DriverState": {"Name": "overlay"},
                "IPAMOptions": {"Configs": [{"Subnet": "10.255.0.0/16"}]},
            },
            "Addresses": ["10.255.0.10/16"],
        },
        {
            "Network": {
                "ID": OVERLAY_ID,
                "Version": {"Index": 40},
                "Spec": {"Name": NETWORK, "Attachable": True},
                "DriverState": {"Name": "overlay"},
                "IPAMOptions": {"Configs": [{"Subnet": "10.224.0.0/22", "Range": "10.224.0.0/23"}]},
            },
            "Addresses": ["10.224.0.5/22"],
        },
    ],
    "AssignedGenericResources": [],
}


def task(**over: Any) -> dict[str, Any]:
    raw = copy.deepcopy(TASK)
    raw.update(over)
    return raw


def test_a_running_replica_task() -> None:
    t = read_task(task(), OVERLAY_ID)
    assert t == SwarmTask(
        id="0kzzo1i0y4jz6027t0k7aezc7",
        service="api",
        slot=2,
        node="60gvrl6tm78dmak4yl7srz94v",
        state="running",
        desired="running",
        address="10.224.0.5",
        container_id=CONTAINER_ID,
        config_hash="c0ffee0123456789",
        labels=REPLICA_LABELS,
        error="",
        exit_code=0,
    )
    assert t.live and not t.failed


def test_the_address_is_the_one_on_the_given_network_only() -> None:
    assert (t := read_task(task(), INGRESS_ID)) is not None and t.address == "10.255.0.10"
    assert (t := read_task(task(), "another-network")) is not None and t.address is None
    # The order of the attachments does not matter.
    flipped = task(NetworksAttachments=list(reversed(TASK["NetworksAttachments"])))
    assert (t := read_task(flipped, OVERLAY_ID)) is not None and t.address == "10.224.0.5"
    # An attachment without addresses (yet) or without a network is no address.
    bare = task(
        NetworksAttachments=[
            {"Network": {"ID": OVERLAY_ID}, "Addresses": None},
            {"Network": None, "Addresses": ["10.224.0.9/22"]},
            {"Addresses": ["10.224.0.8/22"]},
        ]
    )
    assert (t := read_task(bare, OVERLAY_ID)) is not None and t.address is None


@pytest.mark.parametrize(
    "labels",
    [
        {**REPLICA_LABELS, L.ROLE: "service"},
        {**REPLICA_LABELS, L.ROLE: "vip-holder"},
        {**REPLICA_LABELS, L.ROLE: "dataplane"},
        {k: v for k, v in REPLICA_LABELS.items() if k != L.ROLE},
        {k: v for k, v in REPLICA_LABELS.items() if k != L.SERVICE},
        {**REPLICA_LABELS, L.SERVICE: ""},
        {"com.example.other": "x"},
        {},
        None,
    ],
)
def test_tasks_that_are_not_replicas_are_none(labels: dict[str, str] | None) -> None:
    raw = task()
    raw["Spec"]["ContainerSpec"]["Labels"] = labels
    assert read_task(raw, OVERLAY_ID) is None


def test_a_task_without_a_container_spec_is_none() -> None:
    assert read_task(task(Spec={}), OVERLAY_ID) is None
    assert read_task(task(Spec=None), OVERLAY_ID) is None
    assert read_task({"ID": "x"}, OVERLAY_ID) is None


def test_a_task_not_yet_scheduled_has_what_it_has() -> None:
    raw = task(Status={"State": "pending", "Message": "pending task scheduling"})
    del raw["NodeID"], raw["Slot"], raw["NetworksAttachments"]
    t = read_task(raw, OVERLAY_ID)
    assert t is not None
    assert (t.node, t.slot, t.error) == ("", 0, "")
    assert t.address is None and t.container_id is None and t.exit_code is None
    assert (t.state, t.desired, t.service) == ("pending", "running", "api")
    assert not t.live
    # A container id the engine has not filled in yet is none either.
    t = read_task(task(Status={"State": "assigned", "ContainerStatus": {}}), OVERLAY_ID)
    assert t is not None and t.container_id is None
    t = read_task(task(Status={"State": "preparing", "ContainerStatus": {"ContainerID": ""}}), "n")
    assert t is not None and t.container_id is None
    # No status, no desired state, no config hash label: empty strings.
    raw = task()
    del raw["Status"], raw["DesiredState"]
    del raw["Spec"]["ContainerSpec"]["Labels"][L.CONFIG_HASH]
    t = read_task(raw, OVERLAY_ID)
    assert t is not None and (t.state, t.desired, t.config_hash) == ("", "", "")


def test_a_failed_task_keeps_its_error() -> None:
    raw = task(
        DesiredState="shutdown",
        Status={
            "State": "failed",
            "Message": "started",
            "Err": "task: non-zero exit (137): dockerexec: unhealthy container",
            "ContainerStatus": {"ContainerID": CONTAINER_ID, "ExitCode": 137},
        },
    )
    t = read_task(raw, OVERLAY_ID)
    assert t is not None
    assert t.error == "task: non-zero exit (137): dockerexec: unhealthy container"
    assert (t.state, t.desired, t.container_id) == ("failed", "shutdown", CONTAINER_ID)
    assert t.exit_code == 137
    assert t.failed and not t.live


TASK_STATES = [
    *("new", "pending", "assigned", "accepted", "ready", "preparing", "starting"),
    *("running", "complete", "shutdown", "failed", "rejected", "remove", "orphaned"),
]


@pytest.mark.parametrize("desired", ["running", "shutdown", "ready", "remove"])
@pytest.mark.parametrize("state", TASK_STATES)
def test_a_task_is_live_only_starting_or_running_and_meant_to_run(state: str, desired: str) -> None:
    t = read_task(task(DesiredState=desired, Status={"State": state}), OVERLAY_ID)
    assert t is not None
    assert t.live is (desired == "running" and state in ("starting", "running"))
    assert t.failed is (state in ("failed", "rejected"))  # whatever swarm wants of it


# -- holder_spec ----------------------------------------------------------------------


def test_the_holder_claims_the_address_with_the_data_planes_mac() -> None:
    h = holder_spec(PROJECT, ENV, NETWORK, "meshlocal/busybox:1", "10.224.3.7", "02:42:0a:e0:02:01")
    assert h.name == "kudos-1a2b3c4d-test-meshlocal-vip-10-224-3-7"
    assert h.name.startswith(L.dataplane_name(PROJECT, ENV))
    assert h.labels == {
        L.PROJECT: PROJECT,
        L.ENV: ENV,
        L.ROLE: "vip-holder",
        L.PORT: "10.224.3.7",
    }
    assert (h.image, h.network, h.ipv4_address, h.mac_address) == (
        "meshlocal/busybox:1",
        NETWORK,
        "10.224.3.7",
        "02:42:0a:e0:02:01",
    )
    assert h.network_mode is None and not h.aliases and not h.ports and not h.binds


def test_the_holder_never_answers_arp_has_no_ipv6_and_no_privileges() -> None:
    h = holder_spec(PROJECT, ENV, NETWORK, "img", "10.224.3.7", "02:42:0a:e0:02:01")
    assert (
        dict(h.sysctls)
        == HOLDER_SYSCTLS
        == {
            "net.ipv4.conf.all.arp_ignore": "8",
            "net.ipv4.conf.default.arp_ignore": "8",
            "net.ipv6.conf.all.disable_ipv6": "1",
        }
    )
    assert tuple(h.cap_drop) == ("ALL",) and not h.cap_add
    assert tuple(h.security_opt) == ("no-new-privileges",)
    assert h.read_only is True
    assert h.restart_policy == "unless-stopped"
    assert h.healthcheck is not None and tuple(h.healthcheck.command) == ("NONE",)


def test_two_addresses_get_two_holders() -> None:
    a = holder_spec(PROJECT, ENV, NETWORK, "img", "10.224.3.7", "02:42:0a:e0:02:01")
    b = holder_spec(PROJECT, ENV, NETWORK, "img", "10.224.3.70", "02:42:0a:e0:02:01")
    assert a.name != b.name and a.labels[L.PORT] != b.labels[L.PORT]


@pytest.mark.skipif(shutil.which("sh") is None, reason="no sh")
def test_the_holders_command_sleeps_and_stops_at_once_on_term() -> None:
    """Its command idles and exits 0 on SIGTERM, so `docker stop` takes no 10 s grace."""
    h = holder_spec(PROJECT, ENV, NETWORK, "img", "10.224.3.7", "02:42:0a:e0:02:01")
    assert h.command is not None and tuple(h.command[:2]) == ("sh", "-c")
    proc = subprocess.Popen(list(h.command), start_new_session=True)
    try:
        time.sleep(0.3)
        assert proc.poll() is None  # idles
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=5)
        # The backgrounded `sleep` of its group (a container's PID namespace ends it).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


# -- reserved_address -----------------------------------------------------------------


def _check_reserved(subnet: str) -> str:
    net = ipaddress.IPv4Network(subnet, strict=False)
    got = reserved_address(subnet)
    address = ipaddress.IPv4Address(got)
    assert address in net
    assert address not in (net.network_address, net.broadcast_address)
    assert address not in ipaddress.IPv4Network(container_range(subnet))
    assert got != emulator_address(subnet)
    assert address != net.network_address + 1  # Docker's default gateway
    return got


@pytest.mark.parametrize(
    ("subnet", "expected"),
    [
        ("10.224.0.0/22", "10.224.2.1"),  # the overlay's (engine._free_overlay_subnet)
        ("10.224.4.0/22", "10.224.6.1"),
        ("10.224.1.77/22", "10.224.2.1"),  # host bits are ignored
        ("172.22.0.0/16", "172.22.128.1"),
        ("192.168.16.0/20", "192.168.24.1"),
        ("10.0.0.0/23", "10.0.1.1"),
    ],
)
def test_the_reserved_address_is_the_first_host_of_the_upper_half(
    subnet: str, expected: str
) -> None:
    assert _check_reserved(subnet) == expected


@pytest.mark.parametrize(
    "subnet",
    [
        "10.224.0.0/22",
        "172.22.0.0/16",
        "10.0.0.0/23",
    ],
)
def test_no_endpoint_is_given_the_reserved_address(subnet: str) -> None:
    block = vip_block(subnet, container_range(subnet), str(ipaddress.ip_network(subnet)[1]))
    assert reserved_address(subnet) not in block


subnets = st.builds(
    lambda addr, prefix: str(ipaddress.IPv4Network((addr, prefix), strict=False)),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.integers(min_value=8, max_value=23),
)


@given(subnets)
def test_the_reserved_address_is_a_host_of_any_subnet_outside_the_container_range(
    subnet: str,
) -> None:
    _check_reserved(subnet)


@given(subnets.filter(lambda s: ipaddress.IPv4Network(s).prefixlen <= 22))
def test_the_reserved_address_is_no_endpoint_address_up_to_a_22(subnet: str) -> None:
    net = ipaddress.IPv4Network(subnet)
    block = vip_block(subnet, container_range(subnet), str(net.network_address + 1))
    assert reserved_address(subnet) not in block


# -- ContainerInfo.index from swarm's task name ---------------------------------------


def info(labels: dict[str, str]) -> ContainerInfo:
    return ContainerInfo("cid", "name", "img", labels, "running", None, {})


@pytest.mark.parametrize(
    ("labels", "index"),
    [
        ({"com.docker.swarm.task.name": "kudos-1a2b3c4d-test-api.3.0kzzo1i0y4jz6027t0k7aezc7"}, 3),
        ({"com.docker.swarm.task.name": "kudos-1a2b3c4d-test-api.12.0kzzo1i0y4jz"}, 12),
        # A slug may hold dots: the slot is the second field from the right.
        ({"com.docker.swarm.task.name": "kudos.1a2b.test-api.v2.7.0kzzo1i0y4jz"}, 7),
        # A global service's task is named by its node, not a slot.
        ({"com.docker.swarm.task.name": "svc.60gvrl6tm78dmak4yl7srz94v.0kzzo1i0"}, None),
        ({"com.docker.swarm.task.name": "svc.3"}, None),
        # Engine mode's own label wins.
        ({L.REPLICA: "5", "com.docker.swarm.task.name": "svc.3.0kzzo1i0"}, 5),
        ({L.REPLICA: "2"}, 2),
        ({}, None),
    ],
)
def test_the_index_of_a_task_container_is_its_slot(
    labels: dict[str, str], index: int | None
) -> None:
    assert info(labels).index == index


def test_a_task_name_without_dots_is_no_index() -> None:
    assert info({"com.docker.swarm.task.name": "weird"}).index is None
