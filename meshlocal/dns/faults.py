"""DNS faults: NXDOMAIN, SERVFAIL or a late answer for a Service Discovery name (pure).

The resolver looks a query's name up (`question_wire`, `wire_names`) only
while the fault table has DNS faults (one dict-truth test otherwise) and,
for a name with faults that hit, builds the answer with `act`. Faulted
answers are never cached: the next query draws again, and removing the
fault restores the cached answers at once. A delay is not slept here: the
answer comes back wrapped in `Delayed` and the server sends it later
without holding up other queries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from meshlocal.dns.wire import (
    _OPT,
    NXDOMAIN,
    SERVFAIL,
    Forward,
    _head,
    name_to_wire,
    question_end,
)
from meshlocal.faults import Active, DnsAnswer


@dataclass(frozen=True, slots=True)
class Delayed:
    """An answer to send `seconds` from now (a `dns: delay` fault)."""

    reply: bytes | Forward | None
    seconds: float


def question_wire(packet: bytes) -> bytes | None:
    """The lower-cased wire name of a plain query's one question, or None for anything
    else (responses, other opcodes, several questions, compressed or broken names)."""
    if len(packet) < 17 or packet[2] & 0xF8 or packet[4:6] != b"\x00\x01":
        return None
    end = question_end(packet)
    return packet[12 : end - 4].lower() if end > 0 else None


def wire_names(names: Iterable[str]) -> dict[bytes, str]:
    """The faulted names in wire form, to look a question up without decoding it."""
    out: dict[bytes, str] = {}
    for name in names:
        try:
            out[name_to_wire(name)] = name
        except (UnicodeEncodeError, ValueError):
            continue  # not a name a query can carry: nothing to match
    return out


def _rcode_reply(packet: bytes, rcode: int, authority: bytes = b"") -> bytes:
    """Header, the question as asked (its 0x20 case kept), `authority`, and an OPT
    record when the query had one (RFC 6891 6.1.1)."""
    end = question_end(packet)
    edns = packet[10:12] == b"\x00\x01" and packet[end : end + 3] == b"\x00\x00\x29"
    ns = 1 if authority else 0
    head = _head(packet[2] & 0x01, rcode == NXDOMAIN, False, rcode, 0, ns, int(edns))
    return packet[:2] + head + packet[12:end] + authority + (_OPT if edns else b"")


def act(
    hits: list[Active],
    packet: bytes,
    normal: Callable[[], bytes | Forward | None],
    soa: Callable[[], bytes],
) -> bytes | Forward | Delayed | None:
    """The answer when `hits` (drawn already) apply to a query for `packet`'s name.

    Each hit acts: the first nxdomain or servfail (in table order) replaces the
    answer, and every delay adds up; an error answer can be late too.
    """
    seconds = 0.0
    error: DnsAnswer | None = None
    for active in hits:
        answer = active.fault.dns
        if answer is DnsAnswer.DELAY:
            seconds += active.delay_s()
        elif error is None:
            error = answer
    if error is DnsAnswer.NXDOMAIN:
        reply: bytes | Forward | None = _rcode_reply(packet, NXDOMAIN, soa())
    elif error is DnsAnswer.SERVFAIL:
        reply = _rcode_reply(packet, SERVFAIL)
    else:
        reply = normal()
    return Delayed(reply, seconds) if seconds > 0 else reply
