"""Pure parts of sending: the retry schedule and what counts as sent."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.config import Destination
from dicomnode.retry import RetryPolicy, backoff_delay, next_attempt_at
from dicomnode.sender import FileOutcome, SendResult, send_files
from pipeline.dicom import dimse

DAY = 24 * 3600.0
POLICY = RetryPolicy()


def test_delays_double_from_30_s_and_cap_at_an_hour() -> None:
    delays = [
        next_attempt_at(POLICY, first_failure_at=1000.0, attempts=n, now=5000.0)
        for n in range(1, 11)
    ]
    assert [d - 5000.0 for d in delays if d is not None] == [
        30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 3600.0, 3600.0, 3600.0,
    ]  # fmt: skip


def test_a_huge_attempt_count_stays_at_the_cap() -> None:
    assert backoff_delay(POLICY, 100_000) == 3600.0


@pytest.mark.parametrize("attempts", [1, 4, 12])
def test_jitter_stays_within_ten_percent(attempts: int) -> None:
    base = backoff_delay(POLICY, attempts)
    draws = [backoff_delay(POLICY, attempts, u / 20) for u in range(21)]
    assert min(draws) == pytest.approx(base * 0.9)
    assert max(draws) == pytest.approx(base * 1.1)
    assert draws == sorted(draws)


def test_gives_up_a_day_after_the_first_failure() -> None:
    assert next_attempt_at(POLICY, first_failure_at=0.0, attempts=40, now=DAY) is None
    assert next_attempt_at(POLICY, first_failure_at=0.0, attempts=40, now=DAY + 1) is None


def test_the_last_try_lands_on_the_give_up_horizon_not_after_it() -> None:
    at = next_attempt_at(POLICY, first_failure_at=0.0, attempts=40, now=DAY - 10, random_unit=1)
    assert at == DAY


@pytest.mark.parametrize(("attempts", "random_unit"), [(0, 0.5), (-1, 0.5), (1, -0.1), (1, 1.5)])
def test_bad_arguments_are_refused(attempts: int, random_unit: float) -> None:
    with pytest.raises(ValueError):
        next_attempt_at(
            POLICY, first_failure_at=0.0, attempts=attempts, now=1.0, random_unit=random_unit
        )


@pytest.mark.parametrize(
    "changes",
    [{"initial_delay_s": 0}, {"factor": 0.5}, {"max_delay_s": 1}, {"jitter": 1.0}],
)
def test_bad_policies_are_refused(changes: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**changes)


@pytest.mark.parametrize(
    "status",
    [
        dimse.OUT_OF_RESOURCES,
        dimse.CANNOT_UNDERSTAND,
        dimse.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        dimse.PROCESSING_FAILURE,
    ],
)
def test_a_failure_status_is_never_sent(status: int) -> None:
    outcome = FileOutcome.from_status(Path("a.dcm"), "1.2.3", status)
    assert not outcome.sent
    assert outcome.status == status
    assert outcome.reason.startswith(f"peer returned 0x{status:04X} ")
    with pytest.raises(ValueError, match="cannot count as sent"):
        FileOutcome(Path("a.dcm"), "1.2.3", status, True, "")


def test_out_of_resources_reason_names_the_code_and_its_meaning() -> None:
    outcome = FileOutcome.from_status(Path("a.dcm"), "1.2.3", dimse.OUT_OF_RESOURCES)
    assert outcome.reason == "peer returned 0xA700 Refused: Out of Resources"


def test_success_and_storage_warnings_are_sent() -> None:
    success = FileOutcome.from_status(Path("a.dcm"), "1.2.3", dimse.SUCCESS)
    assert success.sent and success.reason == ""
    for warning in dimse.STORE_WARNINGS:
        outcome = FileOutcome.from_status(Path("a.dcm"), "1.2.3", warning)
        assert outcome.sent
        assert outcome.reason.startswith(f"stored with warning 0x{warning:04X}")


def test_a_file_never_sent_cannot_be_sent() -> None:
    with pytest.raises(ValueError):
        FileOutcome(Path("a.dcm"), "1.2.3", None, True, "")


def test_all_sent_needs_every_outcome_sent() -> None:
    destination = Destination("PACS", "127.0.0.1", 104)
    ok = FileOutcome.from_status(Path("a.dcm"), "1.2.3", dimse.SUCCESS)
    bad = FileOutcome.from_status(Path("b.dcm"), "1.2.4", dimse.OUT_OF_RESOURCES)
    assert SendResult(destination, (ok, ok), True).all_sent
    assert not SendResult(destination, (ok, bad), True).all_sent


def test_unreadable_files_are_reported_without_opening_an_association(tmp_path: Path) -> None:
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all")
    # Port 1 on the loopback: were an association attempted, the reason would say so.
    result = send_files(
        Destination("PACS", "127.0.0.1", 1), [junk, tmp_path / "missing.dcm"], calling_aet="NODE"
    )
    assert not result.connected
    assert [o.sent for o in result.outcomes] == [False, False]
    assert all(o.reason.startswith("file cannot be read as DICOM") for o in result.outcomes)
