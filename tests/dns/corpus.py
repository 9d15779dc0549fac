"""Hostile and odd DNS packets, kept as regression tests.

Each entry: (id, packet, expected) where expected is "drop", "FORWARD" (a
name outside the mesh: REFUSED by a server with no upstream) or the rcode
name the server must answer with. Add a packet here whenever fuzzing finds
one that misbehaved.
"""

from __future__ import annotations

import struct


def header(
    qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, flags: int = 0x0100, ident: int = 0x1234
) -> bytes:
    return struct.pack("!HHHHHH", ident, flags, qd, an, ns, ar)


Q_API = b"\x03api\x04test\x04demo\x05local\x00\x00\x01\x00\x01"


def pointer_chain(depth: int) -> bytes:
    """An RR owner that follows `depth` backward pointers: dnslib recurses once per pointer
    and raises RecursionError (not DNSError) past the interpreter's limit."""
    q = b"\x01a\x00\x00\x01\x00\x01"
    rr1_head = b"\x00" + struct.pack("!HHIH", 0xFF00, 1, 0, 4 * depth)
    base = 12 + len(q) + len(rr1_head)
    segs = b"\x01a\x00\x00"
    for i in range(1, depth):
        segs += b"\x01a" + struct.pack("!H", 0xC000 | (base + 4 * (i - 1)))
    rr2 = struct.pack("!H", 0xC000 | (base + 4 * (depth - 1)))
    rr2 += struct.pack("!HHIH", 1, 1, 0, 4) + b"\x01\x02\x03\x04"
    return header(an=2) + q + rr1_head + segs + rr2


def opt(size: int = 1232, version: int = 0, rdata: bytes = b"") -> bytes:
    return b"\x00\x00\x29" + struct.pack("!HBBHH", size, 0, version, 0, len(rdata)) + rdata


CORPUS: list[tuple[str, bytes, str]] = [
    ("empty", b"", "drop"),
    ("one-byte", b"\x00", "drop"),
    ("short-header", b"\x12\x34\x01\x00\x00", "drop"),
    ("header-only-no-question", header(qd=0), "FORMERR"),
    ("qdcount-1-but-nothing", header(), "FORMERR"),
    ("qdcount-2", header(qd=2) + Q_API + Q_API, "FORMERR"),
    ("qdcount-65535", header(qd=65535) + Q_API, "FORMERR"),
    ("response-bit-set", header(flags=0x8180) + Q_API, "drop"),
    ("opcode-update", header(flags=0x2800) + Q_API, "NOTIMP"),
    ("opcode-status", header(flags=0x1000) + Q_API, "NOTIMP"),
    ("pointer-self-loop", header() + b"\xc0\x0c\x00\x01\x00\x01", "FORMERR"),
    ("pointer-two-loop", header() + b"\x01a\xc0\x0e\x00\x01\x00\x01", "FORMERR"),
    ("pointer-forward-oob", header() + b"\xc0\xff\x00\x01\x00\x01", "FORMERR"),
    ("pointer-chain-recursion", pointer_chain(1200), "FORMERR"),
    ("pointer-chain-deep", pointer_chain(3000), "FORMERR"),
    ("label-64", header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", "FORMERR"),
    ("label-type-01", header() + b"\x41abc\x00\x00\x01\x00\x01", "FORMERR"),
    ("name-over-255", header() + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01", "FORMERR"),
    ("label-overruns-packet", header() + b"\x20abc", "FORMERR"),
    ("no-root-label", header() + b"\x03api", "FORMERR"),
    ("question-missing-type", header() + b"\x03api\x00", "FORMERR"),
    ("trailing-garbage", header() + Q_API + b"\xde\xad\xbe\xef", "NOERROR"),
    ("zero-inside-label", header() + b"\x03a\x00b\x00\x00\x01\x00\x01", "FORWARD"),
    ("edns-version-1", header(ar=1) + Q_API + opt(version=1), "BADVERS"),
    ("edns-two-opts", header(ar=2) + Q_API + opt() + opt(), "FORMERR"),
    ("edns-size-0", header(ar=1) + Q_API + opt(size=0), "NOERROR"),
    (
        "edns-rdlen-overrun",
        header(ar=1) + Q_API + b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\xff\xff",
        "FORMERR",
    ),
    ("ancount-lies", header(an=5) + Q_API, "FORMERR"),
    ("class-chaos", header() + b"\x07version\x04bind\x00\x00\x10\x00\x03", "REFUSED"),
    ("class-any-mesh", header() + Q_API[:-2] + b"\x00\xff", "REFUSED"),
    ("qtype-0", header() + Q_API[:-4] + b"\x00\x00\x00\x01", "NOERROR"),
    ("qtype-any", header() + Q_API[:-4] + b"\x00\xff\x00\x01", "NOERROR"),
    ("root-name", header() + b"\x00\x00\x02\x00\x01", "FORWARD"),
    (
        "binary-label-in-zone",
        header() + b"\x02\x00\xff\x04test\x04demo\x05local\x00\x00\x01\x00\x01",
        "NXDOMAIN",
    ),
    (
        "dot-inside-label",
        header() + b"\x08api.test\x04demo\x05local\x00\x00\x01\x00\x01",
        "FORWARD",
    ),
    ("max-size-junk", b"\x12\x34\x01\x00" + b"\xff" * 65000, "FORMERR"),
]
