"""Pure bookkeeping: samples and Docker snapshots -> per-fault figures (JSON-ready).

Kept apart from the Docker and socket code so it is unit-tested on its own
(test_figures.py).
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .load import Sample, Snapshot


@dataclass(frozen=True)
class Phase:
    name: str
    start: float  # the phase's load starts counting here
    fault_at: float | None  # when the fault was injected (None: baseline)
    end: float
    note: str = ""
    # When the retry window starts: the fault by default; for a data-plane
    # fault, the moment the mesh answered again (it cannot serve while down).
    recovered_at: float | None = None


class Liveness:
    """Which replica addresses Docker had running at a given moment."""

    def __init__(self, snapshots: Sequence[Snapshot]) -> None:
        self._snaps = sorted(snapshots, key=lambda s: s.at)
        self._times = [s.at for s in self._snaps]
        self._ever: list[frozenset[str]] = []
        seen: set[str] = set()
        for s in self._snaps:
            seen |= s.addresses
            self._ever.append(frozenset(seen))

    def dead(self, at: float) -> frozenset[str]:
        """Addresses once running and not running in the latest snapshot before `at`."""
        i = bisect.bisect_right(self._times, at) - 1
        if i < 0:
            return frozenset()
        return self._ever[i] - self._snaps[i].addresses


def _recovery(samples: Sequence[Sample], fault_at: float) -> float | None:
    """Seconds from the fault to the first success after the last failure (0: none failed)."""
    after = [s for s in samples if s.start >= fault_at]
    failed = [s for s in after if not s.ok]
    if not failed:
        return 0.0
    last_fail = max(s.start for s in failed)
    ok_after = [s.start for s in after if s.ok and s.start > last_fail]
    return round(min(ok_after) - fault_at, 2) if ok_after else None


def summarize(
    phases: Sequence[Phase],
    samples: Sequence[Sample],
    snapshots: Sequence[Snapshot],
    window: float,
) -> list[dict[str, Any]]:
    """One record per phase: requests, failures, failures after the retry window, stale DNS."""
    live = Liveness(snapshots)
    out = []
    for ph in phases:
        # By when it finished: a request cut by the next phase's fault (sent at
        # the very end of this one) is that fault's failure, not this phase's.
        mine = [s for s in samples if ph.start <= s.end < ph.end]
        http = [s for s in mine if s.kind == "http"]
        dns = [s for s in mine if s.kind == "dns"]
        origin = ph.recovered_at or (ph.fault_at if ph.fault_at is not None else ph.start)
        settled = origin + window
        stale = [s for s in dns if set(s.answers) & live.dead(s.start)]
        record: dict[str, Any] = {
            "phase": ph.name,
            "note": ph.note,
            "seconds": round(ph.end - ph.start, 1),
            "window_starts_after_fault_seconds": round(origin - (ph.fault_at or ph.start), 1),
            "http_requests": len(http),
            "http_failed": sum(not s.ok for s in http),
            "http_failed_after_window": sum(not s.ok and s.start >= settled for s in http),
            "http_failures_by_kind": dict(collections.Counter(s.detail for s in http if not s.ok)),
            "dns_queries": len(dns),
            "dns_failed": sum(not s.ok for s in dns),
            "dns_failed_after_window": sum(not s.ok and s.start >= settled for s in dns),
            "dns_answers_naming_dead_replicas": len(stale),
            "dns_answers_naming_dead_replicas_after_window": sum(s.start >= settled for s in stale),
            "replicas_answering": dict(collections.Counter(s.replica for s in http if s.ok)),
        }
        if ph.fault_at is not None:
            record["http_recovery_seconds"] = _recovery(http, ph.fault_at)
            record["dns_recovery_seconds"] = _recovery(dns, ph.fault_at)
        out.append(record)
    return out


def totals(samples: Sequence[Sample], seconds: float) -> dict[str, Any]:
    http = [s for s in samples if s.kind == "http"]
    dns = [s for s in samples if s.kind == "dns"]
    ok_ms = sorted((s.end - s.start) * 1000 for s in http if s.ok)

    def pct(p: float) -> float | None:
        return round(ok_ms[min(len(ok_ms) - 1, int(p * len(ok_ms)))], 1) if ok_ms else None

    return {
        "load_seconds": round(seconds, 1),
        "http_requests": len(http),
        "http_failed": sum(not s.ok for s in http),
        "http_rps_achieved": round(len(http) / seconds, 1) if seconds else 0.0,
        "http_ok_latency_ms_p50": pct(0.50),
        "http_ok_latency_ms_p99": pct(0.99),
        "dns_queries": len(dns),
        "dns_failed": sum(not s.ok for s in dns),
        "dns_qps_achieved": round(len(dns) / seconds, 1) if seconds else 0.0,
    }


def results_dir() -> Path | None:
    """Where the suite writes its JSON: $MESHLOCAL_RELIABILITY_OUT, else nowhere."""
    raw = os.environ.get("MESHLOCAL_RELIABILITY_OUT")
    return Path(raw) if raw else None


def write_quiet(name: str, data: dict[str, Any], fallback: Path) -> Path:
    """`write` without echoing the data (raw samples run to thousands of lines)."""
    folder = results_dir() or fallback
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data, sort_keys=True) + "\n")
    return path


def write(name: str, data: dict[str, Any], fallback: Path) -> Path:
    """Write `<name>.json` to the results directory (or `fallback`) and return its path."""
    folder = results_dir() or fallback
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"\nreliability figures: {path}\n{json.dumps(data, indent=2, sort_keys=True)}")
    return path


# -- raw samples: what the soak table is computed from, kept so it can be recomputed --


def raw(
    phases: Sequence[Phase],
    samples: Sequence[Sample],
    snapshots: Sequence[Snapshot],
    window: float,
) -> dict[str, Any]:
    """Everything `summarize` reads, as JSON."""
    return {
        "window": window,
        "phases": [dataclasses.asdict(p) for p in phases],
        "samples": [dataclasses.asdict(s) for s in samples],
        "snapshots": [{"at": s.at, "addresses": sorted(s.addresses)} for s in snapshots],
    }


def summarize_raw(data: dict[str, Any]) -> list[dict[str, Any]]:
    """`summarize` again, from what `raw` stored."""
    return summarize(
        [Phase(**p) for p in data["phases"]],
        [Sample(**{**s, "answers": tuple(s["answers"])}) for s in data["samples"]],
        [Snapshot(s["at"], frozenset(s["addresses"])) for s in data["snapshots"]],
        float(data["window"]),
    )


def main(argv: Sequence[str]) -> int:
    """`python -m tests.reliability.figures DIR`: soak.json's phases again, from soak-raw.json."""
    folder = Path(argv[0]) if argv else Path("bench/reliability/results")
    soak_path, raw_path = folder / "soak.json", folder / "soak-raw.json"
    soak = json.loads(soak_path.read_text())
    phases = summarize_raw(json.loads(raw_path.read_text()))
    same = phases == soak["phases"]
    soak["phases"] = phases
    soak_path.write_text(json.dumps(soak, indent=2, sort_keys=True) + "\n")
    verdict = "unchanged" if same else "changed"
    print(f"{soak_path}: phases recomputed from {raw_path.name} ({verdict})")
    return 0


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
