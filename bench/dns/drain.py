"""In-process cost of one batched drain and of answer_udp alone (no dnsperf, no event loop).

    .venv/bin/python bench/dns/drain.py

Queues 32 queries from 127.0.0.20 on a UDP socket, times BatchedUdp.drain() (recvmmsg, the
answers, sendmmsg), 300 times; then times answer_udp on the same queries. The difference is
what the kernel and the ctypes glue cost per query.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import dns.message

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import queries
from serve import PROXY, environment, registry

from meshlocal.dns import _mmsg
from meshlocal.dns.resolver import MeshResolver
from meshlocal.naming import NamingModel


def main() -> None:
    resolver = MeshResolver(NamingModel(environment(10)), registry(10, 3, "127.0.0.20"), PROXY)
    srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    srv.bind(("127.0.0.10", 0))
    srv.setblocking(False)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.20", 0))
    client.settimeout(5)
    batched = _mmsg.BatchedUdp(srv, resolver.answer_udp, lambda *a: None)
    wires = [dns.message.make_query(*line.split()).to_wire() for line in queries(10).splitlines()]
    dest = srv.getsockname()
    spent, count = 0.0, 0
    for rnd in range(300):
        for i in range(32):
            client.sendto(wires[(rnd * 32 + i) % len(wires)], dest)
        start = time.perf_counter()
        batched.drain()
        spent += time.perf_counter() - start
        count += 32
        for _ in range(32):
            client.recv(4096)
    print(f"drain (recvmmsg + answers + sendmmsg): {spent / count * 1e6:.2f} us/query")
    start = time.perf_counter()
    for rnd in range(300):
        for i in range(32):
            resolver.answer_udp(wires[(rnd * 32 + i) % len(wires)], "127.0.0.20")
    print(f"answer_udp alone: {(time.perf_counter() - start) / count * 1e6:.2f} us/query")
    srv.close()
    client.close()


if __name__ == "__main__":
    main()
