"""When is a study complete? A pure decision on the study's state and the time.

A study is complete when its sender released the association and nothing more came for a short
grace period, or, for studies spread over several associations (or senders that never release
cleanly), when nothing came for a longer quiet period. Anchors: MONAI Deploy's gateway waits 5 s
of quiet, Orthanc's StableAge is 60 s, mercure's study trigger 900 s.

With `analyse_during_grace` a released study is analysed at once and its results are held until
the grace period ends (`WorkQueue.schedule`'s `hold_until`): the wait overlaps the work instead
of preceding it. An instance that arrives meanwhile withdraws the unsent results and the study
is analysed again (`WorkQueue.withdraw_stale`), so a late instance costs CPU, never a revision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from dicomnode.states import StudyState


class StudyTiming(Protocol):
    """What the decision needs to know about a study (the index's study row has it)."""

    @property
    def state(self) -> str: ...
    @property
    def last_received(self) -> float: ...
    @property
    def released_at(self) -> float | None: ...


@dataclass(frozen=True)
class CompletenessParams:
    """The two waits, in seconds."""

    grace_seconds: float = 2.0
    quiet_seconds: float = 30.0
    analyse_during_grace: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.grace_seconds <= self.quiet_seconds:
            raise ValueError("need 0 <= grace_seconds <= quiet_seconds")


def is_study_complete(study: StudyTiming, now: float, params: CompletenessParams) -> bool:
    """True when a receiving study should be analysed now."""
    if study.state != StudyState.RECEIVING:
        return False
    released = study.released_at is not None and study.released_at >= study.last_received
    if released and (params.analyse_during_grace
                     or now - study.last_received >= params.grace_seconds):  # fmt: skip
        return True
    return now - study.last_received >= params.quiet_seconds


def next_check_at(study: StudyTiming, params: CompletenessParams) -> float:
    """The earliest time at which the decision could change (for the timer)."""
    released = study.released_at is not None and study.released_at >= study.last_received
    if released and params.analyse_during_grace:
        return study.last_received
    wait = params.grace_seconds if released else params.quiet_seconds
    return study.last_received + wait
