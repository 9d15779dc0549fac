"""A fake data-plane admin server for developing the mesh page (meshlocal/dashboard/static).

    .venv/bin/python bench/dashboard_fake.py [--port 8765] [--services 4] [--replicas 8]
        [--seconds 1800]

Serves the page's files and a changing, made-up topology exactly at the URLs of the
page's contract: GET /, GET /ui/<file>, GET /v1/topology, GET /v1/events (SSE),
GET /v1/logs/<container_id>?tail=N. Nothing here talks to Docker or the real data plane.

Dev-only extras: GET /fake/drop closes every event stream (the page reconnects with
Last-Event-ID: replay "since"); GET /fake/restart also starts a new epoch (replay "full").
It listens on 127.0.0.1 only and exits after --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import time
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).resolve().parent.parent / "meshlocal" / "dashboard" / "static"

NAMES = [
    "front-end",
    "api",
    "auth",
    "users",
    "orders",
    "payments",
    "inventory",
    "search",
    "catalog",
    "cart",
    "reviews",
    "notifications",
    "email",
    "billing",
    "shipping",
    "recommendations",
    "analytics",
    "gateway",
    "profile",
    "media",
    "reports",
    "scheduler",
    "ledger",
    "pricing",
    "tax",
    "fraud-detection",
    "sessions",
    "uploads",
    "thumbnails",
    "audit",
]
TIMELINE_KEEP = 200


class Fake:
    """The made-up environment; step() changes it a little, like a live data plane would."""

    def __init__(self, services: int, replicas: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.epoch = f"{self.rng.randrange(16**6):06x}"
        self.seq = 0
        self.timeline: list[dict] = []
        self.streams: set[asyncio.Queue] = set()
        self.controller_connected = True
        self.error: str | None = None
        self.services = self._services(max(1, min(services, len(NAMES))), max(1, replicas))
        self.edges = self._edges()
        self.faults = [
            {
                "id": "api-slow",
                "service": "api",
                "kind": "latency",
                "summary": "latency 200ms on api (50%)",
                "hits": 4,
                "seen": 10,
                "declared": True,
            }
        ]
        self.step_no = 0

    def _services(self, n: int, replicas: int) -> list[dict]:
        names = NAMES[:n]
        counts = [1] * n
        for _ in range(max(0, replicas - n)):
            counts[self.rng.randrange(n)] += 1
        out = []
        for i, (name, count) in enumerate(zip(names, counts, strict=False)):
            if i == 0:
                typ, proto = "Load Balanced Web Service", "http"
            elif name in ("notifications", "email", "analytics", "scheduler", "reports") or (
                i == 3 and n <= 4
            ):
                typ, proto = "Worker Service", None
            else:
                typ, proto = (
                    "Backend Service",
                    self.rng.choice(["tcp", "http", "http2", "grpc"]) if i > 1 else "http",
                )
            port = 8080 if proto != "grpc" else 50051
            out.append(
                {
                    "name": name,
                    "type": typ,
                    "desired": count,
                    "ready": True,
                    "port": port,
                    "discovery_name": f"{name}.test.kudos.local"
                    if typ != "Worker Service"
                    else None,
                    "connect": None
                    if proto is None
                    else {
                        "name": name,
                        "url": f"http://{name}:{port}",
                        "vip": f"169.254.171.{i + 2}",
                        "port": port,
                        "protocol": proto,
                    },
                    "connect_client": True,
                    "replicas": [self._replica(name, i, k + 1, port) for k in range(count)],
                    "restarting": [],
                    "not_started": 0,
                    "faults": 1 if name == "api" else 0,
                }
            )
        return out

    def _replica(self, service: str, si: int, index: int, port: int) -> dict:
        return {
            "name": f"{service}-{index}",
            "index": index,
            "container_id": f"{self.rng.randrange(16**12):012x}",
            "address": f"172.20.{si + 1}.{index + 9}",
            "port": port,
            "health": "healthy",
            "in_rotation": True,
            "draining": False,
            "ejected_by": [],
        }

    def _edges(self) -> dict[tuple[str, str], dict]:
        svcs = self.services
        servers = [s["name"] for s in svcs if s["connect"]]
        pairs: list[tuple[str, str]] = [("@public", svcs[0]["name"])]
        if len(svcs) <= 4:
            pairs += [(svcs[0]["name"], "api")] if "api" in servers else []
            pairs += [("api", n) for n in servers[2:3]]
            pairs += [(s["name"], "api") for s in svcs if s["type"] == "Worker Service"]
            pairs += [("@outside", "api")]
        else:
            # layers of ~5 servers; each one is called by 1-2 services of the layer before it
            layers = [[svcs[0]["name"]]] + [servers[i : i + 5] for i in range(1, len(servers), 5)]
            for prev, layer in itertools.pairwise(layers):
                for name in layer:
                    for caller in self.rng.sample(prev, min(len(prev), self.rng.choice([1, 1, 2]))):
                        pairs.append((caller, name))
            workers = [s["name"] for s in svcs if s["type"] == "Worker Service"]
            for w in workers[:-1]:  # the last worker stays without traffic (isolated node)
                pairs.append((w, self.rng.choice(servers[1:] or servers)))
            if len(layers) > 3:  # one edge that skips layers, one back edge (a cycle)
                pairs.append((layers[1][0], layers[3][-1]))
                pairs.append((layers[1][0], layers[2][0]))
                pairs.append((layers[2][0], layers[1][0]))
            pairs.append(("@outside", servers[1] if len(servers) > 1 else servers[0]))
            pairs.append((servers[-2], servers[-2]))  # a service calling itself through its SC name
            # a service that is only ever called by nobody: isolated server
            if len(servers) > 6:
                pairs = [p for p in pairs if p[1] != servers[-1]]
        proto = {s["name"]: (s["connect"] or {}).get("protocol", "http") for s in svcs}
        edges = {}
        for a, b in dict.fromkeys(pairs):
            p = "http" if a == "@public" else proto[b]
            edges[(a, b)] = {
                "from": a,
                "to": b,
                "protocol": p,
                "unit": "connections" if p == "tcp" else "requests",
                "rate": round(self.rng.uniform(0.5, 40), 1),
                "error_rate": 0.0,
                "p50": self.rng.uniform(1, 20),
            }
        return edges

    def snapshot(self) -> dict:
        edges = []
        for e in self.edges.values():
            if e.get("hidden"):
                continue  # traffic stopped longer than the window: not in the snapshot at all
            rate = e["rate"]
            count = int(rate * 60)
            errors = int(count * e["error_rate"])
            p50 = None if count == 0 else round(e["p50"], 1)
            edges.append(
                {
                    "from": e["from"],
                    "to": e["to"],
                    "protocol": e["protocol"],
                    "unit": e["unit"],
                    "count": count,
                    "rate": rate,
                    "errors": errors,
                    "error_rate": round(errors / count, 4) if count else 0.0,
                    "p50_ms": p50,
                    "p99_ms": None if p50 is None else round(p50 * 4.7, 1),
                    "latency": "first byte" if e["unit"] == "connections" else "response",
                }
            )
        used = {e["from"] for e in edges}
        nodes = [{"id": s["name"], "kind": "service", "label": s["name"]} for s in self.services]
        if "@public" in used:
            nodes.append({"id": "@public", "kind": "public", "label": "public endpoint"})
        if "@outside" in used:
            nodes.append({"id": "@outside", "kind": "outside", "label": "outside the mesh"})
        return {
            "project": "kudos-abc123",
            "app": "kudos",
            "env": "test",
            "mode": "container",
            "generated": time.time(),
            "epoch": self.epoch,
            "controller_connected": self.controller_connected,
            "ready": all(s["ready"] for s in self.services),
            "error": self.error,
            "window_s": 60,
            "dns": {"address": "172.20.0.2", "port": 53},
            "public_endpoint": "http://127.0.0.1:8080",
            "notes": [
                "Service Discovery calls (api.test.kudos.local:8080) go straight to the replicas: "
                "the proxy can't see them, so they are not drawn."
            ],
            "nodes": nodes,
            "services": self.services,
            "edges": edges,
            "faults": self.faults,
        }

    def event(self, kind: str, service: str | None, replica: str | None, text: str) -> None:
        self.seq += 1
        ev = {
            "seq": self.seq,
            "time": time.time(),
            "kind": kind,
            "service": service,
            "replica": replica,
            "text": text,
        }
        self.timeline = ([*self.timeline, ev])[-TIMELINE_KEEP:]
        for q in self.streams:
            q.put_nowait(("timeline", ev))

    def step(self) -> None:
        """One second of made-up life: rates wander, sometimes a replica changes state."""
        self.step_no += 1
        rng = self.rng
        for e in self.edges.values():
            if e["rate"] > 0:
                e["rate"] = round(max(0.1, e["rate"] * rng.uniform(0.85, 1.15)), 1)
            e["error_rate"] = rng.choice([0.0, 0.0, 0.0, 0.004, 0.02, 0.08]) if e["rate"] else 0.0
            e["p50"] = max(0.3, e["p50"] * rng.uniform(0.9, 1.1))
        if self.step_no % 20 == 10 and self.edges:  # traffic stops on an edge, then restarts
            e = rng.choice(list(self.edges.values()))
            if e["rate"] == 0 or e.get("hidden"):
                e["rate"], e["hidden"] = 5.0, False
            elif rng.random() < 0.5:
                e["rate"] = 0
            else:
                e["hidden"] = True
        if self.step_no % 4 == 0:
            self._replica_change()
        for s in self.services:
            for r in s["restarting"]:
                r["left"] -= 1
                r["status"] = f"restarting in {max(r['left'], 0)}.0 s (exit 1)"
            done = [r for r in s["restarting"] if r["left"] <= 0]
            s["restarting"] = [r for r in s["restarting"] if r["left"] > 0]
            for r in done:
                rep = self._replica(s["name"], self.services.index(s), r["index"], s["port"])
                rep["health"] = "starting"
                rep["in_rotation"] = False
                s["replicas"].append(rep)
                s["replicas"].sort(key=lambda x: x["index"])
                self.event(
                    "added", s["name"], rep["name"], f"{rep['name']} started ({rep['address']})"
                )
            s["ready"] = sum(r["in_rotation"] for r in s["replicas"]) >= 1
        for f in self.faults:
            f["seen"] += rng.randrange(0, 10)
            f["hits"] = min(f["seen"], f["hits"] + rng.randrange(0, 5))
        if self.step_no % 30 == 15:
            self.controller_connected = not self.controller_connected
            self.event(
                "controller",
                None,
                None,
                "controller " + ("connected" if self.controller_connected else "disconnected"),
            )
        if self.step_no % 45 == 30:
            self.error = (
                None
                if self.error
                else "apply failed: service 'api': image 'api:latest' not found\n  (docker pull)"
            )

    def _replica_change(self) -> None:
        rng = self.rng
        s = rng.choice(self.services)
        for r in s["replicas"]:
            if r["health"] == "starting":
                r["health"], r["in_rotation"] = "healthy", True
                self.event("health", s["name"], r["name"], f"{r['name']} is healthy: in rotation")
                return
        if not s["replicas"]:
            return
        r = rng.choice(s["replicas"])
        what = rng.choice(["unhealthy", "drain", "eject", "die", "recover"])
        if what == "unhealthy":
            r["health"], r["in_rotation"] = "unhealthy", False
            self.event(
                "health", s["name"], r["name"], f"{r['name']} failed its health check (unhealthy)"
            )
        elif what == "drain":
            r["draining"], r["in_rotation"] = True, False
            self.event("draining", s["name"], r["name"], f"{r['name']} is draining")
        elif what == "eject":
            client = self.services[0]["replicas"][0]["name"]
            r["ejected_by"] = [client]
            self.event(
                "ejected",
                s["name"],
                r["name"],
                f"{r['name']} ejected by {client} (5 consecutive 5xx)",
            )
        elif what == "die" and len(s["replicas"]) > 1:
            s["replicas"].remove(r)
            s["restarting"].append(
                {
                    "index": r["index"],
                    "exit_code": 1,
                    "left": 3,
                    "status": "restarting in 3.0 s (exit 1)",
                }
            )
            self.event("died", s["name"], r["name"], f"{r['name']} exited (code 1); restarting")
        else:
            r.update(health="healthy", in_rotation=True, draining=False, ejected_by=[])
            self.event("health", s["name"], r["name"], f"{r['name']} is healthy again")


def sse(event: str, data: object, id_: str | None = None) -> bytes:
    head = f"id: {id_}\n" if id_ else ""
    return (head + f"event: {event}\ndata: {json.dumps(data)}\n\n").encode()


def app(fake: Fake, deadline: float) -> web.Application:
    async def index(_req: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def ui(req: web.Request) -> web.StreamResponse:
        name = req.match_info["name"]
        path = (STATIC / name).resolve()
        if path.parent != STATIC or not path.is_file():
            raise web.HTTPNotFound()
        return web.FileResponse(path)

    async def topology(_req: web.Request) -> web.Response:
        return web.json_response(fake.snapshot())

    async def logs(req: web.Request) -> web.Response:
        cid = req.match_info["cid"]
        tail = min(int(req.query.get("tail", "50")), 500)
        for s in fake.services:
            for r in s["replicas"]:
                if r["container_id"] == cid:
                    await asyncio.sleep(0.3)
                    lines = [
                        f"2024-12-04T22:{i // 60 % 60:02d}:{i % 60:02d}Z "
                        f"{r['name']} GET /health 200 "
                        f"({fake.rng.randrange(1, 9)} ms)"
                        for i in range(fake.step_no, fake.step_no + tail - 2)
                    ]
                    lines += [
                        "<script>alert('logs are untrusted')</script> & <b>not bold</b>",
                        "token=[redacted] connecting to db ...",
                    ]
                    return web.json_response({"lines": lines[-tail:], "error": None})
        return web.json_response({"error": f"no container {cid!r}"}, status=404)

    async def events(req: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(req)
        q: asyncio.Queue = asyncio.Queue()
        fake.streams.add(q)
        try:
            last = req.headers.get("Last-Event-ID", "")
            epoch, _, seq = last.partition("-")
            oldest = fake.timeline[0]["seq"] if fake.timeline else fake.seq + 1
            since = epoch == fake.epoch and seq.isdigit() and int(seq) >= oldest - 1
            after = int(seq) if since else 0
            await resp.write(b"retry: 1000\n\n")
            await resp.write(
                sse("hello", {"epoch": fake.epoch, "replay": "since" if since else "full"})
            )
            await resp.write(sse("topology", fake.snapshot()))
            for ev in fake.timeline:
                if ev["seq"] > after:
                    await resp.write(sse("timeline", ev, f"{fake.epoch}-{ev['seq']}"))
            while time.monotonic() < deadline:
                try:
                    kind, data = await asyncio.wait_for(q.get(), timeout=1.0)
                except TimeoutError:
                    kind, data = "topology", fake.snapshot()
                if kind == "close":
                    break
                if kind == "timeline":
                    await resp.write(sse("timeline", data, f"{fake.epoch}-{data['seq']}"))
                else:
                    await resp.write(sse("topology", data))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            fake.streams.discard(q)
        return resp

    async def drop(_req: web.Request) -> web.Response:
        for q in list(fake.streams):
            q.put_nowait(("close", None))
        fake.streams.clear()  # nothing more goes to the closing streams
        return web.Response(text="dropped\n")

    async def restart(req: web.Request) -> web.Response:
        resp = await drop(req)
        fake.epoch = f"{fake.rng.randrange(16**6):06x}"
        fake.seq, fake.timeline = 0, []
        fake.event("controller", None, None, "data plane restarted")
        return resp

    a = web.Application()
    a.router.add_get("/", index)
    a.router.add_get("/ui/{name}", ui)
    a.router.add_get("/v1/topology", topology)
    a.router.add_get("/v1/events", events)
    a.router.add_get("/v1/logs/{cid}", logs)
    a.router.add_get("/fake/drop", drop)
    a.router.add_get("/fake/restart", restart)
    return a


async def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--services", type=int, default=4)
    ap.add_argument("--replicas", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=1800, help="exit after this long")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    fake = Fake(args.services, args.replicas, args.seed)
    deadline = time.monotonic() + args.seconds
    for s in fake.services[:3]:  # a few timeline events to start with
        fake.event(
            "added", s["name"], s["replicas"][0]["name"], f"{s['replicas'][0]['name']} started"
        )
    runner = web.AppRunner(app(fake, deadline))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", args.port).start()
    print(f"http://127.0.0.1:{args.port}/  ({len(fake.services)} services)", flush=True)
    try:
        while time.monotonic() < deadline:
            await asyncio.sleep(1.0)
            fake.step()
    finally:
        for q in list(fake.streams):
            q.put_nowait(("close", None))
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main())
