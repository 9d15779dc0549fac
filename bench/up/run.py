"""`meshlocal up -d` against `docker-compose up -d` (v1), side by side, one run.

    .venv/bin/python bench/up/run.py [--rounds 5] [--only kudos,wide]

Two workspaces, each on its own copy in a temporary directory (so nothing
else using compose-examples/kudos interferes):

- kudos: the example (api x3 with AppProtocol http, front-end x2, a Load
  Balanced Web Service with `http.healthcheck`), Python images built by
  meshlocal once before the first round;
- wide: generated, 10 services and 30 replicas (8 Backend Services and 2 Load
  Balanced Web Services with a health-check path, 3 replicas each, busybox
  httpd), every one a Service Connect server.

Each round, alternating which tool goes first, times for each tool:

- `up`: from nothing (images built) until every replica is up. meshlocal's
  `up -d` returns only once every replica is in DNS and proxy rotation (the
  Load Balanced Web Services' health checks passed); compose's `up -d` is
  followed by polling `docker inspect` until all its containers run;
- `loop`: the everyday loop from a running mesh: `down` then `up -d`, both
  timed together (the `down` part is printed too). meshlocal's `down` keeps
  the images, as compose's does.

Then both are brought down, untimed. The compose file has the same
replicas, images, variables and commands, and publishes each Load Balanced
Web Service's port on 127.0.0.1 (meshlocal publishes its public endpoint).
Finally, once, on kudos: the time from a replica's `die` event (Docker's own
clock) to its address leaving the mesh DNS answer.
"""

from __future__ import annotations

import argparse
import json
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

import dns.message
import dns.query
import docker

ROOT = Path(__file__).resolve().parents[2]
KUDOS = ROOT / "compose-examples" / "kudos"
MESHLOCAL = Path(sys.executable).with_name("meshlocal")
COMPOSE = "/usr/bin/docker-compose"

sys.path.insert(0, str(ROOT))
from meshlocal.deployment import Deployment  # noqa: E402
from meshlocal.manifest.model import ServiceType  # noqa: E402
from meshlocal.runtime import images  # noqa: E402

WIDE_BACKENDS = 8
WIDE_WEBS = 2
WIDE_COUNT = 3
# SIGTERM ends it at once, as the kudos apps: `down` then measures the tools,
# not a 10 s stop timeout (httpd as PID 1 ignores SIGTERM).
HTTPD = (
    'mkdir -p /www && echo "$COPILOT_SERVICE_NAME $(hostname)" > /www/index.html; '
    "trap 'kill $pid; exit 0' TERM; httpd -f -p 80 -h /www & pid=$!; wait"
)


def sh(cmd: list[str], timeout: float = 300) -> float:
    """Run a command; its wall time. Fails loudly: a failed run is no measurement."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def wide_workspace(root: Path, busybox: str) -> None:
    """10 services, 30 replicas: 8 backends and 2 web services, all Service Connect servers."""
    shutil.copytree(KUDOS / "copilot" / "environments", root / "copilot" / "environments")
    (root / "copilot" / ".workspace").write_text("application: wide\n")
    names = [f"svc{i}" for i in range(WIDE_BACKENDS)] + [f"web{i}" for i in range(WIDE_WEBS)]
    for name in names:
        web = name.startswith("web")
        lines = [
            f"name: {name}",
            f"type: {'Load Balanced Web Service' if web else 'Backend Service'}",
            "image:",
            f"  location: {busybox}",
            "  port: 80",
            f"command: [sh, -c, {json.dumps(HTTPD)}]",
            f"count: {WIDE_COUNT}",
            "network:",
            "  connect: true",
        ]
        if web:
            lines += ["http:", f"  path: '{name}'", "  healthcheck: '/'"]
        path = root / "copilot" / name / "manifest.yml"
        path.parent.mkdir(parents=True)
        path.write_text("\n".join(lines) + "\n")


def compose_file(dep: Deployment, path: Path) -> int:
    """The same replicas, images, variables and commands; returns the container count."""
    built = dep.build()
    desired = dep.desired(built)
    services: dict[str, Any] = {}
    for svc in dep.spec.services:
        want = desired[svc.name]
        entry: dict[str, Any] = {
            "image": built[svc.name][0],
            "scale": want.count,
            # `$$`: compose would interpolate what the container's shell must see.
            "environment": {k: v.replace("$", "$$") for k, v in want.template.environment.items()},
        }
        if want.template.command is not None:
            entry["command"] = [part.replace("$", "$$") for part in want.template.command]
        if svc.type is ServiceType.LOAD_BALANCED_WEB_SERVICE and want.template.port:
            # The ALB stand-in: compose publishes each replica on an ephemeral port.
            entry["ports"] = [f"127.0.0.1::{want.template.port}"]
        services[svc.name] = entry
    path.write_text(json.dumps({"version": "2.4", "services": services}, indent=2))
    return sum(d.count for d in desired.values())


@dataclass
class Bench:
    name: str
    root: Path
    compose: Path
    project: str
    containers: int = 0
    times: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, value: float) -> None:
        self.times.setdefault(key, []).append(value)

    # -- meshlocal ------------------------------------------------------------------
    def ml_up(self) -> float:
        return sh([str(MESHLOCAL), "-C", str(self.root), "up", "-d"])

    def ml_down(self) -> float:
        return sh([str(MESHLOCAL), "-C", str(self.root), "down"])

    # -- docker-compose -------------------------------------------------------------
    def dc_up(self, client: docker.DockerClient) -> float:
        started = time.perf_counter()
        sh([COMPOSE, "-p", self.project, "-f", str(self.compose), "up", "-d"])
        deadline = time.monotonic() + 120
        while True:
            found = client.containers.list(
                all=True, filters={"label": f"com.docker.compose.project={self.project}"}
            )
            if len(found) == self.containers and all(c.status == "running" for c in found):
                return time.perf_counter() - started
            if time.monotonic() > deadline:
                raise SystemExit("compose's containers were not all running after 120 s")
            time.sleep(0.05)

    def dc_down(self) -> float:
        # meshlocal stops replicas with ECS's SIGTERM then SIGKILL after its own
        # stop timeout; compose's default (10 s) is the same order: both are
        # killed well before it by SIGTERM-aware (httpd, python) processes.
        return sh([COMPOSE, "-p", self.project, "-f", str(self.compose), "down"])


def prepare(name: str, tmp: Path, client: docker.DockerClient) -> Bench:
    root = tmp / name
    if name == "kudos":
        shutil.copytree(KUDOS, root, ignore=shutil.ignore_patterns("tests", "__pycache__"))
    else:
        wide_workspace(root, images.ensure_busybox_image(client))
    bench = Bench(name, root, tmp / f"{name}-compose.yml", f"{name}bench")
    print(f"warm-up: {name}: building images with meshlocal ({root})", flush=True)
    bench.ml_up()
    bench.ml_down()
    dep = Deployment(root)
    try:
        bench.containers = compose_file(dep, bench.compose)
    finally:
        dep.close()
    bench.dc_down()
    return bench


def round_of(bench: Bench, first: str, client: docker.DockerClient) -> None:
    order = ["meshlocal", "docker-compose"]
    if first != "meshlocal":
        order.reverse()
    for tool in order:
        if tool == "meshlocal":
            bench.add("meshlocal up", bench.ml_up())
            down = bench.ml_down()
            up = bench.ml_up()
            bench.add("meshlocal down", down)
            bench.add("meshlocal loop", down + up)
            bench.ml_down()
        else:
            bench.add("docker-compose up", bench.dc_up(client))
            down = bench.dc_down()
            up = bench.dc_up(client)
            bench.add("docker-compose down", down)
            bench.add("docker-compose loop", down + up)
            bench.dc_down()


def report(bench: Bench) -> dict[str, float]:
    med = {k: statistics.median(v) for k, v in bench.times.items()}
    print(f"{bench.name} ({bench.containers} replicas):")
    for key, values in bench.times.items():
        shown = ", ".join(f"{v:.2f}" for v in values)
        print(f"  {key:22s} median {med[key]:.2f} s  min {min(values):.2f} s  [{shown}]")
    ratios = {}
    for what in ("up", "loop", "down"):
        ratios[what] = med[f"meshlocal {what}"] / med[f"docker-compose {what}"]
        print(f"  ratio meshlocal/docker-compose, {what} (medians): {ratios[what]:.2f}x")
    return ratios


def die_to_dns(dep: Deployment, client: docker.DockerClient, index: int) -> float:
    """Seconds from api-<index>'s die event to its address leaving the mesh DNS answer."""
    state = dep.state()
    name = state["services"]["api"]["discovery_name"]
    victim = next(r for r in state["services"]["api"]["replicas"] if r["index"] == index)
    died: list[float] = []
    events = client.events(
        decode=True, filters={"container": victim["container_id"], "event": "die"}
    )

    def watch() -> None:
        for event in events:
            died.append(event["timeNano"] / 1e9)
            return

    threading.Thread(target=watch, daemon=True).start()
    client.api.kill(victim["container_id"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        reply = dns.query.udp(dns.message.make_query(name, "A"), state["address"], timeout=1)
        answers = {item.address for rrset in reply.answer for item in rrset}
        if victim["address"] not in answers:
            gone = time.time()
            break
        time.sleep(0.005)
    else:
        raise SystemExit("the killed replica stayed in DNS for 10 s")
    while not died and time.monotonic() < deadline:
        time.sleep(0.01)
    events.close()
    return gone - died[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", default="kudos,wide")
    args = parser.parse_args()
    client = docker.from_env()
    with open("/proc/loadavg") as f:
        print(f"load average before: {' '.join(f.read().split()[:3])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="meshlocal-bench-up-") as raw:
        tmp = Path(raw)
        benches = [prepare(name, tmp, client) for name in args.only.split(",")]
        try:
            for i in range(args.rounds):
                for bench in benches:
                    round_of(bench, "meshlocal" if i % 2 == 0 else "docker-compose", client)
                    last = {k: v[-1] for k, v in bench.times.items()}
                    print(
                        f"round {i + 1} {bench.name}: "
                        + ", ".join(f"{k} {v:.2f} s" for k, v in last.items()),
                        flush=True,
                    )
            ratios = {b.name: report(b) for b in benches}
            if len(ratios) > 1:
                names = list(ratios)
                growth = ratios[names[-1]]["up"] / ratios[names[0]]["up"]
                print(f"up ratio, {names[-1]} over {names[0]}: {growth:.2f}")
            kudos = next((b for b in benches if b.name == "kudos"), None)
            if kudos is not None:
                kudos.ml_up()
                dep = Deployment(kudos.root)
                try:
                    samples = []
                    for index in (1, 2, 3):  # a different slot each time: no back-off
                        dep.wait_ready(60)
                        samples.append(die_to_dns(dep, client, index))
                finally:
                    dep.close()
                print(
                    "die -> out of mesh DNS: "
                    + ", ".join(f"{s * 1000:.0f} ms" for s in samples)
                    + f" (n={len(samples)}, max {max(samples) * 1000:.0f} ms)"
                )
        finally:
            for bench in benches:
                subprocess.run(
                    [str(MESHLOCAL), "-C", str(bench.root), "down", "--rmi"],
                    check=False,
                    capture_output=True,
                )
                subprocess.run(
                    [COMPOSE, "-p", bench.project, "-f", str(bench.compose), "down"],
                    check=False,
                    capture_output=True,
                )
    with open("/proc/loadavg") as f:
        print(f"load average after: {' '.join(f.read().split()[:3])}", flush=True)


if __name__ == "__main__":
    main()
