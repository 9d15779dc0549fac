"""The environment's network, for the Engine (engine.py mixes this in).

A bridge on one engine, an attachable overlay in swarm mode (swarm.py);
both with an `ip_range` keeping containers in the lower half of the subnet,
so the top is free for Service Connect endpoint addresses (vips.py). And
removing one, which Docker 20.10 sometimes makes hard.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types

from meshlocal.errors import RuntimeFailure
from meshlocal.runtime import labels as L
from meshlocal.runtime.enginedecode import ipv4_config
from meshlocal.runtime.engineerrors import engine_errors, map_docker_error
from meshlocal.runtime.enginetypes import NetworkInfo
from meshlocal.vips import container_range


class Networks:
    api: docker.APIClient

    def ensure_network(
        self,
        project: str,
        env: str,
        workspace: os.PathLike[str] | None = None,
        *,
        driver: str = "bridge",
    ) -> NetworkInfo:
        """The environment's own labelled bridge network, created on first use.

        It is created with an `ip_range` holding containers to the lower half
        of its subnet, so the top of the subnet is free for Service Connect
        endpoint addresses (vips.py).
        """
        name = L.network_name(project, env)
        with engine_errors(f"creating network {name}"):
            found = self.api.networks(names=[name])
            mine = [n for n in found if n.get("Name") == name]
            if mine:
                net = self.api.inspect_network(mine[0]["Id"])
                if (net.get("Labels") or {}).get(L.PROJECT) != project:
                    raise RuntimeFailure(
                        f"a Docker network named {name} exists and was not created by meshlocal",
                        hint=f"remove it (`docker network rm {name}`) or rename it",
                    )
            else:
                root = None if workspace is None else Path(os.fspath(workspace))
                labels = L.base_labels(project, env, L.Role.NETWORK, root)
                net = self._create_network(name, labels, driver)
        if net.get("Driver") == "overlay" and not ipv4_config(net).get("Subnet"):
            net = self._allocated(str(net["Id"]))
        config = ipv4_config(net)
        return NetworkInfo(
            name=name,
            id=str(net["Id"]),
            driver=str(net.get("Driver") or "bridge"),
            subnet=config.get("Subnet"),
            gateway=config.get("Gateway"),
            ip_range=config.get("IPRange") or None,
        )

    def _create_network(
        self, name: str, labels: Mapping[str, str], driver: str = "bridge"
    ) -> dict[str, Any]:
        # Docker picks a free subnet only when none is given, and an ip_range
        # needs one: let it pick, then recreate the network on that subnet with
        # the range. Another engine user can take the subnet in between; then
        # the create fails with an overlap and the whole thing is tried again.
        last: BaseException | None = None
        for _ in range(5):
            # Its own unlabelled name: nothing may find and adopt the probe meanwhile.
            probe_name = f"{name}-probe-{uuid.uuid4().hex[:8]}"
            if driver == "overlay":
                # The swarm's pool hands out /24s, too small for endpoint addresses.
                subnet, gateway = self._free_overlay_subnet()
            else:
                probe = self.api.create_network(probe_name, driver=driver)
                try:
                    info = self.api.inspect_network(probe["Id"])
                finally:
                    self.api.remove_network(probe["Id"])
                config = ipv4_config(info)
                subnet = str(config.get("Subnet") or "")
                gateway = str(config.get("Gateway") or "")
            if not subnet:
                raise RuntimeFailure(f"Docker gave network {name} no IPv4 subnet")
            pool = docker.types.IPAMPool(
                subnet=subnet, iprange=container_range(subnet), gateway=gateway or None
            )
            try:
                created = self.api.create_network(
                    name,
                    driver=driver,
                    # Swarm mode: the data plane, a plain container, joins it.
                    attachable=driver == "overlay" or None,
                    labels=dict(labels),
                    ipam=docker.types.IPAMConfig(pool_configs=[pool]),
                    check_duplicate=True,
                )
            except docker.errors.APIError as exc:
                # Docker 20.10 says either, depending on who took the subnet first
                # ("Pool overlaps ...", "failed to allocate gateway (...): Address
                # already in use", seen with two meshes coming up at once).
                said = str(exc).lower()
                if "overlap" not in said and "address already in use" not in said:
                    raise
                last = exc
                continue
            result: dict[str, Any] = self.api.inspect_network(created["Id"])
            return result
        raise RuntimeFailure(
            f"could not create network {name}: every subnet Docker offered was taken ({last})",
            hint="retry; other tools are creating networks at the same time",
        )

    def _allocated(self, network_id: str, timeout: float = 15.0) -> dict[str, Any]:
        """An overlay as the swarm's allocator leaves it: a moment after the create
        returns, `inspect` may still show no IPAM config."""
        deadline = time.monotonic() + timeout
        while True:
            net: dict[str, Any] = self.api.inspect_network(network_id)
            if ipv4_config(net).get("Subnet") or time.monotonic() > deadline:
                return net
            time.sleep(0.1)

    def _free_overlay_subnet(self) -> tuple[str, str]:
        """A /22 in 10.224.0.0/11 that no network the manager knows overlaps."""
        taken = []
        for net in self.api.networks():
            for pool in (
                (self.api.inspect_network(net["Id"]).get("IPAM") or {}).get("Config")
            ) or []:
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    taken.append(ipaddress.ip_network(pool["Subnet"]))
        for candidate in ipaddress.ip_network("10.224.0.0/11").subnets(new_prefix=22):
            if not any(candidate.overlaps(t) for t in taken if t.version == 4):
                return str(candidate), str(candidate.network_address + 1)
        raise RuntimeFailure("no free /22 for the overlay network in 10.224.0.0/11")

    def _gone(self, network_id: str, timeout: float = 30.0) -> None:
        """Until a removed overlay is gone: the swarm removes it once no node holds a
        task on it, so an `up` right after `down` would find it still there."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.api.inspect_network(network_id)
            except docker.errors.NotFound:
                return
            time.sleep(0.3)

    def network_addresses(self, network_id: str) -> list[str]:
        """The IPv4 addresses containers hold on a network."""
        with engine_errors("inspecting the network"):
            info = self.api.inspect_network(network_id)
        return [
            str(c.get("IPv4Address") or "").split("/")[0]
            for c in (info.get("Containers") or {}).values()
        ]

    def _remove_busy_network(self, network_id: str, name: str) -> None:
        """A network that still has endpoints: cut loose what joined it, then retry.

        Something outside meshlocal may have joined it; or the engine is still
        releasing the endpoints of containers just removed. Docker 20.10 can
        also keep an endpoint of a removed container for good, which only an
        engine restart clears: that is said, not hidden.
        """
        for attempt in range(6):
            self._disconnect_all(network_id)
            try:
                self.api.remove_network(network_id)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if "has active endpoints" not in str(exc.explanation or exc):
                    raise map_docker_error(exc, f"removing network {name}") from exc
            time.sleep(0.25 * (attempt + 1))
        raise RuntimeFailure(
            f"the Docker engine still counts an endpoint on network {name}, which no "
            "container holds any more (a Docker engine bug after many containers leave at once)",
            hint="restart the Docker engine (`sudo systemctl restart docker`, or Docker "
            "Desktop's Restart), then run `meshlocal down` again: nothing else is left",
        )

    def _disconnect_all(self, network_id: str) -> None:
        with engine_errors():
            info = self.api.inspect_network(network_id)
        for cid in info.get("Containers") or {}:
            with contextlib.suppress(docker.errors.DockerException):
                self.api.disconnect_container_from_network(cid, network_id, force=True)
