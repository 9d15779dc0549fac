"""The CLI starts light: `--help` and `ps` load neither the data plane nor its libraries.

Each run is a fresh interpreter, so what it imports is exactly what the
command needs; a module-level import of the data plane in any CLI module
(or in what they import) fails this.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / "compose-examples"

# The data plane and what only it (or the controller: asyncio) needs.
# meshlocal.proxy.settings is a plain
# dataclass (the proxy's configuration), shared by the CLI and the data plane.
HEAVY = (
    "aiohttp",
    "dnslib",
    "meshlocal.serving",
    "meshlocal.dns",
    "meshlocal.proxy",
    "asyncio",
    "boto3",  # only `publish` and provisioning (up) talk to the SNS/SQS emulator with it
    "botocore",
    "moto",
)
ALLOWED = ("meshlocal.proxy", "meshlocal.proxy.settings")

PROBE = """
import json, sys
from meshlocal.cli import main
try:
    main(sys.argv[1:])
finally:
    sys.stdout.flush()
    print("\\n@@" + json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def loaded(*args: str, cwd: Path) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    marker = proc.stderr.rfind("@@")
    assert marker >= 0, proc.stderr
    modules: list[str] = json.loads(proc.stderr[marker + 2 :])
    return modules


def heavy(modules: list[str]) -> list[str]:
    return [
        m
        for m in modules
        if m not in ALLOWED and any(m == h or m.startswith(h + ".") for h in HEAVY)
    ]


@pytest.mark.parametrize(
    ("args", "module"),
    [
        (["--help"], "meshlocal.cli.mesh"),
        (["up", "--help"], "meshlocal.cli.up"),
        (["ps"], "meshlocal.cli.mesh"),
        (["validate"], "meshlocal.cli.workspace"),
        (["fault", "ls", "--help"], "meshlocal.cli.fault"),
        # Refused for its shape: the check is pure (no mesh, no data plane).
        (["fault", "add", "api", "--latency", "-5ms"], "meshlocal.faultparse"),
    ],
)
def test_cli_commands_do_not_load_the_data_plane(args: list[str], module: str) -> None:
    modules = loaded(*args, cwd=EXAMPLES / "kudos")
    assert module in modules  # the probe ran the command
    assert heavy(modules) == []


def test_a_command_loads_only_its_own_module() -> None:
    # `meshlocal up` imports neither the other commands nor what only they need.
    modules = loaded("up", "--help", cwd=EXAMPLES / "kudos")
    assert "meshlocal.cli.mesh" not in modules
    assert "meshlocal.deployment" not in modules
    assert "docker" not in modules


def test_the_probe_sees_a_heavy_import() -> None:
    # The check itself can fail: the agent command's own module does load them.
    modules = loaded("--help", cwd=EXAMPLES / "kudos")
    assert heavy([*modules, "aiohttp.web", "meshlocal.proxy.app"]) == [
        "aiohttp.web",
        "meshlocal.proxy.app",
    ]
