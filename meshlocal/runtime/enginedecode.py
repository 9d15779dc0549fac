"""Docker's raw answers read into meshlocal's terms.

The IPv4 pool of an inspected network, times, health from inspect, listing
status and event words, /events messages as ContainerEvents, the health
check's last run, and log byte chunks as text lines. Apart from engine.py:
pure functions over decoded JSON and bytes, which the streams use too and
tests call without an engine.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import docker.errors
import requests.exceptions

from meshlocal.registry import Health
from meshlocal.runtime.backoff import HealthReport
from meshlocal.runtime.enginetypes import ContainerEvent


def ipv4_config(net: Mapping[str, Any]) -> dict[str, Any]:
    """The network's IPv4 IPAM pool (a dual-stack network lists an IPv6 one too)."""
    configs = (net.get("IPAM") or {}).get("Config") or []
    for config in configs:
        if ":" not in str(config.get("Subnet") or ""):
            return dict(config)
    return {}


def docker_time(value: Any) -> str:
    """Docker's time, or "" for its zero time (never started, not finished)."""
    text = str(value or "")
    return "" if text.startswith("0001-01-01") else text


HEALTH = {"healthy": Health.HEALTHY, "unhealthy": Health.UNHEALTHY, "starting": Health.STARTING}
_NOT_LABELS = frozenset({"name", "image", "exitCode", "signal", "execID", "oldName"})


def parse_event(raw: Mapping[str, Any]) -> ContainerEvent | None:
    """A decoded /events message -> ContainerEvent; None for non-container events."""
    if raw.get("Type", "container") != "container":
        return None
    action = str(raw.get("Action") or raw.get("status") or "")
    actor = raw.get("Actor") or {}
    cid = str(actor.get("ID") or raw.get("id") or "")
    if not action or not cid:
        return None
    attrs: Mapping[str, Any] = actor.get("Attributes") or {}
    health = None
    if action.startswith("health_status"):
        health = HEALTH.get(action.partition(":")[2].strip())
        action = "health_status"
    exit_code = None
    if "exitCode" in attrs and str(attrs["exitCode"]).lstrip("-").isdigit():
        exit_code = int(attrs["exitCode"])
    return ContainerEvent(
        action=action,
        container_id=cid,
        name=str(attrs.get("name", "")),
        labels={k: str(v) for k, v in attrs.items() if k not in _NOT_LABELS},
        health=health,
        exit_code=exit_code,
        time_ns=int(raw.get("timeNano") or 0),
    )


_STATUS_HEALTH = re.compile(r"\((healthy|unhealthy|health: starting)\)")
STATUS_EXIT = re.compile(r"Exited \((-?\d+)\)")


def health_from_status(status: str) -> Health | None:
    match = _STATUS_HEALTH.search(status)
    if match is None:
        return None
    word = match.group(1)
    # Not startswith("health"): "healthy" starts with it too.
    return Health.STARTING if word == "health: starting" else HEALTH[word]


def health_report(raw: Mapping[str, Any]) -> HealthReport | None:
    """From `docker inspect`: Config.Healthcheck.Test and State.Health.Log[-1]."""
    test = ((raw.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    health = (raw.get("State") or {}).get("Health") or {}
    runs = health.get("Log") or []
    if not test or test[0] == "NONE" or not runs:
        return None
    last = runs[-1]
    kind, *args = [str(t) for t in test]
    command = f"{kind} {' '.join(args)}" if kind == "CMD-SHELL" else " ".join([kind, *args])
    output = str(last.get("Output") or "").strip()
    return HealthReport(
        command=command,
        exit_code=last.get("ExitCode"),
        output=output[-500:],  # a check that prints a page: its end says why
        failing_streak=int(health.get("FailingStreak") or 0),
    )


def split_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Byte chunks -> text lines; a stream that breaks just ends."""
    pending = b""
    try:
        for chunk in chunks:
            pending += bytes(chunk)
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.decode(errors="replace").rstrip("\r")
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
        pass  # the container went away mid-stream, or the stream was closed
    if pending:
        yield pending.decode(errors="replace")
