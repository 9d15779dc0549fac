"""A replica's last log lines for the mesh page, with the workspace's secrets taken out.

The data plane has no engine: it asks the controller over the link
(`{"t": "logs", "id", "container_id", "tail"}`), which answers with
`{"t": "logs", "id", "lines", "error"}`. The controller reads only the
containers of its own mesh, and replaces every secret value it injected
(manifest `secrets`, a sidecar's too) before the lines leave it: a page
must never show one, even if the application prints it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from meshlocal.manifest.model import EnvironmentSpec

MAX_TAIL = 500
DEFAULT_TAIL = 50
REDACTED = "********"
# Shorter values are replaced only as whole words: a secret "on" must not
# blank out every "on" of the logs.
_SHORT = 4


def secret_values(spec: EnvironmentSpec) -> list[str]:
    """Every secret value, and each line of a multi-line one (a PEM key): logs
    are read line by line."""
    values: set[str] = set()
    for svc in spec.services:
        values.update(svc.secrets.values())
        for sc in svc.sidecars:
            values.update(sc.secrets.values())
    for value in list(values):
        if "\n" in value:
            values.update(
                line.strip() for line in value.splitlines() if len(line.strip()) >= _SHORT
            )
    return sorted((v for v in values if v), key=len, reverse=True)


def redactor(values: Iterable[str]) -> re.Pattern[str] | None:
    """One pattern for all: longest first, so a secret containing another goes whole."""
    parts = [
        re.escape(v) if len(v) >= _SHORT else rf"(?<!\w){re.escape(v)}(?!\w)"
        for v in sorted(set(values), key=len, reverse=True)
        if v
    ]
    return re.compile("|".join(parts)) if parts else None


def redact(lines: Iterable[str], pattern: re.Pattern[str] | None) -> list[str]:
    if pattern is None:
        return list(lines)
    return [pattern.sub(REDACTED, line) for line in lines]


def tail_of(value: object) -> int:
    """The number of lines asked for, within 1..MAX_TAIL."""
    try:
        n = int(str(value))
    except ValueError:
        return DEFAULT_TAIL
    return max(1, min(MAX_TAIL, n))
