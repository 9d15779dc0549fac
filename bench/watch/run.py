"""Save-to-serving: `meshlocal up -d --watch` against `docker-compose up -d --build api`.

The kudos api (a Python image, 3 replicas) on copies of the workspace.
Each round saves a one-line change to api/app.py (its `Server` header) and
times, from the save, until a client calling the api sees the new code:

- meshlocal: the background watcher notices, patches or rebuilds the image
  and rolls the replicas; the client is a front-end replica calling
  `http://api/` through Service Connect.
- docker-compose (v1; compose v2's `watch` is not installed here): the save
  is followed at once by `docker-compose up -d --build api` (no watcher
  latency at all); the client is a container on compose's network calling
  `http://api/` through compose's DNS.

Both clients run the same poller inside a container (every 20 ms, a new
connection each time, 2 s timeout) and report, on the container's clock
(the host's), the first response with the new code, when every response
since has been new (20 in a row), and how many calls failed meanwhile.

  .venv/bin/python bench/watch/run.py --rounds 5 [--no-patch]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import docker

ROOT = Path(__file__).resolve().parents[2]
KUDOS = ROOT / "compose-examples" / "kudos"
MESHLOCAL = Path(sys.executable).with_name("meshlocal")
COMPOSE = "/usr/bin/docker-compose"
SERVER = re.compile(r'server_version = "kudos-api/[^"]*"')

POLLER = r"""
import sys, time, urllib.request
want, limit = sys.argv[1], float(sys.argv[2])
first = None; streak = 0; failed = 0; calls = 0
end = time.time() + limit
print("ready", flush=True)
while time.time() < end:
    calls += 1
    try:
        with urllib.request.urlopen("http://api/", timeout=2) as r:
            new = r.headers.get("Server", "").startswith("kudos-api/" + want)
    except Exception:
        failed += 1; new = False; streak = 0
    if new:
        first = first or time.time(); streak += 1
        if streak >= 20:
            break
    elif first is not None:
        streak = 0
    time.sleep(0.02)
print("done", first, time.time() if streak >= 20 else None, failed, calls, flush=True)
"""


def sh(args: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)


def save(workspace: Path, marker: str) -> float:
    app = workspace / "api" / "app.py"
    text = SERVER.sub(f'server_version = "kudos-api/{marker}"', app.read_text())
    now = time.time()
    app.write_text(text)
    return now


def poll(container: str, marker: str, limit: float = 90.0) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        ["docker", "exec", container, "python3", "-c", POLLER, marker, str(limit)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        raise SystemExit(f"the poller in {container} did not start")
    return proc


def result(proc: subprocess.Popen[str], saved: float) -> dict[str, float | None]:
    out, _ = proc.communicate(timeout=120)
    _, first, settled, failed, calls = out.split()
    return {
        "first": float(first) - saved if first != "None" else None,
        "all": float(settled) - saved if settled != "None" else None,
        "failed": float(failed),
        "calls": float(calls),
    }


def meshlocal_round(workspace: Path, client: str, marker: str) -> dict[str, float | None]:
    proc = poll(client, marker)
    saved = save(workspace, marker)
    found = result(proc, saved)
    # The roll finishes (old replicas drained) before the next round saves.
    deadline = time.time() + 60
    while time.time() < deadline:
        state = json.loads(sh([str(MESHLOCAL), "-C", str(workspace), "ps", "--json"]).stdout)
        api = state["services"]["api"]
        if api["ready"] and len(api["replicas"]) == api["desired"]:
            break
        time.sleep(0.2)
    return found


def compose_file(workspace: Path, path: Path, base: str) -> None:
    services = {
        "api": {
            "build": {"context": str(workspace / "api"), "args": {"BASE_IMAGE": base}},
            "image": "meshlocal-watchbench-api",
            "scale": 3,
        },
        "client": {
            "image": "meshlocal-watchbench-api",
            "command": ["sleep", "100000"],
        },
    }
    path.write_text(json.dumps({"version": "2.4", "services": services}, indent=2))


def compose_round(
    workspace: Path, compose: Path, project: str, client: str, marker: str
) -> dict[str, float | None]:
    proc = poll(client, marker)
    saved = save(workspace, marker)
    started = time.time()
    sh([COMPOSE, "-p", project, "-f", str(compose), "up", "-d", "--build", "api"])
    found = result(proc, saved)
    found["command"] = time.time() - started
    return found


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--no-patch",
        action="store_true",
        help="meshlocal always runs the legacy builder (MESHLOCAL_PATCH_BUILDS=0)",
    )
    args = parser.parse_args()
    client = docker.from_env()
    tmp = Path(tempfile.mkdtemp(prefix="watchbench-"))
    ml = tmp / "ml" / "kudos"
    dc = tmp / "dc" / "kudos"
    shutil.copytree(KUDOS, ml)
    shutil.copytree(KUDOS, dc)
    compose = tmp / "compose.yml"
    project = "watchbench"
    env = {**os.environ, "NO_COLOR": "1"}
    if args.no_patch:  # the background watcher inherits it
        env["MESHLOCAL_PATCH_BUILDS"] = "0"
    runs: dict[str, list[dict[str, float | None]]] = {"meshlocal": [], "docker-compose": []}
    try:
        sh([str(MESHLOCAL), "-C", str(ml), "up", "-d", "--watch"], env=env)
        state = json.loads(sh([str(MESHLOCAL), "-C", str(ml), "ps", "--json"]).stdout)
        fe = state["services"]["front-end"]["replicas"][0]["container_id"]
        base = next(t for t in (i.tags for i in client.images.list("meshlocal/python-base")) if t)[
            0
        ]
        compose_file(dc, compose, base)
        sh([COMPOSE, "-p", project, "-f", str(compose), "up", "-d", "--build"])
        dc_client = f"{project}_client_1"
        for i in range(args.rounds):
            for name in (
                ("meshlocal", "docker-compose")
                if i % 2 == 0
                else (
                    "docker-compose",
                    "meshlocal",
                )
            ):
                marker = f"{name[0]}{i}-{int(time.time() * 1000) % 100000}"
                if name == "meshlocal":
                    found = meshlocal_round(ml, fe, marker)
                else:
                    found = compose_round(dc, compose, project, dc_client, marker)
                runs[name].append(found)
                print(f"round {i} {name}: {found}", flush=True)
    finally:
        subprocess.run([str(MESHLOCAL), "-C", str(ml), "down"], capture_output=True, check=False)
        subprocess.run(
            [COMPOSE, "-p", project, "-f", str(compose), "down", "--rmi", "local"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    head = f"| save to serving (median of {args.rounds}) | first new response | all new |"
    print(head + " failed calls (total) |")
    print("|---|---|---|---|")
    for name, rows in runs.items():
        first = median([r["first"] for r in rows])
        settled = median([r["all"] for r in rows])
        failed = sum(r["failed"] or 0 for r in rows)
        calls = sum(r["calls"] or 0 for r in rows)
        print(f"| {name} | {first:.2f} s | {settled:.2f} s | {failed:.0f} of {calls:.0f} |")
    m = median([r["first"] for r in runs["meshlocal"]])
    d = median([r["first"] for r in runs["docker-compose"]])
    if m and d:
        print(f"\nratio meshlocal/docker-compose, first new response (medians): {m / d:.2f}x")
    m = median([r["all"] for r in runs["meshlocal"]])
    d = median([r["all"] for r in runs["docker-compose"]])
    if m and d:
        print(f"ratio meshlocal/docker-compose, all new (medians): {m / d:.2f}x")


if __name__ == "__main__":
    main()
