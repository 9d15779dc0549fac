"""A tiny stdlib DNS responder that logs who asked: `Q <source ip> <name> <qtype>`.

Answers every A query with ANSWER (default 10.99.99.99) and every other type
with an empty NOERROR. Runs in a container (python3 /probe.py) or in-process.
"""

from __future__ import annotations

import socket
import struct
import sys

ANSWER = "10.99.99.99"


def parse_question(packet: bytes) -> tuple[str, int, int]:
    """(name, qtype, end offset of the question) of a query's first question."""
    labels = []
    pos = 12
    while packet[pos]:
        length = packet[pos]
        labels.append(packet[pos + 1 : pos + 1 + length].decode("ascii", "replace"))
        pos += 1 + length
    qtype = struct.unpack("!H", packet[pos + 1 : pos + 3])[0]
    return ".".join(labels), qtype, pos + 5


def answer(packet: bytes, address: str = ANSWER) -> bytes:
    _name, qtype, end = parse_question(packet)
    is_a = qtype == 1
    header = packet[:2] + struct.pack("!HHHHH", 0x8180, 1, 1 if is_a else 0, 0, 0)
    body = packet[12:end]
    if is_a:
        body += struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(address)
    return header + body


def serve(host: str = "0.0.0.0", port: int = 53, address: str = ANSWER) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((host, port))
    print("ready", flush=True)
    while True:
        packet, peer = sock.recvfrom(4096)
        try:
            name, qtype, _ = parse_question(packet)
            print(f"Q {peer[0]} {name.lower()} {qtype}", flush=True)
            sock.sendto(answer(packet, address), peer)
        except (IndexError, struct.error):
            continue


if __name__ == "__main__":
    serve(address=sys.argv[1] if len(sys.argv) > 1 else ANSWER)
