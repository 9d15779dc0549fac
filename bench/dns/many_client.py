"""A bounded UDP DNS load generator, stdlib only (runs in a client container).

    python3 many_client.py SERVER PORT START_AT SPEC_JSON

SPEC_JSON: {"count": queries to send, "window": queries in flight at most,
"timeout": seconds before a query counts as lost, "max_seconds": hard stop,
"check_every": fully check one answer in N, "queries": [{"name", "type",
"rcode", "addrs": addresses the answer may carry (A in answer, or SRV glue),
"count": records expected in the answer section}, ...]}.

It waits until the wall-clock time START_AT (so every container starts
together), sends `count` queries cycling through `queries` with at most
`window` in flight, matches answers by ID and question, checks the rcode of
every answer and the records of one in `check_every`, counts a query lost
when no answer came within `timeout`, and prints one JSON line.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import time

TYPES = {"A": 1, "SRV": 33}


def wire(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes((len(label),)) + label.encode("ascii")
    return out + b"\x00"


def skip_name(msg: bytes, i: int) -> int:
    for _ in range(128):  # bounded: a name has at most 127 labels
        n = msg[i]
        if n == 0:
            return i + 1
        if n & 0xC0 == 0xC0:
            return i + 2
        i += 1 + n
    raise ValueError("name too long")


def records(msg: bytes, qend: int) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """(answer records, additional records) as (type, rdata)."""
    an, ns, ar = struct.unpack("!HHH", msg[6:12])
    i = qend
    out: list[list[tuple[int, bytes]]] = [[], [], []]
    for section, n in enumerate((an, ns, ar)):
        for _ in range(n):
            i = skip_name(msg, i)
            rtype, _, _, rdlen = struct.unpack("!HHIH", msg[i : i + 10])
            i += 10
            out[section].append((rtype, msg[i : i + rdlen]))
            i += rdlen
    if i != len(msg):
        raise ValueError(f"{len(msg) - i} trailing bytes")
    return out[0], out[2]


def check(msg: bytes, qend: int, q: dict[str, object], addrs: frozenset[bytes]) -> str | None:
    """None when the answer is right for this client, else what is wrong."""
    answers, additional = records(msg, qend)
    want = q["count"]
    if len(answers) != want:
        return f"{q['name']} {q['type']}: {len(answers)} records, expected {want}"
    if q["type"] == "A":
        got = {rdata for rtype, rdata in answers if rtype == 1}
        if len(got) != len(answers) or not got <= addrs:
            shown = sorted(socket.inet_ntoa(a) for a in got)
            return f"{q['name']} A: {shown} not among the expected addresses"
    elif q["type"] == "SRV":
        if any(rtype != 33 for rtype, _ in answers):
            return f"{q['name']} SRV: a non-SRV answer"
        glue = {rdata for rtype, rdata in additional if rtype == 1}
        if not glue <= addrs:
            return f"{q['name']} SRV: glue {sorted(socket.inet_ntoa(a) for a in glue)} unexpected"
    return None


def main() -> None:
    server, port, start_at, spec = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    cfg = json.loads(spec)
    count, window, timeout = int(cfg["count"]), int(cfg["window"]), float(cfg["timeout"])
    check_every = max(1, int(cfg["check_every"]))
    queries: list[dict[str, object]] = cfg["queries"]
    # a query without its ID: flags RD, one question, no EDNS (as glibc's stub asks)
    bodies = [
        b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        + wire(str(q["name"]))
        + struct.pack("!HH", TYPES[str(q["type"])], 1)
        for q in queries
    ]
    qends = [len(b) + 2 for b in bodies]
    rcodes = [int(q["rcode"]) for q in queries]  # type: ignore[call-overload]
    addrs = [frozenset(socket.inet_aton(a) for a in q["addrs"]) for q in queries]  # type: ignore[attr-defined]
    nq = len(bodies)

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.connect((server, port))
    sock.setblocking(False)
    send, recv = sock.send, sock.recv
    monotonic = time.monotonic

    wait = start_at - time.time()
    if 0 < wait < 60:
        time.sleep(wait)
    start = time.time()
    t0 = monotonic()
    hard_stop = t0 + float(cfg["max_seconds"])
    inflight: dict[int, tuple[float, int]] = {}  # id -> (sent at, query index)
    sent = answered = lost = wrong = checked = stray = blocked = 0
    latency = 0.0
    first_wrong = ""
    next_scan = t0 + timeout / 4
    while (sent < count or inflight) and monotonic() < hard_stop:
        now = monotonic()
        while sent < count and len(inflight) < window:
            qi = sent % nq
            qid = sent & 0xFFFF
            try:
                send(qid.to_bytes(2, "big") + bodies[qi])
            except BlockingIOError:
                blocked += 1
                break
            inflight[qid] = (now, qi)
            sent += 1
        try:
            msg = recv(4096)
        except BlockingIOError:
            select.select([sock], [], [], 0.02)
            msg = b""
        if msg:
            qid = msg[0] << 8 | msg[1]
            item = inflight.get(qid)
            if item is None or msg[12 : qends[item[1]]] != bodies[item[1]][10:]:
                stray += 1  # a late answer to a query already counted lost
            else:
                del inflight[qid]
                answered += 1
                latency += monotonic() - item[0]
                qi = item[1]
                if msg[3] & 0x0F != rcodes[qi] or not msg[2] & 0x80:
                    wrong += 1
                    if not first_wrong:
                        first_wrong = f"{queries[qi]['name']}: rcode {msg[3] & 0x0F}"
                elif answered % check_every == 0:
                    checked += 1
                    try:
                        problem = check(msg, qends[qi], queries[qi], addrs[qi])
                    except (ValueError, IndexError, struct.error) as exc:
                        problem = f"{queries[qi]['name']}: unparsable answer {exc!r}"
                    if problem is not None:
                        wrong += 1
                        first_wrong = first_wrong or problem
        if now >= next_scan:
            next_scan = now + timeout / 4
            old = [k for k, (t, _) in inflight.items() if now - t > timeout]
            for k in old:
                del inflight[k]
            lost += len(old)
    end = time.time()
    lost += len(inflight) + (count - sent)  # cut short by the hard stop
    print(
        json.dumps(
            {
                "sent": sent,
                "answered": answered,
                "lost": lost,
                "wrong": wrong,
                "checked": checked,
                "stray": stray,
                "blocked": blocked,
                "start": start,
                "end": end,
                "late": start - start_at,
                "latency_s": latency,
                "first_wrong": first_wrong,
            }
        )
    )


if __name__ == "__main__":
    main()
