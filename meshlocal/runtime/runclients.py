"""One-offs (`meshlocal run`) as client-only members of the registry.

A one-off serves nothing but resolves its service's Service Connect
names, so the reconciler lists it as a client: adopted at start, then
kept current from its events. Apart from replicas, which it never is.
"""

from __future__ import annotations

from meshlocal.registry import Replica
from meshlocal.runtime import labels as L
from meshlocal.runtime.engine import ContainerEvent, ContainerInfo
from meshlocal.runtime.replicastate import ReconcilerState


class RunClients(ReconcilerState):
    async def _adopt_clients(self) -> None:
        """The one-offs (`meshlocal run`) that run now: the client-only set, afresh."""
        infos = await self._thread(
            self.engine.list_containers, self.project, self.env, role=L.Role.RUN
        )
        self.registry.set_clients(
            client for info in infos if info.running and (client := self._client(info)) is not None
        )

    def _client(self, info: ContainerInfo) -> Replica | None:
        """A one-off as a client-only member: its service's DNS view, nothing served."""
        address = info.address_on(self.network.name)
        if not address or info.service is None or info.id in self._dead:
            return None
        view = L.parse_view(info.labels.get(L.SC_VIEW))
        return Replica(
            service=info.service,
            index=0,
            container_id=info.id,
            address=address,
            port=None,
            # A new task sees the endpoints of the moment it starts.
            sc_view=view if view is not None else self.sc_view,
        )

    async def _client_event(self, event: ContainerEvent) -> None:
        cid = event.container_id
        if event.action in ("die", "destroy"):
            if event.action == "die":
                self._dead.add(cid)  # a list taken before this event may say "running"
            else:
                self._dead.discard(cid)  # gone for good: nothing to remember
            if self.registry.remove_client(cid) is not None:
                self.on_change(f"one-off {event.name} of {event.service} left")
        elif event.action == "start":
            self._dead.discard(cid)
            info = await self._thread(self.engine.inspect, cid)
            client = self._client(info) if info is not None and info.running else None
            if client is not None:
                self.registry.add_client(client)
                self.on_change(f"one-off {info.name if info else cid} of {client.service} joined")
