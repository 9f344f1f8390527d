"""One INFO line per association: what it stored, what failed, what was refused and why.

A caller may propose up to 128 presentation contexts (dcmtk's storescu proposes about 90 by
default) and the node serves a handful, so refusals are counted, not logged one by one: the
line logged at release or abort sums them up by reason, and the SOP classes refused go to DEBUG,
in one line naming at most `MAX_LISTED`. C-STORE problems log at most `MAX_PROBLEM_LINES` lines
per association at their level, the rest at DEBUG, all counted in the summary. So an
association's log volume is bounded whatever the caller proposes or sends. The lines name
study UIDs, AE titles and addresses, never patient data.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pipeline.dicom import dimse

MAX_PROBLEM_LINES = 10
"""C-STORE problem lines (WARNING, ERROR) per association; the rest at DEBUG."""
MAX_LISTED = 5
"""Study UIDs (and, at DEBUG, refused SOP classes times two) named in one line."""

CONTEXT_REFUSALS = {
    0x01: "refused by the node",
    0x02: "no reason given",
    0x03: "SOP class not served",
    0x04: "transfer syntax not supported",
}
"""A-ASSOCIATE-AC presentation context results (PS3.8 9.3.3.2) in words."""

STORE_FAILURES = {
    dimse.OUT_OF_RESOURCES: "out of resources",
    dimse.DATA_SET_DOES_NOT_MATCH_SOP_CLASS: "data set does not match SOP class",
    dimse.CANNOT_UNDERSTAND: "cannot understand",
    dimse.PROCESSING_FAILURE: "processing failure",
}


@dataclass
class AssociationTally:
    """What one association did so far."""

    name: str
    calling_aet: str
    address: str
    opened: float = field(default_factory=time.monotonic)
    proposed: int = 0
    refused: Counter[str] = field(default_factory=Counter)
    stored: int = 0
    studies: dict[str, None] = field(default_factory=dict)
    """Studies stored into, in order (a dict as an ordered set)."""
    failed: Counter[str] = field(default_factory=Counter)
    echoes: int = 0
    problem_lines: int = 0

    def problem_level(self, level: int) -> int:
        """The level to log one more problem of this association at: `level` for the first
        MAX_PROBLEM_LINES problems, DEBUG after."""
        if level <= logging.DEBUG:
            return level
        self.problem_lines += 1
        return level if self.problem_lines <= MAX_PROBLEM_LINES else logging.DEBUG

    def record_store(self, status: int, study_uid: str) -> None:
        """Count one C-STORE answered with `status` (warnings count as stored)."""
        if status == dimse.SUCCESS or status in dimse.STORE_WARNINGS:
            self.stored += 1
            self.studies.setdefault(study_uid, None)
        else:
            self.failed[STORE_FAILURES.get(status, f"status 0x{status:04X}")] += 1

    def summary(self, *, released: bool, now: float | None = None) -> str:
        """The association's one INFO line."""
        seconds = (time.monotonic() if now is None else now) - self.opened
        parts = []
        if self.stored or self.failed or not self.echoes:
            parts.append(f"{self.stored} stored{_studies(list(self.studies))}")
            parts.append(f"{sum(self.failed.values())} failed{_by_reason(self.failed)}")
        if self.echoes:
            parts.append(f"{self.echoes} C-ECHO")
        line = (f"association {self.name} {'released' if released else 'aborted'} after "
                f"{seconds:.1f} s ({self.calling_aet} at {self.address}): "
                + ", ".join(parts))  # fmt: skip
        if self.refused:
            line += (f"; refused {sum(self.refused.values())} of {self.proposed} presentation "
                     f"contexts{_by_reason(self.refused)}")  # fmt: skip
        return line


def _studies(uids: list[str]) -> str:
    if not uids:
        return ""
    listed = ", ".join(uids[:MAX_LISTED]) + (f" and {len(uids) - MAX_LISTED} more"
                                              if len(uids) > MAX_LISTED else "")  # fmt: skip
    return f" in {len(uids)} {'study' if len(uids) == 1 else 'studies'} ({listed})"


def _by_reason(counts: Counter[str]) -> str:
    if not counts:
        return ""
    return " (" + ", ".join(f"{reason}: {n}" for reason, n in counts.most_common()) + ")"


def refused_contexts(assoc: Any) -> tuple[Counter[str], list[str]]:
    """The refused presentation contexts of an accepted association: counts by reason, and
    one 'SOP class (reason)' per refused SOP class."""
    by_reason: Counter[str] = Counter()
    classes: dict[str, str] = {}
    for context in assoc.rejected_contexts:
        reason = CONTEXT_REFUSALS.get(context.result, f"result {context.result}")
        by_reason[reason] += 1
        syntax = context.abstract_syntax
        classes.setdefault(getattr(syntax, "name", "") or str(syntax), reason)
    return by_reason, [f"{name} ({reason})" for name, reason in classes.items()]


def listed(names: list[str], limit: int = 2 * MAX_LISTED) -> str:
    """`names` joined, at most `limit` of them and how many more."""
    more = f"; and {len(names) - limit} more" if len(names) > limit else ""
    return "; ".join(names[:limit]) + more


class AssociationLog:
    """The tallies of the open associations, held weakly: none outlives its association."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tallies: weakref.WeakKeyDictionary[Any, AssociationTally] = (
            weakref.WeakKeyDictionary()
        )

    def open(self, assoc: Any, tally: AssociationTally) -> None:
        """Start counting for `assoc`."""
        with self._lock:
            self._tallies[assoc] = tally

    def get(self, assoc: Any) -> AssociationTally | None:
        """The tally of `assoc`, None if it has none (not accepted, or already closed)."""
        with self._lock:
            return self._tallies.get(assoc)

    def close(self, assoc: Any) -> AssociationTally | None:
        """Stop counting for `assoc`; returns its tally."""
        with self._lock:
            return self._tallies.pop(assoc, None)
