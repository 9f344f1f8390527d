"""The states of a study, in one place.

A StrEnum: each member is the very string the index stores, so the database holds the same values
as before the enum existed, SQL can interpolate a member, and a member equals its string.
"""

from __future__ import annotations

import enum


class StudyState(enum.StrEnum):
    """Where a study is: receiving -> complete -> analysing -> sending -> done, failed or
    out_of_scope (see dicomnode.work_queue for the moves)."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    ANALYSING = "analysing"
    SENDING = "sending"
    DONE = "done"
    FAILED = "failed"
    OUT_OF_SCOPE = "out_of_scope"
