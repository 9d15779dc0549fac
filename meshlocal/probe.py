"""`meshlocal resolve NAME --from SVC`: ask the live DNS from inside a replica.

A short-lived probe container joins the replica's network namespace, so
its query leaves from the replica's address through the replica's own
resolver (Docker's embedded DNS, then the mesh DNS) and gets exactly the
answer the replica would. It works for any image, even FROM scratch.

Run as `python3 -m meshlocal.probe NAME [TYPE]` inside the probe; prints JSON.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import TYPE_CHECKING, Any

from dnslib import QTYPE, RCODE, DNSRecord

from meshlocal.errors import RuntimeFailure

if TYPE_CHECKING:
    from meshlocal.deployment import Deployment
    from meshlocal.runtime.engine import ContainerSpec, Engine


def _nameserver(resolv_conf: str = "/etc/resolv.conf") -> str:
    with open(resolv_conf) as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1]
    return "127.0.0.11"


def query(
    name: str, qtype: str = "A", server: str | None = None, timeout: float = 3.0
) -> dict[str, Any]:
    """One query the way a stub resolver asks it; the probe container's main."""
    server = server or _nameserver()
    request = DNSRecord.question(name, qtype)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(request.pack(), (server, 53))
        data, _ = sock.recvfrom(65535)
    reply = DNSRecord.parse(data)
    answers = [str(rr.rdata) for rr in reply.rr if QTYPE.get(rr.rtype) == qtype.upper()]
    return {
        "name": name,
        "type": qtype.upper(),
        "server": server,
        "rcode": RCODE.get(reply.header.rcode),
        "answers": answers,
    }


def resolve_from(dep: Deployment, name: str, service: str, qtype: str = "A") -> dict[str, Any]:
    from meshlocal.runtime import images
    from meshlocal.runtime import labels as L
    from meshlocal.runtime.engine import ContainerSpec

    engine = dep.engine
    replicas = [
        c
        for c in engine.list_containers(dep.project, dep.env, role=L.Role.REPLICA)
        if c.service == service and c.running
    ]
    if not replicas:
        raise RuntimeFailure(
            f"no running replica of {service} in {dep.env}",
            hint="`meshlocal ps` lists the services and their replicas",
        )
    target = sorted(replicas, key=lambda c: c.index or 0)[0]
    base = images.ensure_python_base(engine.client)
    image = images.ensure_dataplane_image(engine.client, base)
    spec = ContainerSpec(
        name=f"{target.name}-probe",
        image=image,
        labels={**L.base_labels(dep.project, dep.env, L.Role.PROBE)},
        entrypoint=["python3", "-m", "meshlocal.probe"],
        command=[name, qtype],
        network_mode=f"container:{target.id}",
    )
    code, output = _run_once(engine, spec, timeout=30.0)
    if code != 0:
        raise RuntimeFailure(f"the DNS probe in {target.name} failed: {output.strip()[-500:]}")
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    result["client"] = f"{service}-{target.index}"
    result["meaning"] = _meaning(dep, result["answers"]) if qtype == "A" else f"{qtype} records"
    return result


def _run_once(engine: Engine, spec: ContainerSpec, timeout: float) -> tuple[int, str]:
    """Run a container to completion and remove it: (exit code, output)."""
    cid = engine.create_container(spec)
    try:
        engine.start(cid)
        status = engine.api.wait(cid, timeout=timeout)
        output = bytes(engine.api.logs(cid, stdout=True, stderr=True)).decode(errors="replace")
        return int(status.get("StatusCode", -1)), output
    finally:
        engine.remove(cid)


def _meaning(dep: Deployment, answers: list[str]) -> str:
    if not answers:
        return "no records"
    try:
        state = dep.state()
    except Exception:
        return "records"
    for name, svc in state["services"].items():
        sc = svc.get("connect")
        if sc and answers == [sc["vip"]]:
            return f"service connect endpoint {sc['name']}:{sc['port']} of {name}, {sc['protocol']}"
    if answers == [state.get("address")]:
        return "the data plane's own address"
    owners = {
        r["address"]: r["name"] for svc in state["services"].values() for r in svc["replicas"]
    }
    names = [owners.get(a, "?") for a in answers]
    return "service discovery: " + " ".join(names)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python3 -m meshlocal.probe NAME [TYPE]", file=sys.stderr)
        return 2
    try:
        result = query(argv[0], argv[1] if len(argv) > 1 else "A")
    except OSError as exc:
        result = {"name": argv[0], "rcode": "TIMEOUT", "answers": [], "error": str(exc)}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
