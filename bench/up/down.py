"""`meshlocal down` against `docker-compose down` (v1) of the same kudos containers.

    .venv/bin/python bench/up/down.py [ROUNDS]

Each round brings kudos up (api x3, front-end x2) with each tool, untimed,
then times its `down` from the command's start to its exit:

- meshlocal: `meshlocal -C compose-examples/kudos down` (the default: images
  kept). It removes the controller first, then the data plane, the five
  replicas, the network and the link volume.
- docker-compose: `docker-compose down -t 10` (compose's default stop
  timeout) of an equivalent compose file (bench/up/run.py's `compose_file`:
  the very images meshlocal built, same variables). The kudos apps exit on
  SIGTERM, so no stop waits for its timeout.

Before either `down`, every app has said "listening" (so its SIGTERM
handler is set). Rounds alternate which tool goes first. After each `down`, the bench checks
that nothing of the project is left (containers, networks, volumes by label),
and times the next `meshlocal up -d` too: after a default `down` it must
build nothing (its output says "is up to date" for both services).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import compose_file

from meshlocal.deployment import Deployment
from meshlocal.runtime import labels as L

ROOT = Path(__file__).resolve().parents[2]
KUDOS = ROOT / "compose-examples" / "kudos"
MESHLOCAL = Path(sys.executable).with_name("meshlocal")
COMPOSE = "/usr/bin/docker-compose"
PROJECT = "kudosdown"
STOP_TIMEOUT = 10  # compose's default


def compose_up(compose: list[str], client: docker.DockerClient, count: int) -> None:
    """`up -d`, then until all `count` containers run (untimed)."""
    timed([*compose, "up", "-d"])
    deadline = time.monotonic() + 120
    label = f"com.docker.compose.project={PROJECT}"
    while True:
        found = client.api.containers(filters={"label": label, "status": "running"})
        if len(found) == count:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"compose's {count} containers were not all running after 120 s")
        time.sleep(0.05)


def timed(cmd: list[str], timeout: float = 300) -> tuple[float, str]:
    """Wall time and stderr of a command that must succeed."""
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return elapsed, proc.stderr


def left(client: docker.DockerClient, label: str) -> list[str]:
    """What a `down` left behind, by label: must be nothing."""
    api = client.api
    found = [
        f"container {c['Names'][0]}" for c in api.containers(all=True, filters={"label": label})
    ]
    found += [f"network {n['Name']}" for n in api.networks(filters={"label": label})]
    vols = (api.volumes(filters={"label": label}) or {}).get("Volumes") or []
    found += [f"volume {v['Name']}" for v in vols]
    return found


def wait_listening(client: docker.DockerClient, label: list[str], count: int) -> None:
    """Until `count` containers say "listening": their SIGTERM handler is set by then.

    Both tools' `down` is timed from the same state: an app stopped before
    it set its handler ignores SIGTERM (PID 1) and compose waits its timeout.
    """
    deadline = time.monotonic() + 60
    while True:
        rows = client.api.containers(filters={"label": label})
        ready = [r for r in rows if b"listening on" in client.api.logs(r["Id"])]
        if len(ready) >= count:
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"only {len(ready)} of {count} apps listened after 60 s")
        time.sleep(0.1)


def meshlocal_up() -> tuple[float, bool]:
    """Seconds, and whether no service image was built (both up to date).

    The data-plane image is rebuilt when meshlocal's own code changed
    (someone editing the tree): said, as it is no service build.
    """
    elapsed, stderr = timed([str(MESHLOCAL), "-C", str(KUDOS), "up", "-d"])
    if "building meshlocal/dataplane" in stderr:
        print(f"  (this up -d rebuilt the data-plane image: {elapsed:.2f} s)", flush=True)
    return elapsed, stderr.count("is up to date") == 2


def main() -> None:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    client = docker.from_env()
    dep = Deployment(KUDOS)
    mesh_label = f"{L.PROJECT}={dep.project}"
    compose_label = f"com.docker.compose.project={PROJECT}"
    print(f"warm-up: building the kudos images and the data plane ({KUDOS})", flush=True)
    timed([str(MESHLOCAL), "-C", str(KUDOS), "down"])
    meshlocal_up()
    timed([str(MESHLOCAL), "-C", str(KUDOS), "down"])
    times: dict[str, list[float]] = {"meshlocal down": [], "docker-compose down": []}
    ups: list[tuple[float, bool]] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "docker-compose.yml"
        count = compose_file(dep, path)
        compose = [COMPOSE, "-p", PROJECT, "-f", str(path)]
        timed([*compose, "down", "-t", str(STOP_TIMEOUT)])
        try:
            for i in range(rounds):
                order = ["meshlocal down", "docker-compose down"]
                if i % 2:
                    order.reverse()
                for tool in order:
                    if tool == "meshlocal down":
                        ups.append(meshlocal_up())  # after the last round's default down
                        wait_listening(client, [mesh_label, f"{L.ROLE}=replica"], count)
                        elapsed, _ = timed([str(MESHLOCAL), "-C", str(KUDOS), "down"])
                        label = mesh_label
                    else:
                        compose_up(compose, client, count)
                        wait_listening(client, [compose_label], count)
                        elapsed, _ = timed([*compose, "down", "-t", str(STOP_TIMEOUT)])
                        label = compose_label
                    times[tool].append(elapsed)
                    leftovers = left(client, label)
                    if leftovers:
                        raise SystemExit(f"{tool} left behind: {leftovers}")
                print(
                    f"round {i + 1}: meshlocal down {times['meshlocal down'][-1]:.2f} s, "
                    f"docker-compose down {times['docker-compose down'][-1]:.2f} s; "
                    f"the up -d before: {ups[-1][0]:.2f} s"
                    f"{', nothing built' if ups[-1][1] else ', BUILT SOMETHING'}",
                    flush=True,
                )
        finally:
            subprocess.run([*compose, "down", "-t", "1"], capture_output=True, check=False)
            subprocess.run([str(MESHLOCAL), "-C", str(KUDOS), "down"], capture_output=True)
            dep.close()
    med = {k: statistics.median(v) for k, v in times.items()}
    for tool, values in times.items():
        print(
            f"{tool:20s} median {med[tool]:.2f} s  min {min(values):.2f} s  "
            f"max {max(values):.2f} s  n={len(values)}"
        )
    ratio = med["meshlocal down"] / med["docker-compose down"]
    print(f"ratio meshlocal/docker-compose (medians): {ratio:.2f}x")
    up_times = [t for t, _ in ups]
    print(
        f"meshlocal up -d after a default down: median {statistics.median(up_times):.2f} s "
        f"(min {min(up_times):.2f}, max {max(up_times):.2f}), "
        f"nothing built in {sum(1 for _, quiet in ups if quiet)}/{len(ups)}"
    )


if __name__ == "__main__":
    main()
