"""Where `up -d`'s time goes, phase by phase, for the kudos example (one in-process run).

.venv/bin/python bench/up/phases.py [ROUNDS]

The phases of `Deployment.up`, timed from a `down` mesh with images built.
Since issue 15 the first replicas are created beside the data plane and
started once it has started (runtime/firststart.py), so "containers started"
includes them; "all replicas ready" waits for the controller to adopt them
and the data plane to admit them.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from meshlocal.deployment import Deployment
from meshlocal.errors import MeshlocalError

KUDOS = Path(__file__).resolve().parents[2] / "compose-examples" / "kudos"


def main() -> None:
    # A copy: its own project, so a mesh run from the repository is not touched.
    with tempfile.TemporaryDirectory(prefix="meshlocal-phases-") as tmp:
        root = Path(tmp) / "kudos"
        shutil.copytree(KUDOS, root, ignore=shutil.ignore_patterns("tests", "__pycache__"))
        Deployment(root).up(timeout=300)  # builds the images, untimed
        for _ in range(int(sys.argv[1]) if len(sys.argv) > 1 else 1):
            once(root)
            print("--", flush=True)
        dep = Deployment(root)
        dep.down(images=True)
        dep.close()


def once(root: Path) -> None:
    dep = Deployment(root)
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
    mark("data plane, controller and first replicas started")
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
