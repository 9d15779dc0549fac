"""The bookkeeping of figures.py, on hand-made samples (pure: no Docker)."""

from __future__ import annotations

import json
from pathlib import Path

from .figures import Liveness, Phase, main, raw, summarize, summarize_raw
from .load import Sample, Snapshot


def _dns(at: float, *answers: str, ok: bool = True) -> Sample:
    return Sample("dns", at, at + 0.01, ok, "NOERROR" if ok else "Timeout", None, answers)


def _http(at: float, ok: bool, detail: str = "200", replica: str | None = "api-1") -> Sample:
    return Sample("http", at, at + 0.01, ok, detail, replica if ok else None)


def test_an_address_is_dead_once_docker_stops_listing_it_and_alive_again_when_reused() -> None:
    snaps = [
        Snapshot(0.0, frozenset({"a", "b"})),
        Snapshot(1.0, frozenset({"a"})),
        Snapshot(2.0, frozenset({"a", "b"})),
    ]
    live = Liveness(snaps)
    assert live.dead(-1.0) == frozenset()
    assert live.dead(0.5) == frozenset()
    assert live.dead(1.5) == {"b"}
    assert live.dead(2.5) == frozenset()


def test_failures_and_stale_answers_are_split_at_the_retry_window() -> None:
    snaps = [Snapshot(0.0, frozenset({"a", "b"})), Snapshot(1.0, frozenset({"a"}))]
    samples = [
        _http(0.5, True),
        _http(1.5, False, "502"),
        _http(4.0, False, "ConnectionRefusedError"),
        _http(5.0, True),
        _dns(1.2, "a", "b"),  # stale, inside the window
        _dns(3.5, "a", "b"),  # stale, after it
        _dns(3.6, "a"),
    ]
    [rec] = summarize([Phase("kill", 0.0, 1.0, 6.0)], samples, snaps, window=2.0)
    assert rec["http_requests"] == 4 and rec["http_failed"] == 2
    assert rec["http_failed_after_window"] == 1
    assert rec["http_failures_by_kind"] == {"502": 1, "ConnectionRefusedError": 1}
    assert rec["dns_answers_naming_dead_replicas"] == 2
    assert rec["dns_answers_naming_dead_replicas_after_window"] == 1
    assert rec["http_recovery_seconds"] == 4.0


def test_a_data_plane_fault_opens_the_window_at_recovery() -> None:
    samples = [_http(1.0 + i, False, "ConnectionRefusedError") for i in range(5)]
    samples.append(_http(7.0, True))
    [rec] = summarize([Phase("restart", 0.0, 1.0, 9.0, "", 6.5)], samples, [], window=1.0)
    assert rec["http_failed"] == 5 and rec["http_failed_after_window"] == 0
    assert rec["window_starts_after_fault_seconds"] == 5.5


def test_a_request_cut_by_the_next_fault_counts_against_that_fault() -> None:
    restart = Phase("restart", 0.0, 1.0, 10.0, recovered_at=2.0)
    crash = Phase("crash", 10.0, 10.2, 20.0, recovered_at=11.0)
    cut = Sample("http", 9.99, 10.3, False, "RemoteDisconnected", None)  # sent late, killed
    samples = [_http(8.0, True), cut, _http(12.0, True)]
    by_name = {r["phase"]: r for r in summarize([restart, crash], samples, [], window=3.0)}
    assert by_name["restart"]["http_failed"] == 0
    assert by_name["crash"]["http_failed"] == 1
    assert by_name["crash"]["http_failed_after_window"] == 0


def test_the_table_is_recomputed_from_the_stored_raw_samples(tmp_path: Path) -> None:
    phases = [Phase("baseline", 0.0, None, 5.0), Phase("kill", 5.0, 6.0, 12.0, "docker kill")]
    samples = [_http(1.0, True), _http(6.1, False, "503"), _dns(7.0, "b"), _http(11.0, True)]
    snaps = [Snapshot(0.0, frozenset({"a", "b"})), Snapshot(6.5, frozenset({"a"}))]
    data = json.loads(json.dumps(raw(phases, samples, snaps, 2.0)))  # through JSON, as stored
    assert summarize_raw(data) == summarize(phases, samples, snaps, 2.0)
    # The command rewrites soak.json's phases from soak-raw.json.
    (tmp_path / "soak-raw.json").write_text(json.dumps(data))
    (tmp_path / "soak.json").write_text(json.dumps({"phases": [], "totals": {}}))
    assert main([str(tmp_path)]) == 0
    stored = json.loads((tmp_path / "soak.json").read_text())
    assert stored["phases"] == summarize(phases, samples, snaps, 2.0)
    assert stored["phases"][1]["http_failed"] == 1
    assert stored["phases"][1]["dns_answers_naming_dead_replicas"] == 1
