"""Copilot's "Upgrading from Service Discovery", offline, in three steps.

Run it with `compose-examples/alias-migration/run.sh`. It copies this example
to a scratch workspace and, for each step, does what you would do by hand:

  1. both services use Service Discovery       (copilot/ as it is here)
  2. api turns on network.connect with alias   (steps/2-api-connect/)
     api.test.kudos.local, its Service Discovery name
  3. front-end turns on network.connect        (steps/3-front-end-connect/)

copy the step's manifests into the workspace, `meshlocal up -d` (which rolls
only the services whose manifest changed), then let front-end call
http://api.test.kudos.local/ and show who answered, by which route, what the
name resolves to from front-end, and the proxy's NewConnectionCount for api.
Copilot sets no AppProtocol, so api's endpoint is proxied as TCP: the proxy
counts connections (one per call here), not requests; its RequestCount stays 0.

The front-end's code and URL never change. Only the manifests do.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
URL = "http://api.test.kudos.local/"
NAME = "api.test.kudos.local"


@dataclass(frozen=True)
class Step:
    number: int
    title: str
    overlay: str | None  # directory under steps/ whose files replace the workspace's
    expect_route: str  # what front-end's calls to URL should go through


STEPS = (
    Step(1, "both services use Service Discovery", None, "direct"),
    Step(
        2,
        "api turns on network.connect with alias api.test.kudos.local "
        "(front-end has no Service Connect yet)",
        "2-api-connect",
        "direct",
    ),
    Step(
        3,
        "front-end turns on network.connect: the same URL now goes through Service Connect",
        "3-front-end-connect",
        "service-connect",
    ),
)


def say(line: str = "") -> None:
    print(line, flush=True)


class Demo:
    def __init__(self, workdir: Path, meshlocal: list[str], dataplane: str) -> None:
        self.workdir = workdir
        self.meshlocal = meshlocal
        self.dataplane = dataplane
        self.env = {**os.environ, "COLUMNS": "110", "NO_COLOR": "1"}

    def run(self, *args: str, show: bool = True, check: bool = True) -> str:
        """Run `meshlocal -C WORKDIR ARGS`, echoing the command like a person would type it."""
        if show:
            say(f"$ meshlocal {' '.join(args)}")
        proc = subprocess.run(
            [*self.meshlocal, "-C", str(self.workdir), *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=600,
        )
        if check and proc.returncode != 0:
            say(proc.stdout)
            say(proc.stderr)
            raise SystemExit(
                f"meshlocal {' '.join(args)} failed with exit status {proc.returncode}"
            )
        return proc.stdout

    def up(self) -> None:
        out = self.run("up", "-d", "--dataplane", self.dataplane)
        say(indent(out.rstrip()))

    def public_url(self) -> str:
        state = json.loads(self.run("ps", "--json", show=False))
        url = state.get("public_url")
        if not url:
            raise SystemExit("front-end has no public endpoint; `meshlocal ps` should show one")
        return str(url)

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.run("stats", "--json", show=False))
        return data

    def calls(self, public_url: str, n: int) -> list[dict[str, Any]]:
        """front-end's /call makes n calls to its one URL and reports each."""
        body = http_json(f"{public_url}/call?n={n}")
        calls: list[dict[str, Any]] = body["calls"]
        return calls


def http_json(url: str, timeout: float = 15.0) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        data: dict[str, Any] = json.loads(resp.read())
        return data


def indent(text: str, prefix: str = "    ") -> str:
    return "\n".join(prefix + line for line in text.splitlines())


def wait_answering(demo: Demo, public_url: str, timeout: float = 30.0) -> None:
    """Until front-end's call to api succeeds (a replica may still be starting its server)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            calls = demo.calls(public_url, 1)
            if all(c.get("ok") for c in calls):
                return
            last = calls
        except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
            last = exc
        time.sleep(0.3)
    raise SystemExit(f"front-end could not call api within {timeout:.0f}s: {last}")


def new_connections(stats: dict[str, Any], service: str) -> int:
    """The proxy's NewConnectionCount for `service`: it counts in every mode, and
    in TCP mode (no AppProtocol, what Copilot deploys) there is no RequestCount."""
    return int(stats.get(service, {}).get("NewConnectionCount", 0))


def changed_files(step: Step) -> list[Path]:
    if step.overlay is None:
        return []
    root = HERE / "steps" / step.overlay
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def apply(step: Step, workdir: Path) -> None:
    for rel in changed_files(step):
        src = HERE / "steps" / str(step.overlay) / rel
        dst = workdir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        say(f"  {rel} (from steps/{step.overlay}/):")
        network = src.read_text().split("\nnetwork:", 1)
        say(indent("network:" + network[1].rstrip() if len(network) == 2 else "(no network)"))


def run_step(demo: Demo, step: Step, calls: int) -> dict[str, Any]:
    say()
    say(f"=== Step {step.number}: {step.title}")
    if step.overlay is None:
        say("  copilot/api/manifest.yml and copilot/front-end/manifest.yml: no network.connect")
    apply(step, demo.workdir)
    demo.up()
    public_url = demo.public_url()

    resolve = demo.run("resolve", NAME, "--from", "front-end", "--json")
    resolved = json.loads(resolve)
    say(
        indent(
            f"{NAME} -> {' '.join(resolved['answers'])} ({resolved['meaning']}, "
            f"from {resolved['client']})"
        )
    )

    wait_answering(demo, public_url)
    before = new_connections(demo.stats(), "api")
    say(f"$ curl '{public_url}/call?n={calls}'    # front-end calls {URL} {calls} times")
    results = demo.calls(public_url, calls)
    for c in results:
        if c.get("ok"):
            how = f"{c['route']}, {c['mode']}" if c.get("mode") else str(c["route"])
            header = c.get("proxy_replica_header")
            header_note = f"; x-meshlocal-replica: {header}" if header else ""
            say(
                f"    {c['url']} -> answered by {c['replica']}, route: {how} "
                f"(dialled {c['dialled']}, {c['replica']} saw {c['peer']}{header_note})"
            )
        else:
            say(f"    {c['url']} -> FAILED: {c.get('status')} {c.get('error')}")
    after_stats = demo.stats()
    after = new_connections(after_stats, "api")
    say("$ meshlocal stats")
    say(indent(demo.run("stats", show=False).rstrip()))
    routes = sorted({str(c.get("route")) for c in results})
    say(
        f"  => step {step.number}: route {', '.join(routes)}; the proxy's NewConnectionCount "
        f"for api went {before} -> {after} (+{after - before})"
    )
    return {
        "step": step.number,
        "title": step.title,
        "expect_route": step.expect_route,
        "resolved": resolved,
        "calls": results,
        "api_new_connections_before": before,
        "api_new_connections_after": after,
        "api_stats_after": after_stats.get("api", {}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--calls", type=int, default=4, help="calls per step (default 4)")
    parser.add_argument(
        "--dataplane",
        choices=("container", "host"),
        default=os.environ.get("MESHLOCAL_DATAPLANE", "container"),
    )
    parser.add_argument("--keep", action="store_true", help="leave the mesh running at the end")
    parser.add_argument("--workdir", type=Path, help="scratch workspace (default: a temp dir)")
    parser.add_argument("--json", dest="json_out", type=Path, help="write every step's results")
    args = parser.parse_args(argv)

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="meshlocal-alias-migration-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for part in ("app", "copilot"):
        shutil.copytree(HERE / part, workdir / part, dirs_exist_ok=True)
    demo = Demo(workdir, [sys.executable, "-m", "meshlocal"], args.dataplane)
    say(f"Scratch workspace: {workdir} (a copy of {HERE})")
    say(f"front-end's code calls http://api.$COPILOT_SERVICE_DISCOVERY_ENDPOINT/ = {URL}")
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    try:
        for step in STEPS:
            result = run_step(demo, step, args.calls)
            results.append(result)
            bad = [c for c in result["calls"] if not c.get("ok") or c["route"] != step.expect_route]
            if bad:
                failed.append(f"step {step.number}: expected route {step.expect_route}, got {bad}")
    finally:
        if args.json_out:
            args.json_out.write_text(json.dumps({"workdir": str(workdir), "steps": results}))
        say()
        if args.keep:
            say(f"Left running. Explore with `meshlocal -C {workdir} ps`; remove it with")
            say(f"  meshlocal -C {workdir} down")
        else:
            demo.run("down")
            shutil.rmtree(workdir, ignore_errors=True)
    if failed:
        for line in failed:
            say(f"UNEXPECTED: {line}")
        return 1
    say("Done: same URL, no code change; step 3 goes through Service Connect.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
