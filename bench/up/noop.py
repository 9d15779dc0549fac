"""A second `up -d` with nothing changed: `meshlocal up -d` against `docker-compose up -d`.

On copies of kudos, both already up. Each round runs the same command again
and times it as a user sees it, process start to exit. meshlocal's second
`up -d` checks file stats, its containers, the controller's configuration
and the data plane's readiness, and touches nothing; compose's asks the
engine about every container and finds them up to date.

  .venv/bin/python bench/up/noop.py --rounds 11
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench" / "up"))

from run import COMPOSE, KUDOS, MESHLOCAL, compose_file  # noqa: E402

from meshlocal.deployment import Deployment  # noqa: E402


def timed(args: list[str], env: dict[str, str]) -> float:
    start = time.monotonic()
    subprocess.run(args, check=True, capture_output=True, env=env)
    return time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="noopbench-"))
    ws = tmp / "kudos"
    shutil.copytree(KUDOS, ws)
    compose = tmp / "compose.yml"
    project = "noopbench"
    env = {**os.environ, "NO_COLOR": "1"}
    ml = [str(MESHLOCAL), "-C", str(ws), "up", "-d"]
    dc = [COMPOSE, "-p", project, "-f", str(compose), "up", "-d"]
    times: dict[str, list[float]] = {"meshlocal": [], "docker-compose": []}
    try:
        subprocess.run(ml, check=True, capture_output=True, env=env)
        dep = Deployment(ws)
        try:
            compose_file(dep, compose)
        finally:
            dep.close()
        subprocess.run(dc, check=True, capture_output=True, env=env)
        for i in range(args.rounds):
            order = [("meshlocal", ml), ("docker-compose", dc)]
            for name, cmd in order if i % 2 == 0 else reversed(order):
                times[name].append(timed(cmd, env))
        out = subprocess.run(ml, check=True, capture_output=True, env=env, text=True)
        assert "nothing changed" in out.stderr, out.stderr  # what was measured is the no-op
    finally:
        subprocess.run([str(MESHLOCAL), "-C", str(ws), "down"], capture_output=True, check=False)
        subprocess.run(
            [COMPOSE, "-p", project, "-f", str(compose), "down"], capture_output=True, check=False
        )
        shutil.rmtree(tmp, ignore_errors=True)
    for name, values in times.items():
        print(
            f"{name:15} median {statistics.median(values):.3f} s "
            f"(min {min(values):.3f}, max {max(values):.3f}, {len(values)} rounds)"
        )
    ratio = statistics.median(times["meshlocal"]) / statistics.median(times["docker-compose"])
    print(f"ratio meshlocal/docker-compose (medians): {ratio:.2f}x")


if __name__ == "__main__":
    main()
