"""`meshlocal up -d --engine swarm` against `docker stack deploy` of the same services.

    .venv/bin/python bench/swarm/stack.py [ROUNDS]

A 2-node swarm: this engine as manager, and a second engine (Debian's
docker.io in a container, tests/e2e/nodes.py) as a worker. The workspace
has 10 Backend Services of 3 replicas each (30 tasks): busybox httpd with a
1 s health check, all Service Connect clients and servers. The stack file
runs the same image, command, health check and replica counts on an overlay
network (endpoint mode dnsrr, as meshlocal's), so both wait for the same 30
containers to start and pass their check on the same two nodes.

Timed, from the command's start:
- meshlocal: until `up -d` returns, which is when every replica is in
  rotation (the data plane and its DNS and proxy included);
- docker stack: until every task of the stack is `running` (a task with a
  health check is `starting` until its first healthy result), polled every
  0.1 s, as `docker stack deploy` returns before anything runs.
Each is removed (untimed) between rounds, and rounds alternate who goes
first. The images are on both nodes before the first round.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from e2e.nodes import Node, Swarm, ensure_node_image, remove_leftover_nodes  # noqa: E402

from meshlocal.runtime import images  # noqa: E402

MESHLOCAL = Path(sys.executable).with_name("meshlocal")
SERVICES = 10
COUNT = 3
STACK = "mlbench"
CHECK = "wget -q -O /dev/null http://127.0.0.1/ || exit 1"
COMMAND = (
    "mkdir -p /www && hostname > /www/index.html; trap 'kill $pid; exit 0' TERM; "
    "httpd -f -p 80 -h /www & pid=$!; wait"
)


def workspace(root: Path, image: str) -> Path:
    ws = root / "swarmbench"
    (ws / "copilot" / "environments" / "test").mkdir(parents=True)
    (ws / "copilot" / ".workspace").write_text("application: swarmbench\n")
    # Copilot's minimum interval is 5 s; both tools probe every second here.
    (ws / "copilot" / ".meshlocal.yml").write_text("health_check_interval: 1s\n")
    (ws / "copilot" / "environments" / "test" / "manifest.yml").write_text(
        "name: test\ntype: Environment\n"
    )
    for i in range(SERVICES):
        svc = ws / "copilot" / f"s{i}"
        svc.mkdir()
        (svc / "manifest.yml").write_text(
            f"name: s{i}\ntype: Backend Service\nimage:\n  location: {image}\n  port: 80\n"
            f"  healthcheck:\n    command: ['CMD-SHELL', '{CHECK}']\n"
            "    interval: 5s\n    timeout: 2s\n    retries: 2\n"
            f'command: ["sh", "-c", "{COMMAND}"]\n'
            f"count: {COUNT}\nnetwork:\n  connect: true\n"
        )
    return ws


def stack_file(root: Path, image: str) -> Path:
    lines = ["version: '3.8'", "services:"]
    for i in range(SERVICES):
        lines += [
            f"  s{i}:",
            f"    image: {image}",
            f'    command: ["sh", "-c", "{COMMAND.replace("$", "$$")}"]',  # compose interpolates $
            "    healthcheck:",
            f"      test: ['CMD-SHELL', '{CHECK}']",
            "      interval: 1s",
            "      timeout: 2s",
            "      retries: 2",
            "    networks: [mesh]",
            "    deploy:",
            f"      replicas: {COUNT}",
            "      endpoint_mode: dnsrr",
        ]
    lines += ["networks:", "  mesh:", "    driver: overlay", "    attachable: true"]
    path = root / "stack.yml"
    path.write_text("\n".join(lines) + "\n")
    return path


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MESHLOCAL_NODE_ENGINE": "tcp://{address}:2375"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return done


def time_meshlocal(ws: Path) -> float:
    started = time.monotonic()
    run([str(MESHLOCAL), "-C", str(ws), "up", "-d", "--engine", "swarm", "--timeout", "300"])
    return time.monotonic() - started


def time_stack(client: docker.DockerClient, path: Path) -> float:
    started = time.monotonic()
    run(["docker", "stack", "deploy", "-c", str(path), STACK])
    deadline = started + 300
    while time.monotonic() < deadline:
        tasks = client.api.tasks(filters={"label": f"com.docker.stack.namespace={STACK}"})
        live = [t for t in tasks if t["DesiredState"] == "running"]
        if len(live) == SERVICES * COUNT and all(t["Status"]["State"] == "running" for t in live):
            return time.monotonic() - started
        time.sleep(0.1)
    raise RuntimeError("the stack did not come up in 300 s")


def stack_down(client: docker.DockerClient) -> None:
    run(["docker", "stack", "rm", STACK])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if not client.api.tasks(filters={"label": f"com.docker.stack.namespace={STACK}"}) and not [
            n for n in client.api.networks() if n["Name"].startswith(f"{STACK}_")
        ]:
            return
        time.sleep(0.3)


def main(rounds: int) -> None:
    client = docker.from_env()
    image = images.ensure_busybox_image(client)
    images.ensure_dataplane_image(client, images.ensure_python_base(client))
    remove_leftover_nodes(client)
    node_image = ensure_node_image(client)
    swarm = Swarm(client, "meshlocal-bench-swarm")
    try:
        worker = Node(client, "meshlocal-bench-worker", "meshlocal-bench-swarm", node_image)
        swarm.join(worker)
        worker.load([image])
        with tempfile.TemporaryDirectory() as tmp:
            ws = workspace(Path(tmp), image)
            path = stack_file(Path(tmp), image)
            times: dict[str, list[float]] = {"meshlocal": [], "docker stack": []}
            for r in range(rounds):
                order = (
                    ["meshlocal", "docker stack"] if r % 2 == 0 else ["docker stack", "meshlocal"]
                )
                for who in order:
                    if who == "meshlocal":
                        t = time_meshlocal(ws)
                        run([str(MESHLOCAL), "-C", str(ws), "down"])
                    else:
                        t = time_stack(client, path)
                        stack_down(client)
                    times[who].append(t)
                    print(f"round {r + 1} {who:12s} {t:6.2f} s", flush=True)
        ml, st = (statistics.median(times[k]) for k in ("meshlocal", "docker stack"))
        print()
        print("| tool | median s | per round |")
        print("|---|---|---|")
        for k in times:
            per = ", ".join(f"{x:.2f}" for x in times[k])
            print(f"| {k} | {statistics.median(times[k]):.2f} | {per} |")
        print(f"\nmeshlocal / docker stack: {ml / st:.2f}x")
    finally:
        swarm.close()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
