"""Restart back-off for replicas that keep dying: the bookkeeping, no I/O.

ECS throttles a service whose tasks keep failing: "the time between
subsequent restart attempts is incrementally increased up to a maximum of
27 minutes" (Amazon ECS Developer Guide, "Amazon ECS service throttle
logic"), with no published steps. meshlocal follows the same shape with
numbers that suit a laptop, where someone is waiting on the fix:

- the first restart is immediate (ECS replaces a stopped task at once);
- each further one waits 5 s, 10 s, 20 s, ... doubling up to 5 minutes
  (Kubernetes' CrashLoopBackOff cap; 27 minutes is long at a desk);
- a replica that stays up for STABLE_AFTER_S counts as recovered, and so
  does a service whose container definition changed (ECS: "If you update
  your service to use a new task definition, your service returns to a
  normal, non-throttled state immediately").
"""

from __future__ import annotations

from dataclasses import dataclass, field

CRASH_LOOP_AFTER = 3  # consecutive deaths before `up -d` gives up on a replica
BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 300.0
STABLE_AFTER_S = 10.0  # up this long, then the replica has recovered
KEPT_SUFFIX = "-crashed"  # a slot's last crashed container, kept (stopped) for `logs`


def restart_delay(failures: int) -> float:
    """Seconds to wait before restarting a replica that died `failures` times in a row."""
    if failures <= 1:
        return 0.0
    return float(min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(failures - 2, 16)))


@dataclass(frozen=True)
class HealthReport:
    """A container health check's own account of why it fails (Docker's health log)."""

    command: str  # as the user wrote it: `CMD-SHELL curl -f http://localhost/`
    exit_code: int | None
    output: str  # the last run's output, trimmed
    failing_streak: int = 0

    def describe(self) -> str:
        out = self.output.strip() or "(no output)"
        return f"health check `{self.command}` exited {self.exit_code}: {out}"


@dataclass
class Slot:
    """Restart bookkeeping for one (service, index)."""

    failures: int = 0  # consecutive deaths since it last recovered
    last_exit: int | None = None
    last_logs: list[str] = field(default_factory=list)
    next_try: float | None = None  # monotonic time of the next start; None: now
    kept: str | None = None  # name of the last crashed container, kept stopped
    health: HealthReport | None = None  # the failing check, when it was stopped unhealthy
    stopped: str | None = None  # the container stopped as unhealthy, whose death that explains

    def died(
        self, exit_code: int | None, logs: list[str], now: float, *, unhealthy: bool = False
    ) -> float:
        """Record a death; returns the delay before the next start.

        `unhealthy`: the container meshlocal stopped for failing its health
        check; any other death is a crash, whatever an earlier check said.
        """
        if not unhealthy:
            self.health = None
        self.failures += 1
        self.last_exit = exit_code
        self.last_logs = logs
        delay = restart_delay(self.failures)
        self.next_try = now + delay if delay else None
        return delay

    def waiting(self, now: float) -> float:
        """Seconds left before this slot may start again (0: now)."""
        return max(0.0, self.next_try - now) if self.next_try is not None else 0.0

    def unthrottle(self) -> None:
        """Start again at once; the kept container stays until a replica is stable."""
        self.failures = 0
        self.next_try = None
        self.health = None


@dataclass
class Crash:
    """A replica that keeps dying, as `ps` and `up -d`'s failure message show it."""

    service: str
    index: int
    exit_code: int | None
    count: int
    last_logs: list[str] = field(default_factory=list)
    retry_in: float = 0.0
    kept: str | None = None
    health: HealthReport | None = None

    @property
    def looping(self) -> bool:
        return self.count >= CRASH_LOOP_AFTER

    def status(self) -> str:
        """`crash-looping, exit 3, next try in 40 s`, for `ps`."""
        what = "crash-looping" if self.looping else "restarting"
        cause = "unhealthy" if self.health is not None else f"exit {self.exit_code}"
        when = f"next try in {self.retry_in:.0f} s" if self.retry_in >= 1 else "starting again"
        return f"{what}, {cause}, {self.count} in a row, {when}"
