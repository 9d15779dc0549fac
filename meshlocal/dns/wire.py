"""DNS wire format: names, headers, the few records the mesh writes (pure).

The resolver's fast path works on raw bytes; these are its building blocks,
shared with the fault answers (faults.py) and the asyncio edge (server.py).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

UDP_MIN = 512  # RFC 1035 limit without EDNS; also the floor for EDNS sizes
EDNS_SIZE = 1232  # what we advertise (DNS flag day 2020)
TCP_MAX = 65535

# rcodes
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

T_A, T_SOA, T_SRV, T_OPT, T_ANY = 1, 6, 33, 41, 255
C_IN = 1

_PTR_QNAME = b"\xc0\x0c"  # compression pointer to the question name
_OPT = b"\x00\x00\x29" + EDNS_SIZE.to_bytes(2, "big") + b"\x00\x00\x00\x00\x00\x00"
_OPT_TYPE = b"\x00\x29"


@dataclass(frozen=True, slots=True)
class Forward:
    """The name is outside the mesh: send `query` upstream, relay the answer."""

    query: bytes
    limit: int  # the client's UDP size limit (TCP_MAX over TCP)


# -- wire helpers ----------------------------------------------------------


_HOST_CHARS = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyz-_")


def name_to_wire(name: str) -> bytes:
    """A dotted ASCII name to uncompressed wire form (with the root label)."""
    out = bytearray()
    for label in name.rstrip(".").split("."):
        if label:
            raw = label.encode("ascii")
            out.append(len(raw))
            out += raw
    out.append(0)
    return bytes(out)


def wire_to_text(wire: bytes) -> str | None:
    """Lower-cased uncompressed wire name to dotted text; other bytes as \\DDD.

    None when the labels do not form a valid name (length byte > 63,
    overrun, or more than 255 bytes).
    """
    if len(wire) > 255:
        return None
    labels: list[str] = []
    i = 0
    n = len(wire)
    while i < n:
        length = wire[i]
        if length == 0:
            return ".".join(labels) if i == n - 1 else None
        if length > 63 or i + 1 + length > n:
            return None
        raw = wire[i + 1 : i + 1 + length]
        # Anything but a hostname character becomes \DDD, so a "." inside a
        # label can never pass for a label boundary in a name comparison.
        labels.append("".join(chr(b) if b in _HOST_CHARS else f"\\{b:03d}" for b in raw))
        i += 1 + length
    return None


def _rr(owner: bytes, rtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, C_IN, ttl, len(rdata)) + rdata


def _ipv4(address: str) -> bytes | None:
    try:
        return socket.inet_pton(socket.AF_INET, address)
    except (OSError, ValueError):
        return None


def _head(rd: int, aa: bool, tc: bool, rcode: int, an: int, ns: int, ar: int) -> bytes:
    """Flags and counts: the 10 header bytes after the ID, for a response."""
    b2 = 0x80 | (0x04 if aa else 0) | (0x02 if tc else 0) | rd
    b3 = 0x80 | (rcode & 0x0F)  # RA: we recurse by forwarding
    return bytes((b2, b3)) + struct.pack("!HHHH", 1, an, ns, ar)


def question_end(packet: bytes) -> int:
    """Offset just after the first question (uncompressed name), or -1."""
    i = 12
    n = len(packet)
    while i < n:
        length = packet[i]
        if length == 0:
            end = i + 5
            return end if end <= n and i - 12 < 255 else -1
        if length > 63:
            return -1
        i += 1 + length
    return -1


def error_reply(packet: bytes, rcode: int) -> bytes | None:
    """A bare answer with `rcode`, echoing the question when it can be read.

    None when not even the header is readable, or the packet is itself a
    response (answering those invites reflection loops).
    """
    if len(packet) < 12 or packet[2] & 0x80:
        return None
    rd = packet[2] & 0x01
    opcode_bits = packet[2] & 0x78
    end = question_end(packet) if packet[4:6] == b"\x00\x01" else -1
    qd = 1 if end > 0 else 0
    b2 = 0x80 | opcode_bits | rd
    head = bytes((b2, 0x80 | rcode)) + struct.pack("!HHHH", qd, 0, 0, 0)
    return packet[:2] + head + (packet[12:end] if end > 0 else b"")


def truncated(reply: bytes, question_end: int, edns: bool) -> bytes:
    """`reply` cut to header + question with TC set (the client retries over TCP)."""
    head = bytes((reply[2] | 0x02, reply[3])) + struct.pack("!HHHH", 1, 0, 0, 1 if edns else 0)
    return reply[:2] + head + reply[12:question_end] + (_OPT if edns else b"")
