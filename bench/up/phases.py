"""Where `up -d`'s time goes, phase by phase, for the kudos example (one in-process run).

.venv/bin/python bench/up/phases.py
"""

from __future__ import annotations

import time
from pathlib import Path

from meshlocal.deployment import Deployment
from meshlocal.errors import MeshlocalError

KUDOS = Path(__file__).resolve().parents[2] / "compose-examples" / "kudos"


def main() -> None:
    dep = Deployment(KUDOS)
    dep.down(images=False)
    t0 = time.perf_counter()

    def mark(what: str) -> None:
        print(f"{time.perf_counter() - t0:6.2f} s  {what}", flush=True)

    built = dep.build()
    mark("cached image builds")
    desired = dep.desired(built)
    net = dep.network()
    mark("desired state + network")
    cfg = dep.agent_config(desired, "container", net)
    dep.start_dataplane_container(cfg, net, public_port=0, progress=lambda _: None)
    mark("data-plane container started")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            dep.state()
            break
        except MeshlocalError:
            time.sleep(0.05)
    mark("agent's admin API answers")
    dep.wait_ready(120)
    mark("all replicas ready")
    dep.down(images=False)
    mark("down")
    dep.close()


if __name__ == "__main__":
    main()
