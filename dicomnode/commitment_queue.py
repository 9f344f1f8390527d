"""Storage commitment state in the node's database (PS3.4 Annex J, push model, node as SCU).

A delivery to a destination with `storage_commitment` moves pending -> committing once every
file was stored (C-STORE), and the node asks the PACS to commit them (N-ACTION, a new
Transaction UID: one row of `commitments`, see dicomnode.migrations version 3). It ends 'sent',
and its study may reach its final state, only when a report (N-EVENT-REPORT) says that every
instance named is committed. A report that lists failures, a refused request or no report by
the deadline counts as a failed attempt: the delivery is pending again at the retry policy's
next time (resend, then a new N-ACTION), or failed once the policy gives up. Only the newest
transaction of a delivery still waiting moves it; a late report on an older one is kept in its
row and changes nothing else. While a delivery is committing its study stays 'sending', so
retention (which purges 'done' and 'out_of_scope' studies only) never removes its files.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dicomnode.index import Index
from dicomnode.retry import RetryPolicy, next_attempt_at
from dicomnode.settle import settle_study

COMMITMENT_STATUSES = ("awaiting", "committed", "failed", "expired")


@dataclass(frozen=True)
class Reference:
    """One instance named in a commitment request or report."""

    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Commitment:
    """One storage commitment transaction the node issued, as the database holds it."""

    transaction_uid: str
    study_uid: str
    destination: str
    instances: tuple[Reference, ...]
    requested_at: float
    deadline: float
    status: str
    failures: str
    """What was not committed and why, one line per instance (or why the request failed)."""
    reported_at: float | None
    reported_by: str


@dataclass(frozen=True)
class CommitmentOutcome:
    """What closing a transaction did: its new row, how many instances it left uncommitted and
    why, and the delivery's new status (sent, pending or failed), None when the delivery no
    longer waited on this transaction."""

    commitment: Commitment
    delivery_status: str | None
    not_committed: int
    reason: str


_COLUMNS = ("transaction_uid, study_uid, destination, instances, requested_at, deadline, status,"
            " failures, reported_at, reported_by")  # fmt: skip


def _commitment(row: tuple[Any, ...]) -> Commitment:
    instances = tuple(Reference(c, i) for c, i in json.loads(row[3]))
    return Commitment(row[0], row[1], row[2], instances, float(row[4]), float(row[5]), row[6],
                      row[7], row[8], row[9])  # fmt: skip


class CommitmentQueue(Index):
    """The index plus the storage commitment transactions and the deliveries they hold."""

    def await_commitment(self, study_uid: str, destination: str, *, transaction_uid: str,
                         instances: Sequence[Reference], now: float,
                         deadline: float) -> None:  # fmt: skip
        """The delivery's files are all stored: count the attempt, hold the delivery as
        'committing' and record the transaction, before the N-ACTION goes out (a PACS may report
        on a new association before the N-ACTION's response arrives)."""
        listing = json.dumps([[r.sop_class_uid, r.sop_instance_uid] for r in instances])
        with self._transaction() as db:
            db.execute("DELETE FROM delivery_leases WHERE study_uid = ? AND destination = ?",
                       (study_uid, destination))  # fmt: skip
            db.execute(
                "UPDATE deliveries SET attempts = attempts + 1, next_attempt_at = ?,"
                " status = 'committing', reason = '' WHERE study_uid = ? AND destination = ?",
                (deadline, study_uid, destination),
            )
            db.execute(
                "INSERT INTO commitments (transaction_uid, study_uid, destination, instances,"
                " requested_at, deadline) VALUES (?, ?, ?, ?, ?, ?)",
                (transaction_uid, study_uid, destination, listing, now, deadline),
            )

    def commitment(self, transaction_uid: str) -> Commitment | None:
        """The transaction `transaction_uid`, None when the node never issued it."""
        rows = self._query(f"SELECT {_COLUMNS} FROM commitments WHERE transaction_uid = ?",
                           (transaction_uid,))  # fmt: skip
        return _commitment(rows[0]) if rows else None

    def commitments(self, study_uid: str) -> list[Commitment]:
        """A study's transactions, oldest first."""
        rows = self._query(f"SELECT {_COLUMNS} FROM commitments WHERE study_uid = ?"
                           " ORDER BY rowid", (study_uid,))  # fmt: skip
        return [_commitment(r) for r in rows]

    def record_report(self, transaction_uid: str, *, committed: Sequence[Reference],
                      failed: Sequence[tuple[Reference, str]], reported_by: str, now: float,
                      policy: RetryPolicy,
                      random_unit: float = 0.5) -> CommitmentOutcome | None:  # fmt: skip
        """Record the PACS's report on `transaction_uid`: committed when every instance the
        request named is among `committed`, else failed with the instances `failed` (and those
        the report left out). None when no such transaction was issued."""
        with self._transaction() as db:
            row = self._row(db, transaction_uid)
            if row is None:
                return None
            done = {r.sop_instance_uid for r in committed}
            reasons = {ref.sop_instance_uid: why for ref, why in failed}
            missing = [r for r in row.instances if r.sop_instance_uid not in done]
            if not missing:
                return self._close(db, row, "committed", "", "", reported_by, now, policy,
                                   random_unit, 0)  # fmt: skip
            lines = [f"{r.sop_instance_uid}: {reasons.get(r.sop_instance_uid, 'not in the report')}"
                     for r in missing]  # fmt: skip
            kinds = sorted({line.split(": ", 1)[1] for line in lines})
            reason = (f"PACS did not commit {len(missing)} of {len(row.instances)} instance(s):"
                      f" {', '.join(kinds)}")  # fmt: skip
            return self._close(db, row, "failed", "\n".join(lines), reason, reported_by, now,
                               policy, random_unit, len(missing))  # fmt: skip

    def fail_commitment(self, transaction_uid: str, reason: str, *, now: float,
                        policy: RetryPolicy,
                        random_unit: float = 0.5) -> CommitmentOutcome | None:  # fmt: skip
        """The N-ACTION itself failed (no association, refused, no answer): a failed attempt."""
        with self._transaction() as db:
            row = self._row(db, transaction_uid)
            if row is None:
                return None
            return self._close(db, row, "failed", reason, reason, "", now, policy, random_unit,
                               len(row.instances))  # fmt: skip

    def expire_commitments(self, now: float, policy: RetryPolicy,
                           random_unit: float = 0.5) -> list[CommitmentOutcome]:  # fmt: skip
        """Close every transaction still awaiting a report at its deadline (`now` or before)."""
        outcomes = []
        with self._transaction() as db:
            uids = db.execute(
                "SELECT transaction_uid FROM commitments"
                " WHERE status = 'awaiting' AND deadline <= ?",
                (now,),
            ).fetchall()
            for (uid,) in uids:
                row = self._row(db, uid)
                assert row is not None  # same transaction
                waited = row.deadline - row.requested_at
                reason = (f"PACS did not confirm storage of {len(row.instances)} instance(s)"
                          f" within {waited:g} s")  # fmt: skip
                outcomes.append(self._close(db, row, "expired", reason, reason, "", now, policy,
                                            random_unit, len(row.instances)))  # fmt: skip
        return outcomes

    def commitment_counts(self) -> dict[str, int]:
        """Transactions per status (awaiting, committed, failed, expired), since the first."""
        counts = dict.fromkeys(COMMITMENT_STATUSES, 0)
        counts.update(
            {s: int(n) for s, n in self._query("SELECT status, n FROM commitment_counts")}
        )
        return counts

    @staticmethod
    def _row(db: sqlite3.Connection, transaction_uid: str) -> Commitment | None:
        row = db.execute(f"SELECT {_COLUMNS} FROM commitments WHERE transaction_uid = ?",
                         (transaction_uid,)).fetchone()  # fmt: skip
        return None if row is None else _commitment(row)

    @staticmethod
    def _close(db: sqlite3.Connection, row: Commitment, status: str, failures: str, reason: str,
               reported_by: str, now: float, policy: RetryPolicy, random_unit: float,
               not_committed: int) -> CommitmentOutcome:  # fmt: skip
        """Close one transaction; move its delivery if it still waits on this one."""
        db.execute("UPDATE commitments SET status = ?, failures = ?, reported_at = ?,"
                   " reported_by = ? WHERE transaction_uid = ?",
                   (status, failures, now, reported_by, row.transaction_uid))  # fmt: skip
        closed = dataclasses.replace(row, status=status, failures=failures, reported_at=now,
                                     reported_by=reported_by)  # fmt: skip
        where = (row.study_uid, row.destination)
        delivery = db.execute(
            "SELECT attempts, first_failure_at, status FROM deliveries"
            " WHERE study_uid = ? AND destination = ?",
            where,
        ).fetchone()
        newest = db.execute(
            "SELECT transaction_uid FROM commitments WHERE study_uid = ?"
            " AND destination = ? ORDER BY rowid DESC LIMIT 1",
            where,
        ).fetchone()
        if delivery is None or delivery[2] != "committing" or newest[0] != row.transaction_uid:
            return CommitmentOutcome(closed, None, not_committed, reason)
        attempts, first = int(delivery[0]), delivery[1]
        if status == "committed":
            delivery_status, next_at = "sent", now
        else:
            first = now if first is None else first
            at = next_attempt_at(policy, first_failure_at=first, attempts=max(attempts, 1),
                                 now=now, random_unit=random_unit)  # fmt: skip
            delivery_status, next_at = ("failed", now) if at is None else ("pending", at)
        db.execute("UPDATE deliveries SET status = ?, reason = ?, first_failure_at = ?,"
                   " next_attempt_at = ? WHERE study_uid = ? AND destination = ?",
                   (delivery_status, reason, first, next_at, *where))  # fmt: skip
        settle_study(db, row.study_uid, now)
        return CommitmentOutcome(closed, delivery_status, not_committed, reason)
