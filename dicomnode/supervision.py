"""When to restart analysis workers that stopped, and when to stop trying: pure decisions.

A worker stops when its model fails (the bundle no longer loads, or fails its self-test after
an analysis failed) or when it dies (a crash, an out-of-memory kill). The first stop in a row
restarts it at once; each further one waits twice as long as the last, up to a cap; after
`max_failures` in a row analysis stops for good: the node stays unhealthy with the reason
(/healthz, `dicomnode status`) and keeps receiving, the studies stay queued, until an admin
fixes the cause and restarts the node. Workers that run `stable_after_s` end the run of failures.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from dicomnode.retry import RetryPolicy, backoff_delay

AnalysisState = Literal["running", "restarting", "stopped"]


@dataclass(frozen=True)
class RestartPolicy:
    """How patiently failed workers are restarted."""

    backoff: RetryPolicy = field(
        default_factory=lambda: RetryPolicy(initial_delay_s=5.0, max_delay_s=300.0, jitter=0.0)
    )
    """Delays between the second and later restarts of a run of failures."""
    max_failures: int = 6
    """Failures in a row (about 75 s of retries with the default backoff) that stop analysis."""
    stable_after_s: float = 120.0
    """Seconds every worker must run, after a failure, for the node to count as healthy."""


@dataclass(frozen=True)
class AnalysisHealth:
    """The analysis workers as /healthz and `dicomnode status` report them."""

    state: AnalysisState = "running"
    reason: str = ""
    """Why the last worker stopped (model failure, exit status or signal)."""
    failures: int = 0
    """Stops in a row, since the workers last ran `stable_after_s`."""
    since: float = 0.0
    """When the state began (epoch seconds)."""
    retry_at: float | None = None
    """When stopped workers are started again (state 'restarting')."""

    @property
    def ok(self) -> bool:
        """Whether analysis runs normally."""
        return self.state == "running"

    def describe(self) -> str:
        """One line for logs, /healthz and `dicomnode status`."""
        if self.state == "running":
            return "running"
        if self.state == "stopped":
            return (f"stopped after {self.failures} failures in a row: {self.reason}; received "
                    "studies stay queued: fix the cause, then restart the node")  # fmt: skip
        return f"restarting after {self.failures} failure(s) in a row: {self.reason}"


def after_failure(
    health: AnalysisHealth, reason: str, now: float, policy: RestartPolicy
) -> AnalysisHealth:
    """The health after a worker stopped at `now` for `reason`."""
    if health.state == "stopped":
        return health
    failures = health.failures + 1
    since = health.since if health.state == "restarting" else now
    if failures >= policy.max_failures:
        return AnalysisHealth("stopped", reason, failures, now, None)
    delay = 0.0 if failures == 1 else backoff_delay(policy.backoff, failures - 1)
    return AnalysisHealth("restarting", reason, failures, since, now + delay)


def after_running(
    health: AnalysisHealth, ran_for_s: float, now: float, policy: RestartPolicy
) -> AnalysisHealth:
    """The health once every worker has run `ran_for_s` (the shortest run) without stopping."""
    if health.state != "restarting" or ran_for_s < policy.stable_after_s:
        return health
    return replace(AnalysisHealth(), since=now)
