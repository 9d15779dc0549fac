"""Putting endpoint VIPs on the data plane's interface (the I/O side of vips.py).

Host mode: the root controller puts them on the network's bridge, which
holds the gateway address the data plane listens on. (Container mode: a
one-shot NET_ADMIN helper in the data plane's namespace does it with `ip`,
runtime/dataplane.py `vip_helper_spec`; the data plane has no capability.)
The kernel then answers ARP for the VIPs, so replicas reach them directly.
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from meshlocal.errors import DataPlaneError


def _index_of(ipr: IPRoute, address: str) -> int:
    for msg in ipr.get_addr(family=2):
        if msg.get_attr("IFA_ADDRESS") == address:
            return int(msg["index"])
    raise DataPlaneError(
        f"no interface holds the data plane's address {address}",
        hint="the data plane must run on the environment's network",
    )


def assign(anchor: str, add: Iterable[str], remove: Iterable[str] = ()) -> None:
    """Add `add` (and drop `remove`) as /32 addresses on the interface holding `anchor`."""
    with IPRoute() as ipr:
        index = _index_of(ipr, anchor)
        for vip in remove:
            try:
                ipr.addr("del", index=index, address=vip, prefixlen=32)
            except NetlinkError as exc:
                if exc.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                    raise _failed(vip, exc) from exc
        for vip in add:
            try:
                ipr.addr("add", index=index, address=vip, prefixlen=32)
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:  # kept from before a restart
                    raise _failed(vip, exc) from exc


def _failed(vip: str, exc: NetlinkError) -> DataPlaneError:
    why = "permission denied (the data plane needs NET_ADMIN, or root in host mode)"
    if exc.code != errno.EPERM:
        why = str(exc)
    return DataPlaneError(
        f"cannot reserve the Service Connect address {vip}: {why}",
        hint="run the data plane in container mode, or host mode as root",
    )
