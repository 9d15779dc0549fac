"""Swarm mode: a Copilot service as a swarm service, its tasks as the replicas.

The engine is a swarm manager. Each service runs as a replicated swarm
service with `count` tasks, spread over the nodes by the swarm's scheduler,
on the environment's attachable overlay network. meshlocal's data plane
stays one container on the manager, attached to that network; swarm's own
service VIPs and routing mesh are not used (endpoint mode `dnsrr`): the data
plane balances, as in ECS Service Connect, and this kernel may lack IPVS.

Two facts of the overlay shape it (tests/e2e/test_swarm_overlay.py,
docs/docker-notes.md §12):

- An address added to the data plane's interface (a Service Connect
  endpoint's, vips.py) answers only containers on the manager: other nodes
  resolve only addresses the swarm knows. So each endpoint address is also
  claimed by a *holder* container: an endpoint on the overlay with that
  address and the data plane's own MAC address, which ignores ARP and has no
  IPv6. Other nodes then send the endpoint's packets to the data plane.
- A task on any node asks DNS through Docker's embedded resolver with its
  own overlay address: the mesh DNS tells clients apart as on one engine.

Pure functions here (specs and readings); the Engine calls are in
swarmengine.py, the controller's side in swarmreplicas.py.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meshlocal.manifest.model import ContainerHealthCheck
from meshlocal.runtime import labels as L
from meshlocal.runtime.enginetypes import ContainerSpec
from meshlocal.runtime.reconcile import DesiredService, ReplicaTemplate
from meshlocal.runtime.tasks import NO_HEALTHCHECK

_NS = 1_000_000_000

HOLDER_SYSCTLS = {
    # Never answer ARP: the data plane answers for the address; a reply from
    # the holder would teach the bridge its port for the data plane's MAC.
    "net.ipv4.conf.all.arp_ignore": "8",
    "net.ipv4.conf.default.arp_ignore": "8",
    "net.ipv6.conf.all.disable_ipv6": "1",  # no neighbour discovery either
}


def holder_spec(
    project: str, env: str, network: str, image: str, address: str, mac: str
) -> ContainerSpec:
    """The container that makes an endpoint address reachable from every node."""
    return ContainerSpec(
        name=f"{L.dataplane_name(project, env)}-vip-{address.replace('.', '-')}",
        image=image,
        labels={**L.base_labels(project, env, L.Role.VIP_HOLDER), L.PORT: address},
        command=("sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"),
        network=network,
        ipv4_address=address,
        mac_address=mac,
        sysctls=HOLDER_SYSCTLS,
        cap_drop=("ALL",),
        security_opt=("no-new-privileges",),
        read_only=True,
        healthcheck=NO_HEALTHCHECK,
        restart_policy="unless-stopped",
    )


def _healthcheck(check: ContainerHealthCheck | None) -> dict[str, Any]:
    check = check or NO_HEALTHCHECK
    test = list(check.command)
    if test == ["NONE"]:
        return {"Test": test}
    if test and test[0] not in ("CMD", "CMD-SHELL", "NONE"):
        test = ["CMD-SHELL", " ".join(test)]
    return {
        "Test": test,
        "Interval": int(check.interval_s * _NS),
        "Timeout": int(check.timeout_s * _NS),
        "Retries": check.retries,
        "StartPeriod": int(check.start_period_s * _NS),
    }


def service_spec(
    *,
    project: str,
    env: str,
    network: str,
    dns: tuple[str, ...],
    template: ReplicaTemplate,
    image: str,
    config_hash: str,
    count: int,
    sc_view: frozenset[str] | None,
    workspace: str | None = None,
) -> dict[str, Any]:
    """The swarm service of one Copilot service, as the Engine API's ServiceSpec.

    Per-task values come from swarm's templates: the hostname and the replica
    index are the task's slot. Rolling updates start the new task before the
    old one stops, as ECS's minimum healthy percent 100 does.
    """
    name = L.swarm_service_name(project, env, template.service)
    labels = L.base_labels(project, env, L.Role.REPLICA)
    labels.update({L.SERVICE: template.service, L.CONFIG_HASH: config_hash})
    if workspace:
        labels[L.WORKSPACE] = workspace
    if template.port is not None:
        labels[L.PORT] = str(template.port)
    if sc_view is not None:
        labels[L.SC_VIEW] = ",".join(sorted(sc_view))
    container: dict[str, Any] = {
        "Image": image,
        "Labels": labels,
        "Env": [f"{k}={v}" for k, v in template.environment.items()],
        # A DNS label, as on one engine: room left for a slot of up to 4 digits.
        "Hostname": f"{L.hostname_for(name[:58])}-{{{{.Task.Slot}}}}",
        "DNSConfig": {"Nameservers": list(dns)},
        "Healthcheck": _healthcheck(template.healthcheck),
        "StopGracePeriod": 10 * _NS,
    }
    if template.entrypoint is not None:
        container["Command"] = list(template.entrypoint)
        if template.command is not None:
            container["Args"] = list(template.command)
    elif template.command is not None:
        container["Args"] = list(template.command)
    service_labels = L.base_labels(project, env, L.Role.SERVICE)
    service_labels.update({L.SERVICE: template.service, L.CONFIG_HASH: config_hash})
    return {
        "Name": name,
        "Labels": service_labels,
        "TaskTemplate": {
            "ContainerSpec": container,
            "Networks": [{"Target": network}],
            # ECS replaces a stopped task whatever its exit code.
            "RestartPolicy": {"Condition": "any", "Delay": 1 * _NS},
        },
        "Mode": {"Replicated": {"Replicas": count}},
        "UpdateConfig": {"Parallelism": 1, "Order": "start-first", "FailureAction": "continue"},
        "EndpointSpec": {"Mode": "dnsrr"},
    }


def service_specs(
    desired: Mapping[str, DesiredService],
    *,
    project: str,
    env: str,
    network: str,
    dns: tuple[str, ...],
    sc_view: frozenset[str] | None,
) -> list[dict[str, Any]]:
    """Every service's spec, as the controller applies them (and the CLI's first start)."""
    return [
        service_spec(
            project=project,
            env=env,
            network=network,
            dns=dns,
            template=d.template,
            image=d.template.image,
            config_hash=d.template.config_hash(*dns, network),
            count=d.count,
            sc_view=sc_view,
        )
        for d in desired.values()
    ]


@dataclass(frozen=True)
class SwarmTask:
    """One task of a meshlocal swarm service, as the manager reports it."""

    id: str
    service: str  # the Copilot service
    slot: int
    node: str  # node id
    state: str  # new ... starting | running | complete | failed | shutdown ...
    desired: str  # running | shutdown
    address: str | None  # on the environment's overlay
    container_id: str | None
    config_hash: str
    labels: Mapping[str, str]
    error: str = ""
    exit_code: int | None = None

    @property
    def failed(self) -> bool:
        """Ended on its own (exit, failed check, or the node could not start it)."""
        return self.state in ("failed", "rejected")

    @property
    def live(self) -> bool:
        """Running or starting, and meant to: a replica (healthy or not yet)."""
        return self.desired == "running" and self.state in ("starting", "running")


def read_task(raw: Mapping[str, Any], network_id: str) -> SwarmTask | None:
    """A task from `GET /tasks`; None when it is not one of meshlocal's replicas."""
    spec = ((raw.get("Spec") or {}).get("ContainerSpec")) or {}
    labels: Mapping[str, str] = spec.get("Labels") or {}
    service = labels.get(L.SERVICE)
    if labels.get(L.ROLE) != L.Role.REPLICA.value or not service:
        return None
    address = None
    for attached in raw.get("NetworksAttachments") or []:
        if (attached.get("Network") or {}).get("ID") == network_id:
            for cidr in attached.get("Addresses") or []:
                address = str(cidr).split("/")[0]
    status = raw.get("Status") or {}
    return SwarmTask(
        id=str(raw["ID"]),
        service=service,
        slot=int(raw.get("Slot") or 0),
        node=str(raw.get("NodeID") or ""),
        state=str(status.get("State") or ""),
        desired=str(raw.get("DesiredState") or ""),
        address=address,
        container_id=((status.get("ContainerStatus") or {}).get("ContainerID")) or None,
        config_hash=labels.get(L.CONFIG_HASH, ""),
        labels=labels,
        error=str(status.get("Err") or ""),
        exit_code=(status.get("ContainerStatus") or {}).get("ExitCode"),
    )
