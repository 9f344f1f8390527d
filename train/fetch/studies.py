"""What `fetch` is asked for (study requests from a CSV) and what it reports per study."""

from __future__ import annotations

import csv
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


class Outcome(enum.StrEnum):
    """What happened to one study."""

    FETCHED = "fetched"
    SKIPPED = "skipped"
    NOT_FOUND = "not found"
    FAILED = "failed"


class FetchError(Exception):
    """A study could not be fetched; the message is one sentence for the log."""


@dataclass(frozen=True)
class StudyRequest:
    """One line of the accessions list: an accession number, a Study Instance UID, or both."""

    accession_number: str = ""
    study_instance_uid: str = ""

    @property
    def label(self) -> str:
        """How logs name this request (never a patient identifier)."""
        if self.accession_number:
            return f"accession {self.accession_number}"
        return f"study {self.study_instance_uid}"


@dataclass(frozen=True)
class StudyOutcome:
    """The result for one study (or for a request that found no study)."""

    request: StudyRequest
    study_instance_uid: str
    outcome: Outcome
    instances: int = 0
    message: str = ""


@dataclass(frozen=True)
class FetchSummary:
    """Counts over a fetch run, with every study's outcome."""

    fetched: int
    skipped: int
    not_found: int
    failed: int
    instances: int
    outcomes: tuple[StudyOutcome, ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, outcomes: Sequence[StudyOutcome]) -> FetchSummary:
        """Summarise a list of outcomes."""

        def count(kind: Outcome) -> int:
            return sum(1 for o in outcomes if o.outcome is kind)

        return cls(
            fetched=count(Outcome.FETCHED),
            skipped=count(Outcome.SKIPPED),
            not_found=count(Outcome.NOT_FOUND),
            failed=count(Outcome.FAILED),
            instances=sum(o.instances for o in outcomes if o.outcome is Outcome.FETCHED),
            outcomes=tuple(outcomes),
        )

    @property
    def ok(self) -> bool:
        """Whether every requested study was found and is now complete in the archive."""
        return self.failed == 0 and self.not_found == 0

    def line(self) -> str:
        """The one-line summary the command prints."""
        return (
            f"fetch: {self.fetched} studies fetched, {self.skipped} skipped, "
            f"{self.not_found} not found, {self.failed} failed; {self.instances} instances"
        )


def read_requests(path: Path) -> list[StudyRequest]:
    """The study requests of a CSV with an `accession_number` and/or `study_instance_uid`
    column, in file order, without duplicates."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if not columns & {"accession_number", "study_instance_uid"}:
            raise ValueError(
                f"{path} has no 'accession_number' or 'study_instance_uid' column "
                f"(columns: {', '.join(sorted(columns)) or 'none'})"
            )
        requests: dict[StudyRequest, None] = {}
        for row in reader:
            request = StudyRequest(
                accession_number=(row.get("accession_number") or "").strip(),
                study_instance_uid=(row.get("study_instance_uid") or "").strip(),
            )
            if request.accession_number or request.study_instance_uid:
                requests[request] = None
    return list(requests)
