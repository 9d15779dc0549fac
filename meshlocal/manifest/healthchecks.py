"""`image.healthcheck` (and sidecars') and `http.healthcheck`, read as Copilot and ECS do."""

from __future__ import annotations

from meshlocal.manifest.fields import Fields
from meshlocal.manifest.merge import is_null
from meshlocal.manifest.model import (
    DEFAULT_HEALTHCHECK_COMMAND,
    ContainerHealthCheck,
    HttpHealthCheck,
)
from meshlocal.manifest.yaml12 import Map, Node, Scalar

HTTP_HC_FIELDS = frozenset(
    {
        "path",
        "port",
        "success_codes",
        "healthy_threshold",
        "unhealthy_threshold",
        "interval",
        "timeout",
        "grace_period",
    }
)
CONTAINER_HC_FIELDS = frozenset({"command", "interval", "retries", "timeout", "start_period"})
# ECS HealthCheck (API reference): interval 5-300 s, timeout 2-60 s, retries
# 1-10, startPeriod 0-300 s.
_ECS_HEALTHCHECK_BOUNDS: dict[str, tuple[int, int]] = {
    "interval": (5, 300),
    "timeout": (2, 60),
    "retries": (1, 10),
    "start_period": (0, 300),
}


def container_healthcheck(f: Fields, node: Node | None, field: str) -> ContainerHealthCheck | None:
    hc = f.mapping(node, field)
    if hc is None:
        return None
    f.unknown(hc, CONTAINER_HC_FIELDS, field)
    if all(is_null(hc.get(key)) for key in CONTAINER_HC_FIELDS):
        return None  # Copilot: a check that sets nothing is no check (IsEmpty)
    cmd_node = hc.get("command")
    command: tuple[str, ...] | None
    if is_null(cmd_node):
        command = DEFAULT_HEALTHCHECK_COMMAND  # Copilot's default, as for every field
    else:  # ContainerHealthCheck.Command is a []string: a plain string fails to decode
        command = f.str_list(cmd_node, f"{field}.command")
        if command is None:
            return None  # not a list of strings: reported
    if not command:
        f.diag.error(
            f"{field}.command: a health check needs a command",
            cmd_node.loc if cmd_node is not None else hc.loc,
            'write command: ["CMD-SHELL", "curl -f http://localhost/ || exit 1"]',
        )
        return None
    d = ContainerHealthCheck(command=command)
    interval = _seconds(f, hc, "interval", field, d.interval_s)
    timeout = _seconds(f, hc, "timeout", field, d.timeout_s)
    start = _seconds(f, hc, "start_period", field, d.start_period_s)
    retries = f.integer(hc.get("retries"), f"{field}.retries", -(2**63))
    if retries is not None:
        _bound(f, hc, "retries", field, retries, "")
    return ContainerHealthCheck(
        command=command,
        interval_s=interval,
        timeout_s=timeout,
        retries=d.retries if retries is None else retries,
        start_period_s=start,
    )


def _seconds(f: Fields, hc: Map, key: str, field: str, default: float) -> float:
    """Whole seconds, as Copilot passes them to ECS (int64(d.Seconds()) truncates)."""
    value = f.duration(hc.get(key), f"{field}.{key}")
    if value is None:
        return default
    seconds = float(int(value))
    _bound(f, hc, key, field, int(seconds), " seconds")
    return seconds


def _bound(f: Fields, hc: Map, key: str, field: str, value: int, unit: str) -> None:
    """The bounds ECS's RegisterTaskDefinition enforces (the HealthCheck API type);
    Copilot checks none, so the deployment would fail there."""
    low, high = _ECS_HEALTHCHECK_BOUNDS[key]
    if low <= value <= high:
        return
    node = hc.get(key)
    f.diag.error(
        f"{field}.{key}: {value}{unit} is outside what ECS accepts ({low} to {high}{unit})",
        node.loc if node is not None else hc.loc,
        f"use {low} to {high}{unit}; ECS refuses the task definition otherwise",
    )


def http_healthcheck(f: Fields, node: Node | None) -> HttpHealthCheck | None:
    field = "http.healthcheck"
    if node is None or is_null(node):
        return None
    if isinstance(node, Scalar):
        return HttpHealthCheck(path=node.text)
    hc = f.mapping(node, field)
    if hc is None:
        return None
    f.unknown(hc, HTTP_HC_FIELDS, field)
    d = HttpHealthCheck()
    path = f.string(hc.get("path"), f"{field}.path")
    codes = f.string(hc.get("success_codes"), f"{field}.success_codes")
    healthy = f.integer(hc.get("healthy_threshold"), f"{field}.healthy_threshold", 1)
    unhealthy = f.integer(hc.get("unhealthy_threshold"), f"{field}.unhealthy_threshold", 1)
    interval = f.duration(hc.get("interval"), f"{field}.interval")
    timeout = f.duration(hc.get("timeout"), f"{field}.timeout")
    grace = f.duration(hc.get("grace_period"), f"{field}.grace_period")
    return HttpHealthCheck(
        path=d.path if path is None else path,
        port=f.port(hc.get("port"), f"{field}.port"),
        success_codes=d.success_codes if codes is None else codes,
        healthy_threshold=d.healthy_threshold if healthy is None else healthy,
        unhealthy_threshold=d.unhealthy_threshold if unhealthy is None else unhealthy,
        interval_s=d.interval_s if interval is None else interval,
        timeout_s=d.timeout_s if timeout is None else timeout,
        grace_period_s=d.grace_period_s if grace is None else grace,
    )
