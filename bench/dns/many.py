"""meshlocal's DNS vs dnsmasq, queried from many client containers, rounds alternating.

    .venv/bin/python bench/dns/many.py [--clients 16] [--sc 8] [--rounds 5] [--queries 20000]

The bench creates one Docker network and `--clients` containers on it (the
locally built `meshlocal/python-base:bookworm` image), all labelled
`meshlocal.bench=dns-many`. Both servers run on the host, bound to the
network's gateway address: meshlocal's DNS (this file's `serve` mode, the
same resolver and server `meshlocal up` runs) on one port, dnsmasq on
another, with the same records. In meshlocal's model the first `--sc`
client addresses are replicas of a Service Connect client service (`web`);
half the others are replicas of a service without Service Connect
(`plain`) and the rest are not in the mesh at all. So meshlocal's answers
differ by client: an SC client gets the endpoint address for `svcN`, the
others NXDOMAIN; everyone gets the replicas for `svcN.bench.demo.local`.
dnsmasq answers everyone alike (the SC address for `svcN`).

Each phase, every client container runs bench/dns/many_client.py (stdlib
only): `--queries` UDP queries at most `--window` in flight, answers matched
and checked (rcode always, records one in `--check-every`), a query lost after
`--timeout` s. Both servers get the same queries from the same clients; the
order alternates per round. q/s = answers / (last client end - first client
start). Every process and container is bounded in time; everything created
is removed at the end, also on failure or Ctrl-C. Traffic stays on the
bench's network.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))

from run import PROXY, ZONE, dnsmasq_cmd, dnsmasq_conf  # noqa: E402
from serve import serve_with  # noqa: E402

LABEL = "meshlocal.bench=dns-many"
IMAGE = "meshlocal/python-base:bookworm"
CLIENT_PATH = "/bench/many_client.py"
MESHLOCAL_PORT = 5300
DNSMASQ_PORT = 5301


# -- meshlocal's side ----------------------------------------------------------


def serve_main(argv: list[str]) -> None:
    """`many.py serve`: meshlocal's DNS with the bench's services and clients."""
    from meshlocal.dns.resolver import MeshResolver
    from meshlocal.dns.server import run
    from meshlocal.manifest.model import (
        Connect,
        Environment,
        EnvironmentSpec,
        Service,
        ServiceType,
        Workspace,
    )
    from meshlocal.naming import NamingModel
    from meshlocal.registry import Replica, ReplicaRegistry

    p = argparse.ArgumentParser(prog="many.py serve")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=MESHLOCAL_PORT)
    p.add_argument("--services", type=int, default=10)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--sc-clients", default="", help="comma-separated: replicas of `web`")
    p.add_argument("--plain-clients", default="", help="comma-separated: replicas of `plain`")
    p.add_argument("--no-uvloop", action="store_true")
    p.add_argument("--no-mmsg", action="store_true")
    p.add_argument("--max-seconds", type=float, default=900.0)
    args = p.parse_args(argv)

    root = Path("/nonexistent/bench")

    def service(name: str, port: int, connect: bool) -> Service:
        return Service(
            name=name,
            type=ServiceType.BACKEND_SERVICE,
            manifest_path=root / f"{name}.yml",
            port=port,
            target_port=port,
            connect=Connect(enabled=connect),
        )

    svcs = [service(f"svc{i}", 8000 + i, True) for i in range(args.services)]
    svcs += [service("big", 7000, True), service("web", 9000, True)]
    svcs.append(service("plain", 9100, False))
    env = Environment("bench", None)
    ws = Workspace(root, "demo", {"bench": env}, {s.name: s.manifest_path for s in svcs})
    naming = NamingModel(EnvironmentSpec(ws, env, tuple(svcs)))

    reg = ReplicaRegistry()
    for i in range(args.services):
        for r in range(1, args.replicas + 1):
            reg.upsert(Replica(f"svc{i}", r, f"svc{i}-{r}", f"10.0.{i}.{r}", 8000 + i))
    for r in range(1, 13):
        reg.upsert(Replica("big", r, f"big-{r}", f"10.1.0.{r}", 7000))
    for name, ips, port in (
        ("web", args.sc_clients, 9000),
        ("plain", args.plain_clients, 9100),
    ):
        for r, ip in enumerate((x for x in ips.split(",") if x), start=1):
            reg.upsert(Replica(name, r, f"{name}-{r}", ip, port))

    async def serve() -> None:
        await serve_with(MeshResolver(naming, reg, PROXY), args)

    run(serve(), use_uvloop=False if args.no_uvloop else None)


# -- the queries and what each client must get back ------------------------------


def query_specs(services: int, replicas: int, server: str, sc_client: bool) -> list[dict[str, Any]]:
    """Every query a client cycles through, with the answer it must get."""
    out: list[dict[str, Any]] = []

    def q(name: str, qtype: str, rcode: int, addrs: list[str], count: int) -> None:
        out.append({"name": name, "type": qtype, "rcode": rcode, "addrs": addrs, "count": count})

    for i in range(services):
        pool = [f"10.0.{i}.{r}" for r in range(1, replicas + 1)]
        q(f"svc{i}.{ZONE}", "A", 0, pool, replicas)
        if server == "dnsmasq" or sc_client:
            q(f"svc{i}", "A", 0, [PROXY], 1)
        else:
            q(f"svc{i}", "A", 3, [], 0)  # not a Service Connect client: NXDOMAIN
        q(f"svc{i}.{ZONE}", "SRV", 0, pool, replicas)
        q(f"svc{i}-1.svc{i}.{ZONE}", "A", 0, [f"10.0.{i}.1"], 1)
    big = [f"10.1.0.{r}" for r in range(1, 13)]
    q(f"big.{ZONE}", "A", 0, big, 12 if server == "dnsmasq" else 8)  # Cloud Map: 8 of 12
    q(f"nosuch.{ZONE}", "A", 3, [], 0)
    return out


def many_dnsmasq_conf(services: int, replicas: int, sc: list[str], plain: list[str]) -> str:
    extra = [f"local=/{ZONE}/"]  # unknown names in the zone: NXDOMAIN, never forwarded
    extra += [f"host-record=web.{ZONE},{ip}" for ip in sc]
    extra += [f"host-record=plain.{ZONE},{ip}" for ip in plain]
    extra.append(f"host-record=web,{PROXY}")
    return dnsmasq_conf(services, replicas) + "\n".join(extra) + "\n"


# -- Docker ----------------------------------------------------------------------


def docker(*args: str, timeout: float = 60) -> str:
    out = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])}: {out.stderr.strip()}")
    return out.stdout.strip()


def cleanup() -> None:
    """Remove every container and network the bench labelled (also a previous run's)."""
    with contextlib.suppress(Exception):
        ids = docker("ps", "-aq", "--filter", f"label={LABEL}").split()
        if ids:
            docker("rm", "-f", *ids, timeout=120)
    with contextlib.suppress(Exception):
        nets = docker("network", "ls", "-q", "--filter", f"label={LABEL}").split()
        if nets:
            docker("network", "rm", *nets)


@dataclass
class Phase:
    server: str
    round: int
    answered: int
    lost: int
    wrong: int
    checked: int
    seconds: float
    cpu_s: float  # user + system
    user_s: float  # user only: the server's own code (Python for meshlocal)
    wait_s: float  # the server's time runnable but waiting for a CPU (schedstat)
    slices: int  # times the server was scheduled in (about its wakeups)
    latency_ms: float  # mean time from a query to its answer, over every client
    late: float
    first_wrong: str

    @property
    def qps(self) -> float:
        return self.answered / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_us_per_query(self) -> float:
        return self.cpu_s / self.answered * 1e6 if self.answered else float("nan")

    @property
    def user_us_per_query(self) -> float:
        return self.user_s / self.answered * 1e6 if self.answered else float("nan")

    @property
    def wait_us_per_query(self) -> float:
        return self.wait_s / self.answered * 1e6 if self.answered else float("nan")

    @property
    def per_wakeup(self) -> float:
        return self.answered / self.slices if self.slices else float("nan")


def phase(
    server: str,
    rnd: int,
    host: str,
    port: int,
    pid: int,
    clients: list[tuple[str, str, bool]],  # (container id, address, SC client)
    args: argparse.Namespace,
    count: int,
) -> Phase:
    lead = 1.0 + 0.15 * len(clients)  # docker exec must start them all before this
    start_at = time.time() + lead
    max_seconds = args.max_phase_seconds
    procs = []
    before = cpu_seconds(pid)
    sched_before = schedstat(pid)
    for cid, _, sc in clients:
        spec = {
            "count": count,
            "window": args.window,
            "timeout": args.timeout,
            "max_seconds": max_seconds,
            "check_every": args.check_every,
            "queries": query_specs(args.services, args.replicas, server, sc),
        }
        cmd = ["docker", "exec", cid, "python3", CLIENT_PATH, host, str(port), f"{start_at:.3f}"]
        procs.append(
            subprocess.Popen(
                [*cmd, json.dumps(spec, separators=(",", ":"))],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    reports = []
    deadline = time.monotonic() + lead + max_seconds + 30
    for proc, (_cid, ip, _) in zip(procs, clients, strict=True):
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        if proc.returncode != 0 or not out.strip():
            raise RuntimeError(f"client {ip} failed ({proc.returncode}): {err.strip()[-500:]}")
        reports.append(json.loads(out.strip().splitlines()[-1]))
    after = cpu_seconds(pid)
    sched_after = schedstat(pid)
    answered = sum(r["answered"] for r in reports)
    wrongs = [r["first_wrong"] for r in reports if r["first_wrong"]]
    return Phase(
        server,
        rnd,
        answered,
        sum(r["lost"] for r in reports),
        sum(r["wrong"] for r in reports),
        sum(r["checked"] for r in reports),
        max(r["end"] for r in reports) - min(r["start"] for r in reports),
        after[0] - before[0] + after[1] - before[1],
        after[0] - before[0],
        (sched_after[1] - sched_before[1]) / 1e9,
        sched_after[2] - sched_before[2],
        sum(r["latency_s"] for r in reports) / max(1, answered) * 1e3,
        max(r["late"] for r in reports),
        wrongs[0] if wrongs else "",
    )


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def schedstat(pid: int) -> tuple[int, int, int]:
    """(ns on a CPU, ns runnable but waiting, times scheduled in) of a process's main thread."""
    run_ns, wait_ns, slices = Path(f"/proc/{pid}/schedstat").read_text().split()[:3]
    return int(run_ns), int(wait_ns), int(slices)


def wait_ready(host: str, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        probe = subprocess.run(
            ["dig", f"@{host}", "-p", str(port), f"svc0.{ZONE}", "+short", "+tries=1", "+time=1"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        if probe.stdout.strip():
            return
        time.sleep(0.2)
    raise RuntimeError(f"server on {host}:{port} did not answer")


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        serve_main(sys.argv[2:])
        return
    p = argparse.ArgumentParser()
    p.add_argument("--clients", type=int, default=16, help="client containers")
    p.add_argument("--sc", type=int, default=8, help="of which Service Connect clients")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--queries", type=int, default=20000, help="per client per phase")
    p.add_argument("--window", type=int, default=8, help="queries in flight per client")
    p.add_argument("--timeout", type=float, default=2.0, help="s before a query is lost")
    p.add_argument("--check-every", type=int, default=8, help="check the records of 1 in N")
    p.add_argument("--services", type=int, default=10)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--max-phase-seconds", type=float, default=120.0)
    p.add_argument("--serve-flags", default="", help="extra flags for meshlocal: --no-uvloop ...")
    args = p.parse_args()
    if not 0 <= args.sc <= args.clients or args.clients < 1:
        raise SystemExit("need 1 <= clients and 0 <= sc <= clients")
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)  # also when started with SIGINT ignored

    import docker as docker_sdk

    from meshlocal.runtime.images import ensure_python_base

    ensure_python_base(docker_sdk.from_env(), IMAGE.split(":", 1)[0] + ":bookworm")

    budget = int(120 + (args.rounds + 1) * 2 * (args.max_phase_seconds + 30))
    tmp = Path(tempfile.mkdtemp(prefix="meshlocal-dnsmany-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    net = f"meshlocal-bench-dns-many-{os.getpid()}"
    cleanup()
    try:
        docker("network", "create", "--label", LABEL, net)
        ipam = json.loads(docker("network", "inspect", net, "--format", "{{json .IPAM.Config}}"))
        gateway = ipam[0]["Gateway"]
        ids = []
        for k in range(args.clients):
            ids.append(
                docker(
                    "run",
                    "-d",
                    "--label",
                    LABEL,
                    "--name",
                    f"{net}-c{k + 1}",
                    "--network",
                    net,
                    "-v",
                    f"{HERE / 'many_client.py'}:{CLIENT_PATH}:ro",
                    IMAGE,
                    "sleep",
                    str(budget),
                )
            )
        ips = [
            docker(
                "inspect",
                cid,
                "--format",
                "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            )
            for cid in ids
        ]
        sc_ips = ips[: args.sc]
        others = ips[args.sc :]
        plain_ips = others[: len(others) // 2]
        clients = [(cid, ip, ip in sc_ips) for cid, ip in zip(ids, ips, strict=True)]
        print(
            f"network {net}: gateway {gateway}; {len(sc_ips)} SC clients, "
            f"{len(plain_ips)} replicas without SC, "
            f"{len(others) - len(plain_ips)} outside the mesh",
            flush=True,
        )

        conf = tmp / "dnsmasq.conf"
        conf.write_text(many_dnsmasq_conf(args.services, args.replicas, sc_ips, plain_ips))
        procs["dnsmasq"] = subprocess.Popen(dnsmasq_cmd(budget, conf, gateway, DNSMASQ_PORT))
        procs["meshlocal"] = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "serve",
                "--host",
                gateway,
                "--port",
                str(MESHLOCAL_PORT),
                "--services",
                str(args.services),
                "--replicas",
                str(args.replicas),
                "--sc-clients",
                ",".join(sc_ips),
                "--plain-clients",
                ",".join(plain_ips),
                "--max-seconds",
                str(budget),
                *args.serve_flags.split(),
            ],
            stdout=subprocess.DEVNULL,
        )
        ports = {"meshlocal": MESHLOCAL_PORT, "dnsmasq": DNSMASQ_PORT}
        deadline = time.monotonic() + 20
        for port in ports.values():
            wait_ready(gateway, port, deadline)
        pids = {n: p.pid for n, p in procs.items()}
        child = subprocess.run(
            ["pgrep", "-P", str(procs["dnsmasq"].pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        if child:
            pids["dnsmasq"] = int(child[0])

        print(f"load average before: {os.getloadavg()[0]:.2f}", flush=True)
        for name in ports:  # warm-up, not counted: fills both servers' caches
            w = phase(name, 0, gateway, ports[name], pids[name], clients, args, 200)
            if w.lost or w.wrong:
                raise RuntimeError(
                    f"warm-up on {name}: {w.lost} lost, {w.wrong} wrong {w.first_wrong}"
                )
        phases: list[Phase] = []
        order = list(ports)
        for rnd in range(1, args.rounds + 1):
            for name in order if rnd % 2 else list(reversed(order)):
                r = phase(name, rnd, gateway, ports[name], pids[name], clients, args, args.queries)
                phases.append(r)
                print(
                    f"round {rnd} {name:9} {r.qps:8.0f} q/s  answered {r.answered}  lost {r.lost}  "
                    f"wrong {r.wrong} (checked {r.checked})  {r.seconds:.2f} s  "
                    f"latency {r.latency_ms:.2f} ms  cpu {r.cpu_us_per_query:.1f} us/q "
                    f"(user {r.user_us_per_query:.1f})  "
                    f"waited for a CPU {r.wait_us_per_query:.1f} us/q  "
                    f"{r.per_wakeup:.1f} q/wakeup  late {r.late:.2f} s"
                    + (f"  first wrong: {r.first_wrong}" if r.first_wrong else ""),
                    flush=True,
                )
        print(f"load average after: {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        cleanup()
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()

    report(phases, args)


def report(phases: list[Phase], args: argparse.Namespace) -> None:
    ratios = []
    for rnd in range(1, args.rounds + 1):
        by = {p.server: p for p in phases if p.round == rnd}
        ratios.append(by["meshlocal"].qps / by["dnsmasq"].qps)
    print()
    print(
        f"{args.clients} client containers ({args.sc} Service Connect clients), "
        f"{args.queries} queries each per phase, window {args.window}, {args.rounds} rounds"
    )
    print()
    print(
        "| server | median q/s | min-max q/s | paired ratio vs dnsmasq (median, min-max) "
        "| lost | wrong (checked) | mean latency ms | server CPU us/query (user) "
        "| server waiting for a CPU us/query | queries per wakeup |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in ("dnsmasq", "meshlocal"):
        ps = [p for p in phases if p.server == name]
        rs = ratios if name == "meshlocal" else [1.0]
        print(
            f"| {name} | {statistics.median(p.qps for p in ps):.0f} "
            f"| {min(p.qps for p in ps):.0f}-{max(p.qps for p in ps):.0f} "
            f"| {statistics.median(rs):.2f}x ({min(rs):.2f}-{max(rs):.2f}) "
            f"| {sum(p.lost for p in ps)} | {sum(p.wrong for p in ps)} "
            f"({sum(p.checked for p in ps)}) "
            f"| {statistics.median(p.latency_ms for p in ps):.2f} "
            f"| {statistics.median(p.cpu_us_per_query for p in ps):.1f} "
            f"({statistics.median(p.user_us_per_query for p in ps):.1f}) "
            f"| {statistics.median(p.wait_us_per_query for p in ps):.1f} "
            f"| {statistics.median(p.per_wakeup for p in ps):.1f} |"
        )


if __name__ == "__main__":
    main()
