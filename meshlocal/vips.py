"""Service Connect endpoint addresses (VIPs): the block, and who gets which.

Pure. ECS gives every Service Connect endpoint its own address inside the
client task (127.255.0.0/16), so Envoy knows the target from the address a
client dialled. meshlocal does the same on the environment's network: the
network is created with an `ip_range` that keeps Docker's allocator in the
lower half of the subnet, and endpoints get addresses from the top /24,
which no container can ever be given.

An endpoint keeps its address for as long as the mesh lives (across `up`,
data-plane restarts and adoption): allocation takes the previous map and
only gives free addresses to new names.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

from meshlocal.errors import DataPlaneError

# The largest subnet prefix that still leaves a half for containers and a /24 for VIPs.
MAX_PREFIX = 23


def container_range(subnet: str) -> str:
    """The `ip_range` containers are allocated from: the subnet's lower half."""
    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError:
        net = None
    if net is None or net.version != 4 or net.prefixlen > MAX_PREFIX:
        raise _too_small(subnet)
    return str(next(net.subnets(prefixlen_diff=1)))


def reserved_address(subnet: str) -> str:
    """Swarm mode's data-plane address: the first of the subnet's upper half, which
    neither containers (the lower half) nor endpoints (the last /24) are given, so
    no task scheduled meanwhile can take it."""
    net = ipaddress.IPv4Network(subnet, strict=False)
    upper = list(net.subnets(prefixlen_diff=1))[1]
    return str(upper.network_address + 1)


def _too_small(subnet: str) -> DataPlaneError:
    return DataPlaneError(
        f"the network subnet {subnet} is too small to reserve Service Connect addresses",
        hint=f"meshlocal needs an IPv4 subnet of /{MAX_PREFIX} or larger; check Docker's "
        "default-address-pools in /etc/docker/daemon.json",
    )


def vip_block(subnet: str, ip_range: str | None, gateway: str | None = None) -> list[str]:
    """Addresses endpoints may use: the subnet's last /24, outside `ip_range`.

    Raises DataPlaneError when the network leaves no such block (a network
    created without an `ip_range`, by an older meshlocal or by hand).
    """
    try:
        net = ipaddress.IPv4Network(subnet, strict=False)
    except ValueError:
        raise DataPlaneError(
            f"the network has no IPv4 subnet ({subnet or 'none'}) for Service Connect addresses",
            hint="meshlocal needs an IPv4 bridge network: run `meshlocal down`, then `up`",
        ) from None
    if ip_range is None:
        raise DataPlaneError(
            f"the network's subnet {subnet} has no range reserved for Service Connect addresses",
            hint="it was created by an older meshlocal: run `meshlocal down`, then `meshlocal up`",
        )
    try:
        pool = ipaddress.IPv4Network(ip_range, strict=False)
    except ValueError:
        raise DataPlaneError(
            f"the network's container range {ip_range} is not IPv4",
            hint="run `meshlocal down`, then `meshlocal up`, to recreate the network",
        ) from None
    if net.prefixlen > MAX_PREFIX:
        raise _too_small(subnet)
    top = ipaddress.IPv4Network((int(net.broadcast_address) & ~0xFF, 24))
    taken = {gateway} if gateway else set()
    taken.add(emulator_address(subnet))  # the local SNS/SQS's, for as long as the mesh lives
    taken.add(reserved_address(subnet))  # a swarm data plane's (in a /23, the last /24's first)
    block = [
        str(a)
        for a in top.hosts()
        if a not in pool and str(a) not in taken and a != net.broadcast_address
    ]
    if not block:
        raise DataPlaneError(
            f"no address outside the container range {ip_range} is left in {subnet}",
            hint="run `meshlocal down`, then `meshlocal up`, to recreate the network",
        )
    return block


def emulator_address(subnet: str) -> str:
    """The local SNS/SQS emulator's fixed address: the subnet's last host.

    Outside Docker's container range and never given to an endpoint, so it
    is the same for every `up` and after the emulator is recreated: the
    replicas' AWS_ENDPOINT_URL_SQS/SNS keep pointing at it.
    """
    net = ipaddress.IPv4Network(subnet, strict=False)
    return str(net.broadcast_address - 1)


def allocate(
    names: Iterable[str], block: list[str], previous: Mapping[str, str] | None = None
) -> dict[str, str]:
    """name -> address: previous addresses kept, new names get the lowest free ones."""
    wanted = sorted(set(names))
    allowed = set(block)
    out: dict[str, str] = {}
    used: set[str] = set()
    for name, address in sorted((previous or {}).items()):
        # A kept address is valid once: a damaged map must not give two endpoints one.
        if name in wanted and address in allowed and address not in used:
            out[name] = address
            used.add(address)
    free = (a for a in block if a not in used)
    for name in wanted:
        if name in out:
            continue
        found = next(free, None)
        if found is None:
            raise DataPlaneError(
                f"no Service Connect address left for endpoint {name} "
                f"({len(block)} endpoints at most)",
                hint="fewer services with network.connect, or a larger network subnet",
            )
        out[name] = found
    return out
