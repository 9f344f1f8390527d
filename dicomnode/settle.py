"""How a study ends once none of its deliveries is still open.

A delivery is open while it is 'pending' (an attempt is due) or 'committing' (sent, the PACS has
not yet confirmed storage, see dicomnode.commitment_queue); it ends 'sent' or 'failed'. When the
last one of a study ends, the study moves on from 'sending', in the same transaction as that
last change: to its final state when every delivery was sent, to 'failed' (with each failed
destination's reason) otherwise, or back to 'receiving' when an instance arrived after the
analysis began (the results do not cover it: the study is analysed again).
"""

from __future__ import annotations

import sqlite3

from dicomnode.states import StudyState

REVISION_REASON = "instance received during analysis"
OPEN_DELIVERY_STATUSES = ("pending", "committing")


def needs_revision(db: sqlite3.Connection, study_uid: str) -> bool:
    """Whether an instance reached the study after its claim: the results just made do not
    cover it, so instead of ending, the study goes back to the completeness timer ('receiving')
    and is analysed again (a revision of the SR). The index only flags such an instance."""
    row = db.execute("SELECT needs_revision FROM studies WHERE study_uid = ?",
                     (study_uid,)).fetchone()  # fmt: skip
    return bool(row and row[0])


def settle_study(db: sqlite3.Connection, study_uid: str, now: float) -> None:
    """Within the caller's transaction: end a 'sending' study whose deliveries are all ended."""
    rows = db.execute("SELECT status, final_state FROM deliveries WHERE study_uid = ?",
                      (study_uid,)).fetchall()  # fmt: skip
    states = [r[0] for r in rows]
    if not rows or any(s in OPEN_DELIVERY_STATUSES for s in states):
        return
    move = ("UPDATE studies SET state = ?, reason = ?, state_changed_at = ? "
            "WHERE study_uid = ? AND state = ?")  # fmt: skip
    if needs_revision(db, study_uid):
        db.execute(move, (StudyState.RECEIVING, REVISION_REASON, now, study_uid,
                          StudyState.SENDING))  # fmt: skip
    elif all(s == "sent" for s in states):  # keep the reason given at scheduling (out of scope)
        db.execute("UPDATE studies SET state = ?, state_changed_at = ? "
                   "WHERE study_uid = ? AND state = ?",
                   (rows[0][1], now, study_uid, StudyState.SENDING))  # fmt: skip
    else:
        failed = db.execute("SELECT destination || ': ' || reason FROM deliveries "
                            "WHERE study_uid = ? AND status = 'failed'",
                            (study_uid,)).fetchall()  # fmt: skip
        db.execute(move, (StudyState.FAILED, "; ".join(r[0] for r in failed), now, study_uid,
                          StudyState.SENDING))  # fmt: skip
