"""The soak with faults (tests/reliability/test_soak.py), before and after the split, one run.

    git worktree add /tmp/ml-before 1e56b8d
    .venv/bin/python bench/reliability/split_soak.py --before /tmp/ml-before --rounds 2

Each round runs each version's own soak test (its code and its test), alternating
which goes first, and keeps every phase's failures after the retry window and its
recovery times. JSON per run in bench/reliability/results/split/<label>-<n>/soak.json;
the table on stdout is what docs/reliability.md shows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "bench" / "reliability" / "results" / "split"
KEYS = (
    "http_failed",
    "http_failed_after_window",
    "dns_failed",
    "dns_failed_after_window",
    "http_recovery_seconds",
    "dns_recovery_seconds",
)


def soak(tree: Path, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "MESHLOCAL_RELIABILITY_OUT": str(out)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/reliability/test_soak.py",
        ],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    (out / "pytest.log").write_text(proc.stdout + proc.stderr)
    doc: dict[str, Any] = json.loads((out / "soak.json").read_text())
    doc["passed"] = proc.returncode == 0
    return doc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": ROOT}
    rows: list[tuple[str, int, dict[str, Any]]] = []
    for n in range(args.rounds):
        for label in ("before", "after") if n % 2 == 0 else ("after", "before"):
            doc = soak(trees[label], OUT / f"{label}-{n}")
            rows.append((label, n, doc))
            print(label, n, "passed" if doc["passed"] else "FAILED", flush=True)
    print("| run | phase | " + " | ".join(KEYS) + " |")
    print("|---|---|" + "---|" * len(KEYS))
    for label, n, doc in sorted(rows, key=lambda r: (r[0] != "before", r[1])):
        for phase in doc["phases"]:
            if phase["phase"] in ("dataplane-restart", "dataplane-crash", "kill"):
                cells = " | ".join(str(phase.get(k, "")) for k in KEYS)
                print(f"| {label} {n} | {phase['phase']} | {cells} |")
        total = doc["totals"]
        print(f"| {label} {n} | totals | " + " | ".join(str(total.get(k, "")) for k in KEYS) + " |")


if __name__ == "__main__":
    main()
