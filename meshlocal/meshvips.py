"""The controller's Service Connect addresses: allocated, and put where the data plane listens.

Container mode: a short-lived helper container (runtime/dataplane.py) puts
them on the data plane's interface, once per start of the data plane (a new
start is a new namespace). Host mode: on the host's bridge, through netlink
(runtime/vipnet.py), and released at shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from types import ModuleType

from meshlocal.agentconfig import AgentConfig
from meshlocal.errors import DataPlaneError, MeshlocalError
from meshlocal.naming import NamingModel
from meshlocal.runtime import labels as L
from meshlocal.runtime.dataplane import vip_helper_spec
from meshlocal.runtime.engine import Engine, NetworkInfo
from meshlocal.runtime.swarm import holder_spec
from meshlocal.vips import allocate

log = logging.getLogger("meshlocal.controller")


class VipPlacement:
    """Mixed into the controller (mesh.py): the state it reads is the controller's."""

    config: AgentConfig
    engine: Engine
    network: NetworkInfo | None
    address: str
    _vip_block: list[str]
    _vips_lock: asyncio.Lock
    _vips_in: str | None  # data-plane container start the addresses were put in

    async def _with_vips(self, config: AgentConfig, previous: Mapping[str, str]) -> AgentConfig:
        """`config` with an address for every endpoint, put in the data plane's namespace."""
        names = NamingModel(config.spec).endpoint_names
        vips = allocate(names, self._vip_block, previous)
        gone = [a for n, a in previous.items() if vips.get(n) != a]
        async with self._vips_lock:
            await self._put_vips(sorted(vips.values()), gone, config)
        return dataclasses.replace(config, vips=vips)

    async def _follow_dataplane(self) -> None:
        """Container mode: the addresses into the data plane's namespace, once per start of it.

        A data plane (re)started has a new namespace without them; it listens
        on them already (ip_nonlocal_bind), so names answer meanwhile.
        """
        if self.config.mode != "container" or self.config.helper_image is None:
            return
        async with self._vips_lock:
            plane = await asyncio.to_thread(self._dataplane_started)
            if plane is None or plane[1] == self._vips_in:
                return
            try:
                await self._put_vips(sorted(self.config.vips.values()), [], self.config)
            except MeshlocalError as exc:  # names still answer; endpoints wait
                log.error("%s", exc.render())

    async def _put_vips(self, add: list[str], remove: list[str], config: AgentConfig) -> None:
        if config.mode == "host" or config.helper_image is None:
            await asyncio.to_thread(_vipnet().assign, self.address, add, remove)
            return
        if not add and not remove:
            return
        plane = await asyncio.to_thread(self._dataplane_started)
        if plane is None:
            return  # not running: put in place when it connects
        spec = vip_helper_spec(config, plane[0], self.address, add, remove)
        code, out = await asyncio.to_thread(self.engine.run_to_end, spec)
        if code != 0:
            raise DataPlaneError(
                "cannot put the Service Connect addresses on the data plane's interface",
                hint="the helper said:\n" + "\n".join(f"    {line}" for line in out[-10:]),
            )
        self._vips_in = plane[1]
        if not await asyncio.to_thread(self._hold_vips, plane[0], add, config):
            self._vips_in = None  # tried again on the next follow (the controller's tick)

    def _hold_vips(self, plane_id: str, vips: list[str], config: AgentConfig) -> bool:
        """Swarm mode: a holder per endpoint address, so every node reaches it (swarm.py).

        A holder borrows the data plane's MAC: one started before the data
        plane was replaced (a new MAC) is replaced too.
        """
        net = self.network
        if net is None or net.driver != "overlay" or config.helper_image is None:
            return True
        info = self.engine.inspect(plane_id)
        mac = info.macs.get(net.name) if info is not None else None
        if not mac:
            return False
        have: set[str] = set()
        for old in self.engine.list_containers(config.project, config.env, role=L.Role.VIP_HOLDER):
            address = old.labels.get(L.PORT, "")
            if address in vips and old.config_hash == mac and old.running:
                have.add(address)
            else:
                self.engine.remove(old.id)
        image = config.helper_image

        def hold(address: str) -> bool:
            spec = holder_spec(config.project, config.env, net.name, image, address, mac)
            spec = dataclasses.replace(spec, labels={**spec.labels, L.CONFIG_HASH: mac})
            try:
                self.engine.run_container(spec)
            except MeshlocalError as exc:
                log.error("endpoint %s unreachable from other nodes: %s", address, exc.message)
                return False
            return True

        # At once: joining an overlay takes the engine a second or two per container.
        with ThreadPoolExecutor(max_workers=8) as pool:
            return all(list(pool.map(hold, sorted(set(vips) - have))))

    def _dataplane_started(self) -> tuple[str, str] | None:
        """(id, start time) of the running data-plane container: a new start is a new namespace."""
        name = self.config.self_container
        if name is None:
            return None
        with contextlib.suppress(Exception):
            raw = self.engine.api.inspect_container(name)
            state = raw.get("State") or {}
            if state.get("Running"):
                return str(raw["Id"]), str(raw["Id"]) + str(state.get("StartedAt"))
        return None

    async def _release_vips(self) -> None:
        if self.config.mode != "host":
            return  # in the data plane's namespace: they go with it
        # Best effort at shutdown: the bridge may be gone already (`down`).
        with contextlib.suppress(Exception):
            await asyncio.to_thread(
                _vipnet().assign, self.address, (), sorted(self.config.vips.values())
            )


def _vipnet() -> ModuleType:
    """Host mode's netlink client (pyroute2): not loaded by a container-mode controller."""
    from meshlocal.runtime import vipnet

    return vipnet
