"""`meshlocal up -d` against `docker-compose up -d` (v1) for the kudos example.

    .venv/bin/python bench/up/run.py [ROUNDS]

What is timed, for each tool, from the command's start to "every replica is up":

- meshlocal: the wall time of `meshlocal -C compose-examples/kudos up -d`. It returns
  only once every replica is in DNS and proxy rotation (the kudos manifests have no
  health check, so a replica is ready once running and joined). This includes
  loading the manifests, the (cached) image builds, and starting the data plane.
- docker-compose: the wall time of `docker-compose up -d` on an equivalent compose
  file (api x3, front-end x2, the very images meshlocal built, same environment
  variables, no health check either), then polling `docker inspect` until all five
  containers are running (they already are when compose returns; the poll is there
  so both sides are measured to the same condition).

Rounds alternate which tool goes first; each run is followed by its `down`, not
timed. The images are built once before the first round. Finally, once, the time
from a replica's `die` event (Docker's own clock) to its address leaving the mesh
DNS answer for api.test.kudos.local (asked directly, every 5 ms).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import docker

ROOT = Path(__file__).resolve().parents[2]
KUDOS = ROOT / "compose-examples" / "kudos"
MESHLOCAL = Path(sys.executable).with_name("meshlocal")
COMPOSE = "/usr/bin/docker-compose"
PROJECT = "kudosbench"

sys.path.insert(0, str(ROOT))
from meshlocal.deployment import Deployment  # noqa: E402


def sh(cmd: list[str], timeout: float = 300) -> float:
    """Run a command; its wall time. Fails loudly: a failed run is no measurement."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed


def compose_file(dep: Deployment, path: Path) -> None:
    """api x3 and front-end x2 with meshlocal's images and the variables meshlocal sets."""
    built = {s.name: dep.image_tag(s.name) for s in dep.spec.services}
    desired = dep.desired({name: (tag, None) for name, tag in built.items()})
    services: dict[str, Any] = {}
    for name, want in desired.items():
        env = dict(want.template.environment)
        services[name] = {
            "image": built[name],
            "scale": want.count,
            "environment": env,
        }
    # The ALB stand-in: compose publishes each front-end replica on an ephemeral port.
    services["front-end"]["ports"] = ["127.0.0.1::8080"]
    path.write_text(json.dumps({"version": "2.4", "services": services}, indent=2))


def compose_up(path: Path, client: docker.DockerClient) -> float:
    started = time.perf_counter()
    sh([COMPOSE, "-p", PROJECT, "-f", str(path), "up", "-d"])
    deadline = time.monotonic() + 120
    while True:
        found = client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={PROJECT}"}
        )
        if len(found) == 5 and all(c.status == "running" for c in found):
            return time.perf_counter() - started
        if time.monotonic() > deadline:
            raise SystemExit("compose's containers were not all running after 120 s")
        time.sleep(0.05)


def compose_down(path: Path) -> None:
    sh([COMPOSE, "-p", PROJECT, "-f", str(path), "down", "-t", "1"])


def meshlocal_up() -> float:
    return sh([str(MESHLOCAL), "-C", str(KUDOS), "up", "-d"])


def meshlocal_down() -> None:
    # Like compose's down: keep the images (meshlocal's default removes them).
    sh([str(MESHLOCAL), "-C", str(KUDOS), "down", "--keep-images"])


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
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    client = docker.from_env()
    dep = Deployment(KUDOS)
    print(f"warm-up: building the kudos images with meshlocal ({KUDOS})", flush=True)
    meshlocal_down()
    meshlocal_up()
    meshlocal_down()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "docker-compose.yml"
        compose_file(dep, path)
        compose_down(path)
        times: dict[str, list[float]] = {"meshlocal": [], "docker-compose": []}
        for i in range(rounds):
            order = ["meshlocal", "docker-compose"]
            if i % 2:
                order.reverse()
            for tool in order:
                if tool == "meshlocal":
                    times[tool].append(meshlocal_up())
                    meshlocal_down()
                else:
                    times[tool].append(compose_up(path, client))
                    compose_down(path)
            print(
                f"round {i + 1}: meshlocal {times['meshlocal'][-1]:.2f} s, "
                f"docker-compose {times['docker-compose'][-1]:.2f} s",
                flush=True,
            )
    med = {k: statistics.median(v) for k, v in times.items()}
    for tool, values in times.items():
        print(f"{tool:15s} median {med[tool]:.2f} s  min {min(values):.2f} s  n={len(values)}")
    ratio = med["meshlocal"] / med["docker-compose"]
    print(f"ratio meshlocal/docker-compose (medians): {ratio:.2f}x")

    meshlocal_up()
    try:
        samples = []
        for index in (1, 2, 3):  # a different slot each time: no crash-loop back-off
            dep.wait_ready(60)
            samples.append(die_to_dns(dep, client, index))
    finally:
        meshlocal_down()
        dep.close()
    print(
        "die -> out of mesh DNS: "
        + ", ".join(f"{s * 1000:.0f} ms" for s in samples)
        + f" (n={len(samples)}, max {max(samples) * 1000:.0f} ms)"
    )


if __name__ == "__main__":
    main()
