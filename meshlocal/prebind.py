"""The data plane's DNS port, bound before anything else is imported.

Replicas of a mesh started from nothing start beside the data plane
(runtime/firststart.py). A query to a port nobody has bound yet is refused
at once (ICMP port unreachable) and fails the lookup; a bound socket queues
it until the resolver runs, a fraction of a second later, well within any
resolver's timeout. So the data plane's entry point binds first, with the
standard library only, and hands the sockets to the DNS server.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys

ENV = "MESHLOCAL_EARLY_DNS"  # the data plane's planned address
UDP_RCVBUF = 4 * 1024 * 1024  # as dns/server.py: a burst of queries waits, not dropped

_bound: dict[tuple[str, int], tuple[socket.socket, socket.socket]] = {}


def bind(host: str, port: int = 53) -> None:
    """UDP and TCP on host:port, kept for `take`; a failure is no error (bound later)."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        with contextlib.suppress(OSError):
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.bind((host, port))
        tcp.bind((host, port))
        tcp.listen(128)
    except OSError:
        udp.close()
        tcp.close()
        return
    _bound[(host, port)] = (udp, tcp)


def take(host: str, port: int) -> tuple[socket.socket, socket.socket] | None:
    """The sockets bound early for host:port, once; None when there are none."""
    return _bound.pop((host, port), None)


def release() -> None:
    """Close what nobody took (the data plane ended up on another address)."""
    for udp, tcp in _bound.values():
        udp.close()
        tcp.close()
    _bound.clear()


def main() -> None:
    """`python -m meshlocal.prebind ARGS`: bind, then run the data plane with ARGS."""
    # Run as __main__, this module's state is not the one the DNS server imports.
    from meshlocal import prebind

    address = os.environ.get(ENV)
    if address:
        prebind.bind(address)
    from meshlocal.serving import main as serve

    serve(sys.argv[1:])


if __name__ == "__main__":
    main()
