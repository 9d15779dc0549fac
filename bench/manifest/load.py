"""How long loading and validating a workspace takes (once per `meshlocal` command).

Usage: .venv/bin/python bench/manifest/load.py [WORKSPACE] [ENV] [ROUNDS]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from meshlocal.manifest import check

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    workspace = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests/fixtures/workspaces/realworld"
    )
    env = sys.argv[2] if len(sys.argv) > 2 else "prod"
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 200
    environ = {"TAG": "bench", "MESHLOCAL_SECRET_DB_HOST": "db"}
    check(workspace, env, environ)  # warm imports and caches
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        report = check(workspace, env, environ)
        samples.append(time.perf_counter() - start)
    assert report.ok, [e.render() for e in report.errors]
    samples.sort()
    print(
        f"{workspace.name}/{env}: {len(report.spec.services)} services, {rounds} rounds: "
        f"median {statistics.median(samples) * 1e3:.2f} ms, "
        f"p95 {samples[int(rounds * 0.95) - 1] * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
