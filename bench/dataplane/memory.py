"""Data-plane memory (issue 15): RSS idle, under 1,000 req/s through Service Connect, and after.

    .venv/bin/python bench/dataplane/memory.py [--replicas 20] [--rate 1000] [--duration 25]
        [--mode tcp|http] [--out bench/results/memory.md] [--section /tmp/memory-section.md]

Generates a workspace in a temporary directory (or uses --workspace): `api`, a
Service Connect server of `--replicas` busybox httpd replicas (the FROM scratch
busybox image), in Copilot's default TCP mode or with AppProtocol http
(`--mode http`), and `client`, a Service Connect client on the locally built
Python base image. `meshlocal up -d`, then, for the data plane's process and
the controller's (each container's processes summed; VmRSS and VmHWM from
/proc/<pid>/status, read on the host through the container's PID, or with
`docker exec` when the host's /proc does not show it):

1. idle: `--settle` s after `up -d` returned, sampled every 0.5 s for `--idle` s;
2. load: a load generator inside a client replica (`docker exec`, Python
   stdlib) sends `--rate` requests/s to `http://api/` for `--duration` s,
   paced on a fixed schedule (request i at t0 + i/rate), each a new connection
   (busybox httpd closes after every response; non-blocking sockets and one
   epoll selector, a 5 s timeout per request), at most `--inflight` at once;
   a request not sent on time because of that bound counts as late, not sent.
   Every response must be a 200 from an api replica; anything else is an
   error, counted by kind. RSS sampled every 0.5 s: max and final;
3. after: sampled every 0.5 s for `--after` s once the load ended.

`meshlocal down` at the end, also on failure; the run fails if anything
labelled with the project is left. Prints the report (and writes it, as
Markdown with the command and the load average, with --out; a section ready for
docs/performance.md with --section).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker

from meshlocal.manifest import find_workspace
from meshlocal.runtime import images
from meshlocal.runtime import labels as L

ROOT = Path(__file__).resolve().parents[2]
MESHLOCAL = Path(sys.executable).with_name("meshlocal")
ENV = "test"
TARGET_IDLE_MIB = 60.0
SAMPLE_EVERY = 0.5
KiB = 1024

WORKSPACE_FILES = {
    "copilot/.workspace": "application: memb\n",
    "copilot/environments/test/manifest.yml": "name: test\ntype: Environment\n",
    "copilot/api/manifest.yml": """\
# busybox httpd on port 80: a Service Connect server ({mode} mode), {replicas} replicas.
name: api
type: Backend Service

image:
  location: ${{BUSYBOX_IMAGE}}
  port: 80

command:
  - sh
  - -c
  - >-
    mkdir -p /www && echo "api $(hostname)" > /www/index.html;
    trap 'kill $pid; exit 0' TERM; httpd -f -p 80 -h /www & pid=$!; wait

count: {replicas}

network:
  connect: true
{overrides}""",
    "copilot/client/manifest.yml": """\
# A Service Connect client with Python: the load generator runs in it.
name: client
type: Backend Service

image:
  location: ${PYTHON_IMAGE}

command:
  - python3
  - -c
  - >-
    import signal, sys, time;
    signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); time.sleep(1e6)

network:
  connect: true
""",
}
HTTP_OVERRIDE = """
taskdef_overrides:
  - path: ContainerDefinitions[0].PortMappings[0].AppProtocol
    value: http
"""

# Runs inside the client replica (Python stdlib only). Bounded: `total`
# requests, each with a 5 s timeout, and the whole run by a hard deadline.
LOADGEN = r"""
import errno, json, resource, selectors, socket, sys, time

host, port, inflight = sys.argv[1], int(sys.argv[2]), int(sys.argv[5])
rate, duration = float(sys.argv[3]), float(sys.argv[4])
total = int(rate * duration)
# A host name (resolved once), or comma-separated addresses taken in turn.
addrs = [a for a in host.split(",") if a] if "," in host else [
    socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
]
name = "api" if "," in host else host
request = ("GET / HTTP/1.0\r\nHost: %s\r\nUser-Agent: meshlocal-bench\r\n\r\n" % name).encode()
TIMEOUT = 5.0
sel = selectors.DefaultSelector()
conns = {}  # fd -> [socket, started, received chunks]
ok = late = sent = peak = 0
errors, replicas, lat, per_second = {}, {}, [], {}


def error(kind):
    errors[kind] = errors.get(kind, 0) + 1


def finish(fd, kind=None):
    sock, started, chunks = conns.pop(fd)
    sel.unregister(sock)
    sock.close()
    if kind is not None:
        error(kind)
        return
    global ok
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1:2]
    if status == [b"200"] and body.startswith(b"api "):
        ok += 1
        name = body.split()[1].decode()
        replicas[name] = replicas.get(name, 0) + 1
        done = time.perf_counter()
        lat.append(done - started)
        second = int(done - t0)
        per_second[second] = per_second.get(second, 0) + 1
    else:
        error("status " + (status[0].decode() if status else "none"))


def start():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    code = sock.connect_ex((addrs[sent % len(addrs)], port))
    if code not in (0, errno.EINPROGRESS):
        sock.close()
        error(errno.errorcode.get(code, str(code)))
        return
    conns[sock.fileno()] = [sock, time.perf_counter(), []]
    sel.register(sock, selectors.EVENT_WRITE)
    global peak
    peak = max(peak, len(conns))


def ready(key, events):
    sock = key.fileobj
    fd = sock.fileno()
    if key.events == selectors.EVENT_WRITE:
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            return finish(fd, errno.errorcode.get(code, str(code)))
        try:
            sock.send(request)
        except OSError as exc:
            return finish(fd, type(exc).__name__)
        sel.modify(sock, selectors.EVENT_READ)
        return
    try:
        data = sock.recv(65536)
    except BlockingIOError:
        return
    except OSError as exc:
        return finish(fd, type(exc).__name__)
    if data:
        conns[fd][2].append(data)
    else:
        finish(fd)


t0 = time.perf_counter()
hard = t0 + duration + 20
swept = t0
sending = None
while time.perf_counter() < hard:
    now = time.perf_counter()
    if sent < total:
        due = min(total, int((now - t0) * rate) + 1)
        while sent < due:
            sent += 1
            if len(conns) >= inflight:
                late += 1
            else:
                start()
        wait = max(0.0, t0 + sent / rate - time.perf_counter())
    else:
        if sending is None:
            sending = now - t0
        if not conns:
            break
        wait = 0.05
    for key, events in sel.select(wait) if conns else ():
        ready(key, events)
    if not conns and sent < total:
        time.sleep(max(0.0, t0 + sent / rate - time.perf_counter()))
    if now - swept > 0.1:
        swept = now
        for fd in [fd for fd, c in conns.items() if now - c[1] > TIMEOUT]:
            finish(fd, "timeout")
if sending is None:
    sending = time.perf_counter() - t0
lat.sort()
pick = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None
print(json.dumps({
    "address": addrs[0] if len(addrs) == 1 else "%d addresses" % len(addrs),
    "planned": total, "scheduled": sent, "peak_inflight": peak, "ok": ok, "late": late,
    "errors": errors, "unfinished": len(conns), "sending_s": round(sending, 2),
    "rate": round(ok / sending, 1) if sending else 0.0,
    "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": pick(1.0),
    "replicas": len(replicas),
    "per_replica_min": min(replicas.values(), default=0),
    "per_replica_max": max(replicas.values(), default=0),
    "cpu_s": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 1),
    "per_second": [per_second.get(i, 0) for i in range(int(duration))],
}))
"""


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def mib(kib: int) -> float:
    return kib * KiB / 2**20


@dataclass
class Proc:
    """One container's processes and how to read their /proc/<pid>/status."""

    name: str
    container: Any
    host_pids: list[int] = field(default_factory=list)  # empty: read with docker exec
    last: list[str] = field(default_factory=list)  # the last /proc/<pid>/status texts read

    @classmethod
    def find(cls, client: docker.DockerClient, name: str, marker: str) -> Proc:
        container = client.containers.get(name)
        pids = [int(row[1]) for row in container.top(ps_args="-eo user,pid,args")["Processes"]]
        readable = []
        for pid in pids:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            readable.append((pid, cmdline))
        if len(readable) == len(pids) and any(marker.encode() in c for _, c in readable):
            return cls(name, container, pids)
        return cls(name, container, [])

    def status(self) -> tuple[float, float, int]:
        """(VmRSS MiB, VmHWM MiB, processes), summed over the container's processes."""
        texts: list[str] = []
        if self.host_pids:
            for pid in self.host_pids:
                with contextlib.suppress(OSError):
                    texts.append(Path(f"/proc/{pid}/status").read_text())
        else:
            script = "for f in /proc/[0-9]*/status; do cat $f; echo; done 2>/dev/null"
            result = self.container.exec_run(["sh", "-c", script])
            texts = bytes(result.output).decode(errors="replace").split("\n\n")
        self.last = texts
        rss = hwm = n = 0
        for text in texts:
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            if "VmRSS" not in fields:  # kernel threads, the exec's own shell gone
                continue
            if not self.host_pids and fields.get("Name", "").strip() in ("sh", "cat"):
                continue
            rss += int(fields["VmRSS"].split()[0])
            hwm += int(fields["VmHWM"].split()[0])
            n += 1
        return mib(rss), mib(hwm), n

    def breakdown(self) -> str:
        """RssAnon / RssFile / RssShmem of the last reading, summed (MiB)."""
        sums = dict.fromkeys(("RssAnon", "RssFile", "RssShmem"), 0)
        for text in self.last:
            for line in text.splitlines():
                key, _, value = line.partition(":")
                if key in sums and value.split():
                    sums[key] += int(value.split()[0])
        return ", ".join(f"{k} {mib(v):.1f}" for k, v in sums.items())

    def cpu_seconds(self) -> float:
        """utime + stime of the container's processes (host /proc only; else 0)."""
        total = 0
        for pid in self.host_pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")

    @property
    def how(self) -> str:
        if self.host_pids:
            return "host /proc, pid " + ",".join(map(str, self.host_pids))
        return "docker exec"


@dataclass
class Phase:
    name: str
    rss: dict[str, list[float]] = field(default_factory=dict)
    hwm: dict[str, float] = field(default_factory=dict)


def sample(procs: list[Proc], phase: Phase, stop: threading.Event, limit: float) -> None:
    """Every SAMPLE_EVERY s until `stop` is set or `limit` s have passed."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        tick = time.monotonic()
        for p in procs:
            rss, hwm, _ = p.status()
            phase.rss.setdefault(p.name, []).append(rss)
            phase.hwm[p.name] = hwm
        if stop.wait(max(0.0, SAMPLE_EVERY - (time.monotonic() - tick))):
            break


def cli(ws: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("MESHLOCAL_DATAPLANE", None)
    return subprocess.run(
        [str(MESHLOCAL), "-C", str(ws), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def leftovers(client: docker.DockerClient, project: str) -> list[str]:
    label = f"{L.PROJECT}={project}"
    rows = client.api.containers(all=True, filters={"label": label})
    names = [str(r["Names"][0]).lstrip("/") for r in rows]
    names += [f"network {n['Name']}" for n in client.api.networks(filters={"label": label})]
    volumes = client.api.volumes(filters={"label": label}).get("Volumes") or []
    names += [f"volume {v['Name']}" for v in volumes]
    return names


NETSTAT = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPTimeouts")


def netstat(pid: int) -> dict[str, int]:
    """TcpExt counters of the network namespace `pid` runs in (host /proc)."""
    try:
        lines = Path(f"/proc/{pid}/net/netstat").read_text().splitlines()
    except OSError:
        return {}
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], map(int, values.split()[1:]), strict=False))
            return {k: table.get(k, 0) for k in NETSTAT}
    return {}


def delta(before: dict[str, int], after: dict[str, int]) -> str:
    return ", ".join(f"{k} {after[k] - before.get(k, 0)}" for k in after) or "unknown"


def generate(box: Any, target: str, args: argparse.Namespace) -> dict[str, Any]:
    """Run the load generator inside the client replica; its JSON summary."""
    cmd = ["timeout", str(int(args.duration + 40)), "python3", "-c", LOADGEN, target, "80"]
    cmd += [str(args.rate), str(args.duration), str(args.inflight)]
    gen = box.exec_run(cmd)
    text = bytes(gen.output).decode(errors="replace").strip()
    if gen.exit_code != 0:
        raise SystemExit(f"load generator failed ({gen.exit_code}):\n{text}")
    stats: dict[str, Any] = json.loads(text.splitlines()[-1])
    return stats


def describe(say: Any, what: str, stats: dict[str, Any]) -> None:
    errors = sum(stats["errors"].values())
    say(
        f"{what} ({stats['address']}): {stats['ok']} ok of {stats['planned']} planned in "
        f"{stats['sending_s']} s = {stats['rate']} req/s, "
        f"{errors} errors{' ' + json.dumps(stats['errors']) if errors else ''}, "
        f"{stats['late']} late, {stats['unfinished']} unfinished, "
        f"at most {stats['peak_inflight']} in flight; p50 {stats['p50_ms']} ms, "
        f"p99 {stats['p99_ms']} ms, max {stats['max_ms']} ms; "
        f"{stats['replicas']} replicas answered "
        f"({stats['per_replica_min']}-{stats['per_replica_max']} each); "
        f"load generator CPU {stats['cpu_s']} s"
    )
    say(f"  answered in each second of the schedule: {' '.join(map(str, stats['per_second']))}")


def write_workspace(dest: Path, replicas: int, mode: str) -> None:
    for rel, text in WORKSPACE_FILES.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if rel == "copilot/api/manifest.yml":
            text = text.format(
                mode=mode, replicas=replicas, overrides=HTTP_OVERRIDE if mode == "http" else ""
            )
        path.write_text(text)


def run(args: argparse.Namespace, out: list[str]) -> dict[str, Any]:
    def say(line: str = "") -> None:
        print(line, flush=True)
        out.append(line)

    client = docker.from_env()
    os.environ["BUSYBOX_IMAGE"] = images.ensure_busybox_image(client)
    os.environ.setdefault("PYTHON_IMAGE", images.ensure_python_base(client))
    tmp: Path | None = None
    if args.workspace:
        ws = args.workspace.resolve()
    else:
        tmp = Path(tempfile.mkdtemp(prefix="mlbench-memory-"))
        ws = tmp / "memb"
        write_workspace(ws, args.replicas, args.mode)
    found = find_workspace(ws)
    project = L.project_id(found.app, found.root)
    result: dict[str, Any] = {"project": project, "load_before": loadavg()}
    say(f"workspace {ws} (project {project}): api x{args.replicas} ({args.mode} mode), client x1")
    try:
        t0 = time.monotonic()
        up = cli(ws, "up", "-d", "--timeout", "300", timeout=420)
        if up.returncode != 0:
            raise SystemExit(f"up -d failed ({up.returncode}):\n{up.stdout}\n{up.stderr}")
        say(f"up -d: {time.monotonic() - t0:.1f} s; load average {loadavg()}")
        procs = [
            Proc.find(client, L.dataplane_name(project, ENV), "dataplane"),
            Proc.find(client, L.controller_name(project, ENV), "agent"),
        ]
        labels = ["data plane", "controller"]
        for label, p in zip(labels, procs, strict=True):
            say(f"{label}: {p.name}, read through {p.how}")
        client_box = client.containers.get(L.container_name(project, ENV, "client", 1))

        time.sleep(args.settle)
        idle = Phase("idle")
        idle_cpu = [p.cpu_seconds() for p in procs]
        idle_t = time.monotonic()
        sample(procs, idle, threading.Event(), args.idle)
        idle_t = time.monotonic() - idle_t
        idle_cpu = [p.cpu_seconds() - c for p, c in zip(procs, idle_cpu, strict=True)]
        idle_parts = [p.breakdown() for p in procs]
        cpu0 = [p.cpu_seconds() for p in procs]

        load = Phase("load")
        stop = threading.Event()
        sampler = threading.Thread(
            target=sample, args=(procs, load, stop, args.duration + 60), daemon=True
        )
        load_before = loadavg()
        sampler.start()
        spaces = {
            "data plane": procs[0].host_pids[:1],
            "client": [int(client_box.attrs["State"]["Pid"])],
        }
        counters0 = {k: netstat(v[0]) for k, v in spaces.items() if v}
        try:
            stats = generate(client_box, "api", args)
        finally:
            stop.set()
            sampler.join(timeout=10)
        cpu = [p.cpu_seconds() - c for p, c in zip(procs, cpu0, strict=True)]
        load_parts = [p.breakdown() for p in procs]
        counters = {k: delta(v, netstat(spaces[k][0])) for k, v in counters0.items()}
        result["load"] = stats
        result["load_during"] = f"{load_before} -> {loadavg()}"

        after = Phase("after")
        sample(procs, after, threading.Event(), args.after)

        errors = sum(stats["errors"].values())
        describe(say, "load through Service Connect, http://api/", stats)
        for space, text in counters.items():
            say(f"  TCP counters in the {space}'s network namespace during the load: {text}")
        say(f"load average during the load: {result['load_during']}")
        say()
        say(
            "| process | idle (final) | under load (max) | under load (final) | after (final) "
            "| VmHWM at the end | samples idle/load/after |"
        )
        say("|---|---|---|---|---|---|---|")
        rows: dict[str, dict[str, float]] = {}
        for label, p in zip(labels, procs, strict=True):
            i, ld, a = idle.rss[p.name], load.rss[p.name], after.rss[p.name]
            row = {
                "idle": i[-1],
                "idle_median": statistics.median(i),
                "load_max": max(ld),
                "load_final": ld[-1],
                "after": a[-1],
                "hwm": after.hwm[p.name],
            }
            rows[label] = row
            say(
                f"| {label} | {row['idle']:.1f} MiB | {row['load_max']:.1f} MiB | "
                f"{row['load_final']:.1f} MiB | {row['after']:.1f} MiB | {row['hwm']:.1f} MiB | "
                f"{len(i)}/{len(ld)}/{len(a)} |"
            )
        result["rss"] = rows
        result["cpu_s"] = dict(zip(labels, cpu, strict=True))
        say()
        for label, p, parts, lparts, c, ic in zip(
            labels, procs, idle_parts, load_parts, cpu, idle_cpu, strict=True
        ):
            say(f"{label}, MiB idle: {parts}; at the end of the load: {lparts}")
            if p.host_pids:
                say(
                    f"{label}, CPU during the load: {c:.1f} s "
                    f"({100 * c / max(stats['sending_s'], 0.001):.0f} % of one core); "
                    f"idle: {100 * ic / idle_t:.1f} % of one core"
                )
        met = rows["data plane"]["idle"] <= TARGET_IDLE_MIB
        result["met"] = met
        say()
        say(
            f"data plane idle {rows['data plane']['idle']:.1f} MiB: "
            f"≤ {TARGET_IDLE_MIB:.0f} MiB {'met' if met else 'NOT met'}"
        )
        if errors or stats["late"] or stats["unfinished"]:
            say("WARNING: the load had errors, late or unfinished requests")
        if args.direct:
            # The same load straight to the replicas, the data plane out of the
            # path: what this machine manages without the proxy right now.
            replicas = client.containers.list(
                filters={
                    "label": [
                        f"{L.PROJECT}={project}",
                        f"{L.SERVICE}=api",
                        f"{L.ROLE}={L.Role.REPLICA.value}",
                    ]
                }
            )
            addresses = [
                str(net["IPAddress"])
                for c in replicas
                for net in c.attrs["NetworkSettings"]["Networks"].values()
                if net.get("IPAddress")
            ]
            say()
            before = loadavg()
            direct = generate(client_box, ",".join(sorted(addresses)), args)
            result["direct"] = direct
            describe(say, f"the same load direct to the {len(addresses)} replicas", direct)
            say(f"load average during the direct load: {before} -> {loadavg()}")
    finally:
        down = cli(ws, "down", timeout=300)
        for _ in range(3):  # a busy engine may still hold an endpoint a moment
            if down.returncode == 0:
                break
            say(f"down failed ({down.stderr.strip()[-200:]}); again in 5 s")
            time.sleep(5)
            down = cli(ws, "down", timeout=300)
        left = leftovers(client, project)
        say(f"down: exit {down.returncode}; left behind: {', '.join(left) or 'nothing'}")
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        result["load_after"] = loadavg()
        result["left"] = left
        if (down.returncode != 0 or left) and sys.exc_info()[0] is not None:
            say(f"down failed:\n{down.stdout}\n{down.stderr}")  # the run's own error follows
        elif down.returncode != 0 or left:
            say("DOWN FAILED: the measurement stands; remove what is left by hand")
    return result


def section(command: str, result: dict[str, Any], args: argparse.Namespace) -> str:
    rows = result["rss"]
    s = result["load"]
    dp = rows["data plane"]
    met = "yes" if result["met"] else "no"
    lines = [
        "## Data-plane memory",
        "",
        f"Command: `{command}`",
        "([bench/results/memory.md](../bench/results/memory.md)).",
        "",
        f"`meshlocal up -d` on a generated workspace: `api`, {args.replicas} busybox httpd",
        f"replicas behind Service Connect ({args.mode.upper()} mode), and a Python `client`. The",
        "resident memory (VmRSS, from /proc/<pid>/status of each container's processes)",
        "of the data plane and of the controller, sampled every 0.5 s: idle after `up -d`,",
        f"while a load generator inside the client replica sends {args.rate:,.0f} requests/s to",
        f"`http://api/` for {args.duration:g} s (a new connection each: busybox httpd closes",
        f"after every response), and {args.after:g} s after. Run of {time.strftime('%Y-%m-%d')},",
        f"load average {result['load_before']} before, {result['load_during']} during the load.",
        "",
        f"| process | idle | under {args.rate:,.0f} req/s (max) | after the load | peak (VmHWM) |",
        "|---|---|---|---|---|",
    ]
    for label, row in rows.items():
        lines.append(
            f"| {label} | {row['idle']:.1f} MiB | {row['load_max']:.1f} MiB | "
            f"{row['after']:.1f} MiB | {row['hwm']:.1f} MiB |"
        )
    errors = sum(s["errors"].values())
    lines += [
        "",
        f"The load: {s['ok']} of {s['planned']} requests answered 200 at {s['rate']} req/s, "
        f"{errors} errors, {s['late']} late; p99 {s['p99_ms']} ms; all {s['replicas']} replicas "
        f"answered ({s['per_replica_min']}-{s['per_replica_max']} requests each); answered per "
        f"second: min {min(s['per_second'])}, max {max(s['per_second'])}.",
        "",
        f"**Data plane idle: {dp['idle']:.1f} MiB; the ≤ {TARGET_IDLE_MIB:.0f} MiB target "
        f"is {'met' if result['met'] else 'not met'}** ({met}).",
        "",
    ]
    cpu = result["cpu_s"]["data plane"]
    notes = [
        f"- Under load the data plane grew by {dp['load_max'] - dp['idle']:.1f} MiB with at "
        f"most {s['peak_inflight']} connections in flight, and kept it after the load (freed "
        "memory stays with the allocator; VmHWM = the peak).",
        f"- The data plane used {cpu:.1f} s of CPU during the load "
        f"({1e6 * cpu / max(s['ok'] + errors, 1):.0f} µs per connection).",
    ]
    direct = result.get("direct")
    if direct:
        notes.append(
            f"- The same schedule straight to the {args.replicas} replicas, data plane out of the "
            f"path, in the same run: {direct['ok']} answered at {direct['rate']} req/s, "
            f"{sum(direct['errors'].values())} errors, {direct['late']} late, "
            f"p99 {direct['p99_ms']} ms."
        )
    return "\n".join([*lines, *notes, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--duration", type=float, default=25.0)
    parser.add_argument("--inflight", type=int, default=1000)
    parser.add_argument("--mode", choices=("tcp", "http"), default="tcp")
    parser.add_argument("--settle", type=float, default=5.0, help="s after up -d before idle")
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--after", type=float, default=10.0)
    parser.add_argument(
        "--direct",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="then the same load straight to the replicas (the machine's own limit)",
    )
    parser.add_argument("--workspace", type=Path, help="use this workspace (api, client)")
    parser.add_argument("--out", type=Path, help="write the printed report here (Markdown)")
    parser.add_argument("--section", type=Path, help="write a docs/performance.md section here")
    args = parser.parse_args()
    if not 0 < args.duration <= 300 or not 0 < args.rate <= 20000:
        parser.error("--duration must be in (0, 300] s and --rate in (0, 20000]")
    command = ".venv/bin/python bench/dataplane/memory.py " + shlex.join(sys.argv[1:])
    command = command.strip()
    out: list[str] = []
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    result = run(args, out)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            "# Data-plane memory\n\n"
            f"Command: `{command}`\n\n"
            f"Run of {started}; load average {result['load_before']} before, "
            f"{result['load_during']} during the load, {result['load_after']} after `down`.\n\n"
            "As printed:\n\n```\n" + "\n".join(out) + "\n```\n"
        )
    if args.section:
        args.section.write_text(section(command, result, args))
    if result["left"]:
        raise SystemExit(f"left behind: {', '.join(result['left'])}")


if __name__ == "__main__":
    main()
