"""What the side-by-side proxy benchmarks share: rounds of wrk over every
target in rotated order, the results table, and stopping what they started."""

from __future__ import annotations

import signal
import statistics
import subprocess
from pathlib import Path

from modes import run_wrk

Results = dict[str, list[dict[str, float]]]


def run_rounds(
    targets: dict[str, str], pids: dict[str, list[int]], rounds: int, duration: int
) -> Results:
    """A 1 s warm-up per target, then `rounds` rounds of every target back to
    back (`wrk -t1 -c50`), the order rotated every round and reversed every
    other one."""
    for name, addr in targets.items():
        run_wrk(f"http://{addr}/", 1, pids[name])
    results: Results = {n: [] for n in targets}
    names = list(targets)
    width = max(len(n) for n in names)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            res = run_wrk(f"http://{targets[name]}/", duration, pids[name])
            results[name].append(res)
            print(
                f"round {r + 1} {name:{width}s} {res['rps']:8.0f} req/s  "
                f"cpu {res['cpu_us']:5.1f} us/req  p50 {res['p50']:.2f} ms  "
                f"errors {res['errors']:.0f}",
                flush=True,
            )
    return results


def median(results: Results, name: str, key: str) -> float:
    return statistics.median(x[key] for x in results[name])


def target_table(results: Results) -> list[str]:
    lines = [
        "| target | req/s median | req/s per round | CPU µs/request | p50 ms | errors |",
        "|---|---|---|---|---|---|",
    ]
    for name in results:
        per = ", ".join(f"{x['rps']:.0f}" for x in results[name])
        errors = int(sum(x["errors"] for x in results[name]))
        lines.append(
            f"| {name} | {median(results, name, 'rps'):.0f} | {per} | "
            f"{median(results, name, 'cpu_us'):.1f} | {median(results, name, 'p50'):.2f} | "
            f"{errors} |"
        )
    return lines


def stop_all(procs: list[subprocess.Popen[bytes] | subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGQUIT if "nginx" in str(p.args) else signal.SIGTERM)
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()


def emit(lines: list[str], out: str) -> None:
    """Print the report and write it to `out` (`-`: print only)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if out != "-":
        Path(out).write_text(text)
