"""The completeness decision: released + grace, or quiet period; the clock is a parameter."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dicomnode.completeness import CompletenessParams, is_study_complete, next_check_at

PARAMS = CompletenessParams(grace_seconds=2.0, quiet_seconds=30.0)


@dataclass(frozen=True)
class Study:
    state: str = "receiving"
    last_received: float = 100.0
    released_at: float | None = None


@pytest.mark.parametrize(
    ("study", "now", "complete"),
    [
        (Study(released_at=100.5), 101.9, False),  # released, still inside the grace period
        (Study(released_at=100.5), 102.0, True),  # released, grace period over
        (Study(), 129.9, False),  # association open: wait for the quiet period
        (Study(), 130.0, True),
        (Study(released_at=90.0), 110.0, False),  # released earlier, then more came: quiet rule
        (Study(state="analysing", released_at=100.5), 500.0, False),  # only receiving studies
        (Study(state="done"), 500.0, False),
    ],
)
def test_decision(study: Study, now: float, complete: bool) -> None:
    assert is_study_complete(study, now, PARAMS) is complete


def test_next_check_matches_the_decision() -> None:
    for study in (Study(released_at=100.5), Study()):
        at = next_check_at(study, PARAMS)
        assert not is_study_complete(study, at - 0.01, PARAMS)
        assert is_study_complete(study, at, PARAMS)


def test_invalid_waits_are_refused() -> None:
    with pytest.raises(ValueError):
        CompletenessParams(grace_seconds=40.0, quiet_seconds=30.0)


def test_analysed_during_grace_a_released_study_is_complete_at_once() -> None:
    early = CompletenessParams(grace_seconds=2.0, quiet_seconds=30.0, analyse_during_grace=True)
    released = Study(released_at=100.5)
    assert is_study_complete(released, 100.5, early)
    assert next_check_at(released, early) == released.last_received
    # Without a release nothing changes: the quiet period still rules.
    assert not is_study_complete(Study(), 129.9, early)
    assert is_study_complete(Study(), 130.0, early)
    assert not is_study_complete(Study(released_at=90.0), 110.0, early)
