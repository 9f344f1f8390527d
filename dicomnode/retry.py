"""When to try a failed send again: exponential backoff with jitter and a give-up horizon.

Pure: the clock (`now`, `first_failure_at`, in seconds on any one monotonic or epoch scale) and
the random draw (`random_unit`) come from the caller, so every decision can be replayed.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff parameters: delays grow by `factor` from `initial_delay_s` up to `max_delay_s`.

    `jitter` spreads each delay by up to +-jitter (0.1 = +-10 %) so that many results failing
    together do not all retry in the same second. After `give_up_after_s` since the first
    failure the caller stops retrying and marks the result failed.
    """

    initial_delay_s: float = 30.0
    factor: float = 2.0
    max_delay_s: float = 3600.0
    give_up_after_s: float = 24 * 3600.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        if self.initial_delay_s <= 0:
            raise ValueError(f"initial_delay_s must be positive, not {self.initial_delay_s}")
        if self.factor < 1:
            raise ValueError(f"factor must be at least 1, not {self.factor}")
        if self.max_delay_s < self.initial_delay_s:
            raise ValueError(
                f"max_delay_s ({self.max_delay_s}) must not be below "
                f"initial_delay_s ({self.initial_delay_s})"
            )
        if self.give_up_after_s <= 0:
            raise ValueError(f"give_up_after_s must be positive, not {self.give_up_after_s}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), not {self.jitter}")


def backoff_delay(policy: RetryPolicy, attempts: int, random_unit: float = 0.5) -> float:
    """The pause after `attempts` (>= 1) failed tries, capped, then jittered."""
    if attempts < 1:
        raise ValueError(f"attempts must be at least 1, not {attempts}")
    if not 0 <= random_unit <= 1:
        raise ValueError(f"random_unit must be in [0, 1], not {random_unit}")
    try:
        delay = min(policy.initial_delay_s * policy.factor ** (attempts - 1), policy.max_delay_s)
    except OverflowError:  # a huge attempt count: the cap has long been reached
        delay = policy.max_delay_s
    return delay * (1 + policy.jitter * (2 * random_unit - 1))


def next_attempt_at(
    policy: RetryPolicy,
    *,
    first_failure_at: float,
    attempts: int,
    now: float,
    random_unit: float = 0.5,
) -> float | None:
    """When to try again after `attempts` failed tries; None once it is time to give up.

    The next try never lands after the give-up horizon: the last one happens at the horizon,
    so a destination that comes back just before it still gets its results.
    """
    deadline = first_failure_at + policy.give_up_after_s
    if now >= deadline:
        return None
    return min(now + backoff_delay(policy, attempts, random_unit), deadline)
