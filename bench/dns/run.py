"""dnsperf against meshlocal's DNS and dnsmasq, side by side, rounds alternating.

    .venv/bin/python bench/dns/run.py [--rounds 5] [--duration 10] [--variants uvloop+mmsg,...]

Both servers serve the same mesh records: Service Discovery A names
(`svcN.bench.demo.local`, 3 replicas; `big...`, 12 replicas: random 8),
Service Connect names (`svcN` -> the proxy address) and SRV records. Traffic
goes only to 127.0.0.0/8. Every process is bounded in time and killed at the
end. Prints a markdown table; the figures in bench/results/dns.md come from it.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROXY = "10.99.0.1"
ZONE = "bench.demo.local"
PORT = 5300
CLIENT = "127.0.0.20"
VARIANTS = {  # name: (listen address, serve.py flags)
    "uvloop+mmsg": ("127.0.0.10", []),
    "asyncio+mmsg": ("127.0.0.12", ["--no-uvloop"]),
    "uvloop+protocol": ("127.0.0.13", ["--no-mmsg"]),
    "asyncio+protocol": ("127.0.0.14", ["--no-uvloop", "--no-mmsg"]),
}
DNSMASQ_HOST = "127.0.0.11"


@dataclass
class Result:
    target: str
    qps: float
    sent: int
    lost: int
    latency_avg_ms: float
    latency_max_ms: float
    cpu_s: float  # server CPU seconds spent during the run

    @property
    def cpu_us_per_query(self) -> float:
        done = self.sent - self.lost
        return self.cpu_s / done * 1e6 if done else float("nan")


def dnsmasq_cmd(budget: float, conf: Path, address: str, port: int) -> list[str]:
    """dnsmasq in the foreground on address:port with `conf` only, ended after `budget` s."""
    return [
        "timeout",
        str(budget),
        "dnsmasq",
        "-k",
        f"--conf-file={conf}",
        "--no-resolv",
        "--no-hosts",
        "--no-poll",
        f"--port={port}",
        f"--listen-address={address}",
        "--bind-interfaces",
        "--local-ttl=10",
        "--pid-file=",
        "--log-facility=/dev/null",
    ]


def queries(services: int) -> str:
    lines = []
    for i in range(services):
        lines += [f"svc{i}.{ZONE} A", f"svc{i} A", f"svc{i}.{ZONE} SRV"]
    lines.append(f"big.{ZONE} A")
    return "\n".join(lines) + "\n"


def dnsmasq_conf(services: int, replicas: int) -> str:
    lines = []
    for i in range(services):
        lines.append(f"host-record=svc{i},{PROXY}")
        for r in range(1, replicas + 1):
            lines.append(f"host-record=svc{i}.{ZONE},10.0.{i}.{r}")
            lines.append(f"srv-host=svc{i}.{ZONE},svc{i}-{r}.svc{i}.{ZONE},{8000 + i},1,1")
            lines.append(f"host-record=svc{i}-{r}.svc{i}.{ZONE},10.0.{i}.{r}")
    for r in range(1, 13):
        lines.append(f"host-record=big.{ZONE},10.1.0.{r}")
    return "\n".join(lines) + "\n"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_ready(host: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        probe = subprocess.run(
            [
                "dig",
                f"@{host}",
                "-p",
                str(PORT),
                "-b",
                CLIENT,
                f"svc0.{ZONE}",
                "+short",
                "+tries=1",
                "+time=1",
            ],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if probe.stdout.strip():
            return
        time.sleep(0.2)
    raise SystemExit(f"server on {host}:{PORT} did not answer")


def dnsperf(
    host: str, qfile: Path, duration: int, clients: int, outstanding: int
) -> dict[str, str]:
    out = subprocess.run(
        [
            "dnsperf",
            "-s",
            host,
            "-p",
            str(PORT),
            "-a",
            CLIENT,
            "-d",
            str(qfile),
            "-l",
            str(duration),
            "-c",
            str(clients),
            "-q",
            str(outstanding),
            "-t",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=duration + 30,
    ).stdout
    fields: dict[str, str] = {}
    for line in out.splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            fields[k.strip()] = v.strip()
    return fields


def measure(target: str, host: str, pid: int, args: argparse.Namespace, qfile: Path) -> Result:
    before = cpu_seconds(pid)
    f = dnsperf(host, qfile, args.duration, args.clients, args.outstanding)
    cpu = cpu_seconds(pid) - before
    lat = re.match(r"([\d.]+) \(min [\d.]+, max ([\d.]+)\)", f["Average Latency (s)"])
    assert lat is not None
    return Result(
        target,
        float(f["Queries per second"]),
        int(f["Queries sent"]),
        int(f["Queries lost"].split()[0]),
        float(lat.group(1)) * 1000,
        float(lat.group(2)) * 1000,
        cpu,
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--services", type=int, default=10)
    p.add_argument("--replicas", type=int, default=3)
    p.add_argument("--clients", type=int, default=1, help="dnsperf -c")
    p.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    p.add_argument(
        "--variants",
        default="uvloop+mmsg,asyncio+mmsg,uvloop+protocol",
        help=f"comma-separated meshlocal variants among {', '.join(VARIANTS)}",
    )
    args = p.parse_args()
    for tool in ("dnsperf", "dnsmasq", "dig"):
        if shutil.which(tool) is None:
            raise SystemExit(
                f"{tool} is not installed (apt-get install dnsperf dnsmasq-base bind9-dnsutils)"
            )
    variants = [v for v in args.variants.split(",") if v]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"unknown variant {v!r}; choose among {', '.join(VARIANTS)}")
    budget = 60 + args.rounds * (len(variants) + 1) * (args.duration + 5)
    tmp = Path(tempfile.mkdtemp(prefix="meshlocal-dnsbench-"))
    qfile = tmp / "queries.txt"
    qfile.write_text(queries(args.services))
    conf = tmp / "dnsmasq.conf"
    conf.write_text(dnsmasq_conf(args.services, args.replicas))

    procs: dict[str, subprocess.Popen[bytes]] = {}
    hosts: dict[str, str] = {}
    try:
        procs["dnsmasq"] = subprocess.Popen(dnsmasq_cmd(budget, conf, DNSMASQ_HOST, PORT))
        hosts["dnsmasq"] = DNSMASQ_HOST
        for variant in variants:
            host, flags = VARIANTS[variant]
            name = f"meshlocal[{variant}]"
            cmd = [
                sys.executable,
                str(HERE / "serve.py"),
                "--host",
                host,
                "--port",
                str(PORT),
                "--client",
                CLIENT,
                "--services",
                str(args.services),
                "--replicas",
                str(args.replicas),
                "--max-seconds",
                str(budget),
                *flags,
            ]
            procs[name] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
            hosts[name] = host
        deadline = time.monotonic() + 20
        for host in hosts.values():
            wait_ready(host, deadline)
        # dnsmasq is started by `timeout`: measure the real server's CPU, not the wrapper's
        pids = {n: p.pid for n, p in procs.items()}
        child = subprocess.run(
            ["pgrep", "-P", str(procs["dnsmasq"].pid)], capture_output=True, text=True
        ).stdout.split()
        if child:
            pids["dnsmasq"] = int(child[0])

        results: list[Result] = []
        order = list(hosts)
        for rnd in range(args.rounds):
            for name in order if rnd % 2 == 0 else list(reversed(order)):
                r = measure(name, hosts[name], pids[name], args, qfile)
                results.append(r)
                print(
                    f"round {rnd + 1} {name:18} {r.qps:10.0f} q/s  lost {r.lost}  "
                    f"avg {r.latency_avg_ms:.3f} ms  max {r.latency_max_ms:.3f} ms  "
                    f"cpu {r.cpu_us_per_query:.1f} us/q",
                    flush=True,
                )
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)

    # Load on a shared box drifts between rounds: compare each run with the dnsmasq run
    # of the same round (adjacent in time), then take the median of those ratios.
    per_round = len(hosts)
    rounds = [results[i : i + per_round] for i in range(0, len(results), per_round)]

    def paired(name: str) -> list[float]:
        out = []
        for rnd in rounds:
            by = {r.target: r.qps for r in rnd}
            out.append(by[name] / by["dnsmasq"])
        return out

    print()
    print(
        "| server | median q/s | min-max q/s | paired ratio vs dnsmasq (median, min-max) "
        "| lost | avg latency ms | max latency ms | server CPU us/query |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in hosts:
        rs = [r for r in results if r.target == name]
        qps = statistics.median(r.qps for r in rs)
        ratios = paired(name)
        print(
            f"| {name} | {qps:.0f} | {min(r.qps for r in rs):.0f}-{max(r.qps for r in rs):.0f} "
            f"| {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) "
            f"| {sum(r.lost for r in rs)} "
            f"| {statistics.median(r.latency_avg_ms for r in rs):.3f} "
            f"| {max(r.latency_max_ms for r in rs):.3f} "
            f"| {statistics.median(r.cpu_us_per_query for r in rs):.1f} |"
        )


if __name__ == "__main__":
    main()
