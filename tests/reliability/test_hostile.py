"""Hostile input against the live data plane, and malformed manifests against the CLI.

- DNS: the committed hostile corpus (tests/dns/corpus.py) plus seeded
  mutations of a valid query (bit flips, truncation, random headers, junk),
  MESHLOCAL_DNS_FUZZ_CASES over UDP (default 2000) and a tenth of that over
  TCP, sent from the host to the data plane's port 53. The server keeps
  answering valid queries between batches and is never restarted.
- Proxy: request smuggling and SSRF attempts (the patterns of
  tests/proxy/test_hostile.py) plus MESHLOCAL_PROXY_FUZZ_CASES (default 300)
  seeded combinations of methods, targets and headers, sent to the live
  Service Connect proxy. Nothing reaches a canary listening outside the mesh
  table, and no replica ever logs a smuggled URL.
- Manifests: MESHLOCAL_MANIFEST_CASES (default 100) generated broken
  workspaces through `meshlocal validate`: a clear error, never a traceback.

Figures: hostile.json in $MESHLOCAL_RELIABILITY_OUT.
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import io
import random
import re
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest
import yaml

from meshlocal.cli.app import main as cli_main

from . import figures
from .conftest import MESHLOCAL, Soak, seconds_from_env
from .malformed import Case, cases, changed_lines, materialise

DNS_CASES = int(seconds_from_env("MESHLOCAL_DNS_FUZZ_CASES", 2000))
PROXY_CASES = int(seconds_from_env("MESHLOCAL_PROXY_FUZZ_CASES", 300))
MANIFEST_CASES = int(seconds_from_env("MESHLOCAL_MANIFEST_CASES", 100))
SD_NAME = "api.test.soak.local"
SUBPROCESS_KINDS = {"hostile YAML", "wrong type or value"}

RESULTS: dict[str, Any] = {}


def _load_dns_corpus() -> Any:
    path = Path(__file__).parents[1] / "dns" / "corpus.py"
    spec = importlib.util.spec_from_file_location("meshlocal_dns_corpus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", autouse=True)
def write_results(results_fallback: Path) -> Iterator[None]:
    yield
    if RESULTS:
        figures.write("hostile", RESULTS, results_fallback)


# -- DNS --------------------------------------------------------------------------------------


def _valid_query() -> bytes:
    return bytes(dns.message.make_query(SD_NAME, dns.rdatatype.A).to_wire())


def _dns_cases(count: int) -> list[tuple[str, bytes]]:
    corpus = _load_dns_corpus()
    out: list[tuple[str, bytes]] = [(f"corpus:{name}", pkt) for name, pkt, _ in corpus.CORPUS]
    rng = random.Random(3)
    base = _valid_query()
    while len(out) < count:
        kind = rng.randrange(5)
        if kind == 0:  # bit flips
            pkt = bytearray(base)
            for _ in range(rng.randint(1, 8)):
                pkt[rng.randrange(len(pkt))] ^= 1 << rng.randrange(8)
            out.append(("bitflip", bytes(pkt)))
        elif kind == 1:  # truncated
            out.append(("truncated", base[: rng.randrange(len(base))]))
        elif kind == 2:  # random header over a valid question
            head = struct.pack("!6H", *(rng.randrange(65536) for _ in range(6)))
            out.append(("random-header", head + base[12:]))
        elif kind == 3:  # junk
            out.append(("junk", bytes(rng.randrange(256) for _ in range(rng.randint(0, 600)))))
        else:  # a corpus packet, mutated
            _, pkt, _ = rng.choice(corpus.CORPUS)
            mutated = bytearray(pkt[:2000] or b"\x00")
            mutated[rng.randrange(len(mutated))] = rng.randrange(256)
            out.append(("corpus-mutated", bytes(mutated)))
    return out[:count]


def _alive(address: str) -> bool:
    try:
        reply = dns.query.udp(dns.message.make_query(SD_NAME, "A"), address, timeout=3)
    except Exception:
        return False
    return bool(reply.answer)


def _well_formed_reply(data: bytes) -> bool:
    return len(data) >= 12 and bool(data[2] & 0x80)


@pytest.mark.docker
def test_dns_fuzz_against_the_live_data_plane(mesh: Soak) -> None:
    address = mesh.dep.state()["address"]
    plane = mesh.plane()
    started_at = plane.attrs["State"]["StartedAt"]
    todo = _dns_cases(DNS_CASES)
    udp_replies = malformed_replies = liveness_checks = 0
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.3)
    try:
        for start in range(0, len(todo), 50):
            batch = todo[start : start + 50]
            for _, pkt in batch:
                with contextlib.suppress(OSError):  # oversized datagrams: EMSGSIZE
                    sock.sendto(pkt, (address, 53))
                time.sleep(0.001)
            with contextlib.suppress(TimeoutError, OSError):
                while True:
                    data, _ = sock.recvfrom(65535)
                    udp_replies += 1
                    malformed_replies += not _well_formed_reply(data)
            assert _alive(address), f"the DNS stopped answering after case {start + len(batch)}"
            liveness_checks += 1
    finally:
        sock.close()

    tcp_cases = todo[: max(1, DNS_CASES // 10)]
    tcp_replies = tcp_closed = 0
    for _, pkt in tcp_cases:
        with socket.create_connection((address, 53), timeout=2) as conn:
            conn.settimeout(0.5)
            with contextlib.suppress(OSError):
                conn.sendall(struct.pack("!H", len(pkt) & 0xFFFF) + pkt)
                head = conn.recv(2)
                if head:
                    tcp_replies += 1
                else:
                    tcp_closed += 1
    assert _alive(address)
    plane.reload()
    RESULTS["dns_fuzz"] = {
        "command": "pytest tests/reliability/test_hostile.py -k dns",
        "target": f"{address}:53 (live data plane)",
        "udp_cases": len(todo),
        "udp_corpus_cases": sum(name.startswith("corpus:") for name, _ in todo),
        "udp_cases_by_kind": dict(collections.Counter(n.split(":")[0] for n, _ in todo)),
        "udp_replies": udp_replies,
        "udp_replies_malformed": malformed_replies,
        "tcp_cases": len(tcp_cases),
        "tcp_replies": tcp_replies,
        "tcp_closed_without_reply": tcp_closed,
        "liveness_checks_passed": liveness_checks,
        "dataplane_restarts": int(plane.attrs["RestartCount"]),
    }
    assert malformed_replies == 0
    assert plane.attrs["State"]["StartedAt"] == started_at, "the data plane restarted"


# -- the proxy ---------------------------------------------------------------------------------


class Canary:
    """A listener outside the mesh table, on the host's side of the network."""

    def __init__(self, host: str) -> None:
        self.connections = 0
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


SMUGGLED = b"/smuggled-by-reliability"


def _proxy_corpus(canary: str) -> list[tuple[str, bytes]]:
    c = canary.encode()
    s = SMUGGLED
    fixed = [
        (
            "CL+TE",
            b"POST /cgi-bin/r HTTP/1.1\r\nHost: api\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET "
            + s
            + b" HTTP/1.1\r\nHost: api\r\n\r\n",
        ),
        (
            "TE+CL",
            b"POST /cgi-bin/r HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n"
            b"Content-Length: 40\r\n\r\n0\r\n\r\nGET " + s + b" HTTP/1.1\r\nHost: api\r\n\r\n",
        ),
        (
            "two CL",
            b"POST /cgi-bin/r HTTP/1.1\r\nHost: api\r\n"
            b"Content-Length: 0\r\nContent-Length: 44\r\n\r\n"
            b"GET " + s + b" HTTP/1.1\r\nHost: api\r\n\r\n",
        ),
        (
            "TE obfuscated",
            b"POST /cgi-bin/r HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: xchunked\r\n\r\n"
            b"0\r\n\r\nGET " + s + b" HTTP/1.1\r\nHost: api\r\n\r\n",
        ),
        (
            "TE with space",
            b"POST /cgi-bin/r HTTP/1.1\r\nHost: api\r\nTransfer-Encoding : chunked\r\n\r\n"
            b"0\r\n\r\nGET " + s + b" HTTP/1.1\r\nHost: api\r\n\r\n",
        ),
        (
            "bad chunk size",
            b"POST /cgi-bin/r HTTP/1.1\r\nHost: api\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nGET " + s + b" HTTP/1.1\r\nHost: api\r\n\r\n",
        ),
        ("duplicate Host", b"GET / HTTP/1.1\r\nHost: api\r\nHost: " + c + b"\r\n\r\n"),
        ("Host outside mesh", b"GET / HTTP/1.1\r\nHost: " + c + b"\r\n\r\n"),
        ("absolute-form outside", b"GET http://" + c + b"/ HTTP/1.1\r\nHost: api\r\n\r\n"),
        ("metadata SSRF", b"GET http://169.254.169.254/latest/ HTTP/1.1\r\nHost: api\r\n\r\n"),
        ("CONNECT", b"CONNECT " + c + b" HTTP/1.1\r\nHost: " + c + b"\r\n\r\n"),
        (
            "oversized header",
            b"GET / HTTP/1.1\r\nHost: api\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
        ),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: api\r\n folded: x\r\n\r\n"),
        ("bare LF", b"GET / HTTP/1.1\r\nHost: api\nX: y\r\n\r\n"),
        ("NUL in target", b"GET /\x00 HTTP/1.1\r\nHost: api\r\n\r\n"),
        ("no Host", b"GET / HTTP/1.1\r\n\r\n"),
        ("HTTP/2.0 head", b"GET / HTTP/2.0\r\nHost: api\r\n\r\n"),
        ("negative CL", b"POST / HTTP/1.1\r\nHost: api\r\nContent-Length: -1\r\n\r\n"),
        (
            "X-Forwarded-Host spoof",
            b"GET / HTTP/1.1\r\nHost: " + c + b"\r\nX-Forwarded-Host: api\r\n\r\n",
        ),
    ]
    rng = random.Random(4)
    methods = [b"GET", b"POST", b"CONNECT", b"OPTIONS", b"TRACE", b"G\x00T", b"get"]
    targets = [b"/", b"*", b"http://" + c + b"/", c, b"//" + c + b"/", b"/plain", b"%2e%2e/"]
    headers = [
        b"Host: " + c,
        b"Host: api",
        b"Host: api.evil",
        b"Host: api:80@" + c,
        b"Content-Length: 3",
        b"Content-Length: 1e3",
        b"Transfer-Encoding: chunked",
        b"Transfer-Encoding: chunked, identity",
        b"Connection: upgrade",
        b"Upgrade: websocket",
        b"X-Forwarded-Host: " + c,
        b"Connection: close, Host",
    ]
    generated = []
    for i in range(PROXY_CASES):
        head = b"\r\n".join(rng.sample(headers, rng.randint(0, 4)))
        req = rng.choice(methods) + b" " + rng.choice(targets) + b" HTTP/1.1\r\n" + head
        req += b"\r\n\r\n" + rng.choice(
            [b"", b"abc", b"0\r\n\r\nGET " + s + b" HTTP/1.1\r\nHost: api\r\n\r\n"]
        )
        generated.append((f"generated-{i}", req))
    return fixed + generated


def _exchange(address: str, data: bytes) -> str:
    try:
        with socket.create_connection((address, 80), timeout=3) as conn:
            conn.settimeout(1.5)
            conn.sendall(data)
            got = b""
            with contextlib.suppress(TimeoutError, OSError):
                while len(got) < 65536:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    got += chunk
    except OSError as exc:
        return type(exc).__name__
    if not got:
        return "closed"
    line = got.split(b"\r\n", 1)[0].split()
    return line[1].decode(errors="replace") if len(line) > 1 else "garbage"


@pytest.mark.docker
def test_proxy_smuggling_and_ssrf_corpus_against_the_live_proxy(mesh: Soak) -> None:
    state = mesh.dep.state()
    address = state["services"]["api"]["connect"]["vip"]  # api's endpoint (HTTP mode)
    network = mesh.client.networks.get(f"{mesh.project}-test")
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    canary = Canary(gateway)
    try:
        target = f"{gateway}:{canary.port}"
        corpus = _proxy_corpus(target)
        with ThreadPoolExecutor(max_workers=16) as pool:
            outcomes = list(pool.map(lambda case: _exchange(address, case[1]), corpus))
        time.sleep(0.5)
    finally:
        canary.close()
    # A normal request still works after all of it.
    assert (
        _exchange(address, b"GET /cgi-bin/r HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n")
        == "200"
    )
    smuggled = sum(
        SMUGGLED in line
        for c in mesh.replicas()
        for line in c.logs(stdout=True, stderr=True).splitlines()
    )
    fixed = dict(
        zip([n for n, _ in corpus if not n.startswith("generated")], outcomes, strict=False)
    )
    RESULTS["proxy_corpus"] = {
        "command": "pytest tests/reliability/test_hostile.py -k proxy",
        "target": f"{address}:80 (live Service Connect proxy)",
        "fixed_cases": len(fixed),
        "generated_cases": PROXY_CASES,
        "fixed_case_outcomes": fixed,
        "generated_outcomes": dict(collections.Counter(outcomes[len(fixed) :])),
        "connections_reaching_the_canary_outside_the_mesh": canary.connections,
        "smuggled_requests_seen_by_replicas": smuggled,
    }
    assert canary.connections == 0
    assert smuggled == 0
    for name in ("CL+TE", "TE+CL", "two CL", "duplicate Host", "absolute-form outside", "CONNECT"):
        assert fixed[name] in ("400", "403", "404", "405", "501", "closed"), (name, fixed[name])


# -- manifests ---------------------------------------------------------------------------------


def _validate_in_process(root: Path) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli_main(["-C", str(root), "validate"])
    return code, err.getvalue()


def _names_the_broken_file(case: Case, root: Path, err: str) -> bool:
    """The first error is `<file the case broke>:<line>[:<col>]: error: ...`.

    The file is the one the case changed (for a bad env_file, the env file
    itself may be the one named, at its own line), and the line is a line of it.
    """
    first = err.splitlines()[0] if err else ""
    files = {root / rel: data for rel, data in case.files.items()}
    if case.kind == "bad env_file":
        env_file = yaml.safe_load(next(iter(case.files.values())))["env_file"]
        target = (root / env_file).resolve()
        if target.is_file():  # not /dev/zero
            files[target] = target.read_bytes()
    for path, data in files.items():
        m = re.match(re.escape(str(path)) + r":(\d+)(?::\d+)?: error: \S", first)
        if m and 1 <= int(m.group(1)) <= data.count(b"\n") + 1:
            return True
    return False


def test_malformed_manifests_get_a_clear_error_and_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    generated = cases(MANIFEST_CASES)
    by_kind: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    unclear: list[str] = []
    accepted: list[tuple[str, str]] = []
    for i, case in enumerate(generated):
        root = materialise(case, tmp_path / f"case-{i}")
        # Any exception escaping main() is a traceback for the user: let it fail the test.
        code, err = _validate_in_process(root)
        assert "Traceback" not in err, (case.kind, err)
        if code == 0:
            by_kind[case.kind]["accepted"] += 1
            if sum(k == case.kind for k, _ in accepted) < 2:
                # What the loader let through: read these for validation gaps.
                accepted.append((case.kind, changed_lines(case)))
            continue
        located = _names_the_broken_file(case, root, err)
        by_kind[case.kind]["rejected, file named" if located else "rejected, no file named"] += 1
        if not located:
            unclear.append(f"{case.kind}: {err[:200]}")
    # The real executable on a few kinds of breakage: exit code and stderr as a user sees them.
    subprocess_checked = 0
    seen: set[str] = set()
    for i, case in enumerate(generated):
        if case.kind in seen or case.kind not in SUBPROCESS_KINDS:
            continue
        seen.add(case.kind)
        proc = subprocess.run(
            [str(MESHLOCAL), "-C", str(tmp_path / f"case-{i}"), "validate"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert "Traceback" not in proc.stderr, proc.stderr
        assert proc.returncode in (0, 1, 2), proc
        subprocess_checked += 1
    RESULTS["malformed_manifests"] = {
        "command": "pytest tests/reliability/test_hostile.py -k manifests",
        "cases": len(generated),
        "outcomes_by_kind": {k: dict(v) for k, v in sorted(by_kind.items())},
        "tracebacks": 0,
        "rejected_without_a_clear_error": len(unclear),
        "also_checked_through_the_executable": subprocess_checked,
        "accepted_examples": [f"{kind}: {text}" for kind, text in accepted],
    }
    assert unclear == [], unclear[:5]
