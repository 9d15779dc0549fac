"""The split data plane (issue 13) against the single agent before it, same work, one run.

    git worktree add /tmp/ml-before 1e56b8d
    .venv/bin/python bench/up/split.py --before /tmp/ml-before --rounds 3

Each round runs both versions on a fresh copy of the kudos example (api x3,
front-end x2 with a public endpoint), alternating which goes first, and
measures, all on the same machine and engine:

- `up -d` from nothing (images cached), and `up -d` again unchanged;
- DNS through the deployed data plane: UDP queries for api.test.kudos.local
  sent from the host to the data plane's address, 64 in flight, for
  `--seconds`; answers per second;
- HTTP through the public endpoint (the front-end's published port), one
  keep-alive connection per worker, 8 workers, for `--seconds`; requests/s;
- a data plane killed (SIGKILL of its process: Docker restarts it) until DNS
  answers again with every api replica, and until `ps` says ready;
- memory of the mesh's own containers (`docker stats`): the agent before;
  the data plane plus the controller after.

The version under test is chosen by PYTHONPATH (the `before` tree, or this
one); the data-plane image each builds holds that version's files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import dns.message
import dns.query
import docker

ROOT = Path(__file__).resolve().parents[2]
KUDOS = ROOT / "compose-examples" / "kudos"
OUT = ROOT / "bench" / "results" / "split.json"


def cli(tree: Path, workspace: Path, *args: str, timeout: float = 300) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "meshlocal", "-C", str(workspace), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd="/",  # never this checkout: `-m` puts the cwd first on sys.path
        check=False,
    )
    took = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{args} failed with {tree}:\n{proc.stderr[-3000:]}")
    return took, proc.stdout


def state(tree: Path, workspace: Path) -> dict[str, Any]:
    _, out = cli(tree, workspace, "ps", "--json")
    doc: dict[str, Any] = json.loads(out)
    return doc


def dns_rate(address: str, name: str, seconds: float, window: int = 64) -> float:
    query = dns.message.make_query(name, "A")
    wire = bytearray(query.to_wire())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(1.0)
    sock.connect((address, 53))
    answered = 0
    ident = 0
    deadline = time.perf_counter() + seconds
    outstanding = 0
    try:
        while time.perf_counter() < deadline:
            while outstanding < window:
                ident = (ident + 1) & 0xFFFF
                wire[0:2] = ident.to_bytes(2, "big")
                sock.send(wire)
                outstanding += 1
            try:
                sock.recv(4096)
                answered += 1
                outstanding -= 1
            except TimeoutError:
                outstanding = 0  # lost: send a new window
    finally:
        sock.close()
    return answered / seconds


async def _http_rate(url: str, seconds: float, workers: int = 8) -> float:
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with session.get(url) as resp:
                await resp.read()
                if resp.status == 200:
                    done += 1

    connector = aiohttp.TCPConnector(limit=workers)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(workers)))
    return done / seconds


def dataplane_pid(client: docker.DockerClient, project: str) -> tuple[Any, int]:
    plane = client.containers.get(f"{project}-test-meshlocal")
    return plane, int(plane.attrs["State"]["Pid"])


def mesh_memory(client: docker.DockerClient, project: str) -> float:
    total = 0.0
    for c in client.containers.list(filters={"label": f"meshlocal.project={project}"}):
        if c.labels.get("meshlocal.role") in ("dataplane", "controller"):
            stats = c.stats(stream=False)
            total += stats["memory_stats"].get("usage", 0) / 2**20
    return total


def restart_recovery(
    client: docker.DockerClient, tree: Path, ws: Path, project: str, address: str
) -> tuple[float, float]:
    """(seconds until DNS answers with every api replica, seconds until `ps` says ready)."""
    name = "api.test.kudos.local"
    want = 3
    plane, pid = dataplane_pid(client, project)
    started_at = plane.attrs["State"]["StartedAt"]
    os.kill(pid, signal.SIGKILL)
    t0 = time.monotonic()
    dns_back = ready_back = 0.0
    deadline = t0 + 90
    while time.monotonic() < deadline and not dns_back:
        plane.reload()
        if plane.attrs["State"]["StartedAt"] != started_at:
            try:
                reply = dns.query.udp(dns.message.make_query(name, "A"), address, timeout=0.2)
                if sum(len(r) for r in reply.answer) >= want:
                    dns_back = time.monotonic() - t0
            except (dns.exception.Timeout, OSError):
                pass
        time.sleep(0.02)
    while time.monotonic() < deadline and not ready_back:
        try:
            if state(tree, ws).get("ready"):
                ready_back = time.monotonic() - t0
        except SystemExit:
            pass
        time.sleep(0.1)
    if not (dns_back and ready_back):
        raise SystemExit(f"{tree}: no recovery within 90 s")
    return dns_back, ready_back


def one(tree: Path, ws: Path, seconds: float, client: docker.DockerClient) -> dict[str, Any]:
    result: dict[str, Any] = {}
    try:
        result["up_cold_s"], _ = cli(tree, ws, "up", "-d")
        result["up_again_s"], _ = cli(tree, ws, "up", "-d")
        doc = state(tree, ws)
        project, address = doc["project"], doc["address"]
        result["image"] = client.containers.get(f"{project}-test-meshlocal").image.id
        time.sleep(1.0)
        result["memory_mib"] = round(mesh_memory(client, project), 1)
        result["dns_qps"] = round(dns_rate(address, "api.test.kudos.local", seconds))
        url = str(doc["public_url"]) + "/"
        result["http_rps"] = round(asyncio.run(_http_rate(url, seconds)))
        dns_back, ready_back = restart_recovery(client, tree, ws, project, address)
        result["restart_dns_s"] = round(dns_back, 2)
        result["restart_ready_s"] = round(ready_back, 2)
    finally:
        subprocess.run(
            # The before tree removes images without --keep-images; now a hidden no-op.
            [sys.executable, "-m", "meshlocal", "-C", str(ws), "down", "--keep-images"],
            env={**os.environ, "PYTHONPATH": str(tree)},
            cwd="/",
            capture_output=True,
            timeout=300,
            check=False,
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True, help="a checkout of the old code")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    client = docker.from_env()
    trees = {"before": args.before.resolve(), "after": ROOT}
    # Warm: images built for both versions before anything is timed. Each
    # version's `up` prunes other data-plane images not in use: a stopped
    # container of each keeps both, so no timed `up` rebuilds one.
    # One copy of the workspace per version, kept across rounds: its service
    # images are built once (a new copy is a new project, with images of its own).
    tmp = Path(tempfile.mkdtemp(prefix="split-"))
    spaces = {}
    for label in trees:
        spaces[label] = tmp / label / "kudos"
        shutil.copytree(KUDOS, spaces[label])
    holders = []
    for label, tree in trees.items():
        print(f"warming {label}", flush=True)
        image = one(tree, spaces[label], 0.5, client)["image"]
        holders.append(client.containers.create(image, entrypoint=["true"], command=[]))
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    try:
        for round_ in range(args.rounds):
            order = ["before", "after"] if round_ % 2 == 0 else ["after", "before"]
            for label in order:
                got = one(trees[label], spaces[label], args.seconds, client)
                got.pop("image")
                runs[label].append(got)
                print(label, json.dumps(got), flush=True)
    finally:
        for holder in holders:
            holder.remove(force=True)
        for label, tree in trees.items():
            subprocess.run(
                [sys.executable, "-m", "meshlocal", "-C", str(spaces[label]), "down"],
                env={**os.environ, "PYTHONPATH": str(tree)},
                cwd="/",
                capture_output=True,
                timeout=300,
                check=False,
            )
        shutil.rmtree(tmp, ignore_errors=True)
    summary = {
        label: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for label, rows in runs.items()
    }
    summary["after/before"] = {
        key: round(summary["after"][key] / summary["before"][key], 3)
        for key in summary["after"]
        if summary["before"][key]
    }
    print(json.dumps(summary, indent=2))
    OUT.write_text(json.dumps({"runs": runs, "median": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
