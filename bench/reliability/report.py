"""Render the reliability suite's JSON into docs/reliability.md (between the figure markers).

    python bench/reliability/report.py bench/reliability/results docs/reliability.md

Every number it writes comes from the JSON files the suite wrote in that
run (soak.json, cleanup.json, hostile.json, exposure.json, run.json).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

BEGIN = "<!-- figures:begin (bench/reliability/report.py writes this part) -->"
END = "<!-- figures:end -->"


def _load(folder: Path, name: str) -> dict[str, Any]:
    path = folder / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _kinds(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) or "-"


def render(folder: Path) -> str:
    run = _load(folder, "run")
    soak = _load(folder, "soak")
    cleanup = _load(folder, "cleanup")
    hostile = _load(folder, "hostile")
    exposure = _load(folder, "exposure")
    out: list[str] = [BEGIN, ""]
    out += [
        f"Run: `{run.get('command', '?')}` on {run.get('date', '?')}, "
        f"load average before the run {run.get('loadavg', '?')} (2 cores, shared); "
        f"wall time of the whole suite **{run.get('wall_seconds', '?')} s** "
        f"({run.get('result', '?')}). Raw JSON: `{folder}/`.",
        "",
    ]
    if soak:
        cfg, tot = soak["config"], soak["totals"]
        late = sum(p["http_failed_after_window"] for p in soak["phases"])
        out += [
            "### Load held",
            "",
            f"Command: `{run.get('command', '?')}` (test_soak.py; "
            f"MESHLOCAL_SOAK_SECONDS={cfg['soak_seconds']:g}, "
            f"retry window {cfg['retry_window_seconds']:g} s).",
            "",
            f"- HTTP: {cfg['http']}, target {cfg['http_rps']:g} req/s from "
            f"{cfg['http_workers']} threads, new connection per request: "
            f"**{tot['http_requests']} requests in {tot['load_seconds']} s "
            f"({tot['http_rps_achieved']} req/s)**, {tot['http_failed']} failed in all, "
            f"{late} of them after a retry window; p50 {tot['http_ok_latency_ms_p50']} ms, "
            f"p99 {tot['http_ok_latency_ms_p99']} ms of the successful ones.",
            f"- DNS: {cfg['dns']}, target {cfg['dns_qps']:g} q/s: "
            f"**{tot['dns_queries']} queries ({tot['dns_qps_achieved']} q/s)**, "
            f"{tot['dns_failed']} failed (2 s timeouts while the data plane was down).",
            f"- Target: {cfg['target']}.",
            "",
            "### Faults",
            "",
            "| phase | fault | s | HTTP req | failed | failed after window | failures | "
            "DNS q | failed | answers naming dead replicas (after window) | recovery s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for p in soak["phases"]:
            rec = p.get("http_recovery_seconds")
            window = p.get("window_starts_after_fault_seconds", 0)
            after = f"{p['http_failed_after_window']}"
            if window:
                after += f" (window from recovery, +{window} s)"
            out.append(
                f"| {p['phase']} | {p['note'] or '-'} | {p['seconds']} | {p['http_requests']} | "
                f"{p['http_failed']} | {after} | {_kinds(p['http_failures_by_kind'])} | "
                f"{p['dns_queries']} | {p['dns_failed']} | "
                f"{p['dns_answers_naming_dead_replicas']} "
                f"({p['dns_answers_naming_dead_replicas_after_window']}) | "
                f"{'-' if rec is None and p['phase'] == 'baseline' else rec} |"
            )
        notes = soak.get("notes", {})
        out += [
            "",
            f"Data plane back (admin API ready) after: restart "
            f"{notes.get('dataplane-restart_admin_ready_seconds', '?')} s, crash "
            f"{notes.get('dataplane-crash_admin_ready_seconds', '?')} s; replicas replaced "
            f"by the data-plane faults: {notes.get('replicas_replaced_by_dataplane_faults', '?')} "
            "(adopted, not restarted). Replica addresses the monitor saw die "
            f"({notes.get('monitor_snapshots', '?')} snapshots): "
            f"{', '.join(notes.get('replica_addresses_seen_dead_by_the_monitor', [])) or 'none'}"
            ". Test time "
            f"{soak.get('test_seconds', '?')} s.",
            "",
        ]
    if cleanup:
        out += [
            "### Resources leaked",
            "",
            "Containers, networks (by the project's label) and images (by the project's tag "
            "`meshlocal/<project>-*`) after `meshlocal down`. Command: "
            f"`{run.get('command', '?')}` (test_cleanup.py).",
            "",
            "| scenario | what the test does | left before `down` (c/n/i) | "
            "leaked after `down` (c/n/i) |",
            "|---|---|---|---|",
        ]
        for name, r in sorted(cleanup["scenarios"].items()):
            b, a = r["left_before_down"], r["leaked_after_down"]
            out.append(
                f"| {name} | `{r['command']}` | {b['containers']}/{b['networks']}/{b['images']} | "
                f"**{a['containers']}/{a['networks']}/{a['images']}** |"
            )
        out.append("")
    if hostile:
        out += ["### Hostile input", ""]
        d = hostile.get("dns_fuzz")
        if d:
            out += [
                f"DNS ({d['target']}): **{d['udp_cases']} UDP cases** "
                f"({d['udp_corpus_cases']} from tests/dns/corpus.py, the rest generated: "
                f"{_kinds(d['udp_cases_by_kind'])}) and **{d['tcp_cases']} TCP cases**. "
                f"UDP replies {d['udp_replies']} (malformed: {d['udp_replies_malformed']}); "
                f"TCP replies {d['tcp_replies']}, closed without reply "
                f"{d['tcp_closed_without_reply']}; liveness checks passed "
                f"{d['liveness_checks_passed']}; data-plane restarts "
                f"{d['dataplane_restarts']}.",
                "",
            ]
        p = hostile.get("proxy_corpus")
        if p:
            out += [
                f"Proxy ({p['target']}): **{p['fixed_cases']} fixed smuggling/SSRF cases** and "
                f"**{p['generated_cases']} generated ones**. Connections reaching a canary "
                "outside the mesh table: "
                f"**{p['connections_reaching_the_canary_outside_the_mesh']}**; smuggled "
                f"requests seen by replicas: **{p['smuggled_requests_seen_by_replicas']}**. "
                f"Generated outcomes: {_kinds(p['generated_outcomes'])}.",
                "",
                "| fixed case | answer |",
                "|---|---|",
                *(f"| {k} | {v} |" for k, v in sorted(p["fixed_case_outcomes"].items())),
                "",
            ]
        m = hostile.get("malformed_manifests")
        if m:
            out += [
                f"Malformed manifests: **{m['cases']} generated cases** through "
                f"`meshlocal validate` (in process; {m['also_checked_through_the_executable']} "
                "also through the executable). Tracebacks: "
                f"**{m['tracebacks']}**; rejected without a clear error naming the file: "
                f"**{m['rejected_without_a_clear_error']}**.",
                "",
                "| kind | outcomes |",
                "|---|---|",
                *(f"| {k} | {_kinds(v)} |" for k, v in m["outcomes_by_kind"].items()),
                "",
                "Accepted cases (`validate` exited 0), up to two per kind, as the change "
                "made to the valid workspace:",
                "",
                *(f"- `{e}`" for e in m.get("accepted_examples", [])),
                "",
            ]
    if exposure:
        out += ["### Exposure", ""]
        pub = exposure.get("published")
        if pub:
            out.append(
                f"- Data plane publishes {json.dumps(pub['dataplane_published_ports'])}; host "
                f"sockets listening on them: {json.dumps(pub['host_sockets_listening_on_them'])}; "
                f"networks: {pub['dataplane_networks']}; replicas publishing ports: "
                f"{len(pub['replicas_publishing_ports'])}."
            )
        hm = exposure.get("host_mode")
        if hm:
            out.append(
                f"- Host mode: DNS and proxy bind {hm['dns_and_proxy_bind']} (the network "
                f"gateway {hm['network_gateway']}), admin {hm['admin_binds']}, public "
                f"endpoint {hm['public_binds']}."
            )
        adm = exposure.get("admin_from_a_replica")
        if adm:
            out.append(
                f"- Admin API from a replica ({adm['from']} -> {adm['target']}): "
                f"{_kinds(adm['answers'])}; Service Connect from that replica: "
                f"{adm['service_connect_from_the_replica']}; the host through the published "
                f"port: {_kinds(adm['host_via_published_port'])}."
            )
        out.append("")
    out.append(END)
    return "\n".join(out)


def main(argv: list[str]) -> int:
    folder, doc = Path(argv[1]), Path(argv[2])
    text = doc.read_text()
    begin, end = text.index(BEGIN), text.index(END) + len(END)
    doc.write_text(text[:begin] + render(folder) + text[end:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
