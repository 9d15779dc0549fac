"""Who may use the data plane's admin API (and its mesh page).

In container mode the admin port listens on the environment's network,
where every replica could reach it. Only the host may: through the
published 127.0.0.1 port its requests arrive from the network's gateway.
The API changes injected faults: a replica that could reach it could cut
its peers off. And since a browser visits it (the mesh page), a web page
elsewhere must neither read it through a rebound DNS name nor change it
(cross-site requests).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def admin_guard(gateway: Callable[[], str | None]) -> Any:
    """The middleware; `gateway`: the environment network's, once configured."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not admin_peer_allowed(request.remote, gateway()):
            return web.json_response(
                {"error": "the admin API answers only the host (its published 127.0.0.1 port)"},
                status=403,
            )
        refusal = browser_refusal(
            request.headers.get("Host"), request.method, request.headers.get("Origin")
        )
        if refusal is not None:
            return web.json_response({"error": refusal}, status=403)
        return await handler(request)

    return guard


def admin_peer_allowed(peer: str | None, gateway: str | None) -> bool:
    """Loopback, or the network's gateway (the host, through a published port)."""
    if not peer:
        return False
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return True
    return gateway is not None and str(address) == gateway


def browser_refusal(host: str | None, method: str, origin: str | None) -> str | None:
    """Why a request that may come from a browser is refused, or None.

    The Host must be an address or localhost (not a name an attacker's DNS
    points here), and a change (not GET/HEAD) must come from no page or from
    this origin.
    """
    if host is None:
        return None  # no browser sends a request without one
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    try:
        ipaddress.ip_address(name)
    except ValueError:
        if name != "localhost" and not name.endswith(".localhost"):
            return f"the admin API answers to its address or localhost, not to {name!r}"
    if (
        method not in ("GET", "HEAD", "OPTIONS")
        and origin is not None
        and origin.split("://", 1)[-1].lower() != host.lower()
    ):
        return f"a page from {origin} may not change the mesh"
    return None
