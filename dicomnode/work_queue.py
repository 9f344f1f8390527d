"""The durable work queue on top of the index: study claims and result deliveries.

States move receiving -> complete (the completeness timer) -> analysing (a worker's claim) ->
sending (results on disk) -> done (every destination has them; where a destination asks for
storage commitment, once it confirmed them) or failed; out_of_scope when no wrist view was
found. A study that received an instance after its claim goes back to receiving instead of
done or failed: its results do not cover that instance, the next analysis revises them. Every
move is one SQLite transaction, so a crash leaves each study in a state that `recover`
resumes: a study caught analysing is analysed again (result UIDs are deterministic, a resend
is idempotent), deliveries not yet made are retried, deliveries awaiting storage commitment
keep waiting until their deadline. Each delivery attempt is claimed (`claim_due`), so two
workers never send the same results at once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from dicomnode.commitment_queue import CommitmentQueue
from dicomnode.completeness import CompletenessParams, is_study_complete
from dicomnode.index import StudyRow
from dicomnode.migrations import STAGE_BUCKETS, TIMINGS_KEPT_S
from dicomnode.retry import RetryPolicy, next_attempt_at
from dicomnode.settle import REVISION_REASON, needs_revision, settle_study
from dicomnode.states import StudyState
from dicomnode.supervision import AnalysisHealth

STAGES = ("receive", "wait", "preprocess", "inference", "report", "send")
WITHDRAWN_REASON = "instance received before the results were sent: analysed again"
MAX_CRASHES = 3
"""Times a study may stop its analysis by a worker's death (or the node's) before it fails."""
LEASE_EXTRA_MESSAGES = 3
"""Beyond one per file, the exchanges a send may wait for: connect, association, release."""


@dataclass(frozen=True)
class Delivery:
    """Results of one study for one destination (`AET@HOST:PORT`)."""

    study_uid: str
    destination: str
    files: tuple[Path, ...]
    attempts: int
    first_failure_at: float | None


@dataclass(frozen=True)
class StageHistogram:
    """One stage's timings since the first: cumulative counts per bucket bound (`STAGE_BUCKETS`,
    then +Inf), their number and their sum, as a Prometheus histogram wants them."""

    buckets: tuple[tuple[float, int], ...]
    count: int
    sum: float


class WorkQueue(CommitmentQueue):
    """The index plus the operations of the analysis and sending side, storage commitment
    included (its tables are made by dicomnode.migrations, like the index's)."""

    def promote_complete(self, now: float, params: CompletenessParams) -> list[str]:
        """Move every receiving study that is complete at `now` to 'complete'."""
        ready = [s.study_uid for s in self.studies_in_state(StudyState.RECEIVING)
                 if is_study_complete(s, now, params)]  # fmt: skip
        for uid in ready:
            with self._transaction() as db:
                db.execute(
                    "UPDATE studies SET state = ?, state_changed_at = ? "
                    "WHERE study_uid = ? AND state = ?",
                    (StudyState.COMPLETE, now, uid, StudyState.RECEIVING),
                )
        return ready

    def claim(self, now: float | None = None, *, worker: int | None = None) -> StudyRow | None:
        """Atomically take the oldest complete study for analysis (clears needs_revision), for
        the process `worker` (default: this one), which `release_crashed` names."""
        at = time.time() if now is None else now
        pid = os.getpid() if worker is None else worker
        with self._transaction() as db:
            row = db.execute(
                "SELECT study_uid FROM studies WHERE state = ? ORDER BY state_changed_at LIMIT 1",
                (StudyState.COMPLETE,),
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE studies SET state = ?, state_changed_at = ?, needs_revision = 0,"
                " analysed_by = ? WHERE study_uid = ?",
                (StudyState.ANALYSING, at, pid, row[0]),
            )
        return self.study(row[0])

    def recover(self, max_crashes: int = MAX_CRASHES) -> int:
        """At start-up: studies caught mid-analysis are analysed again (each counts a crash, as
        `release_crashed` says), and deliveries caught mid-send are due again at their time (no
        worker of the crashed run holds them now). Returns how many studies went back."""
        with self._transaction() as db:
            db.execute("DELETE FROM delivery_leases")
        released = self._release("1 = 1", (), "the node stopped while analysing it", max_crashes)
        return sum(1 for _, state in released if state == StudyState.COMPLETE)

    def release_crashed(
        self, worker: int, why: str, max_crashes: int = MAX_CRASHES
    ) -> list[tuple[str, str]]:
        """The studies the dead process `worker` was analysing go back in the queue, or fail
        once workers died `max_crashes` times analysing them (a study that crashes every worker
        must not stop analysis for all the others); `why` is how it died. Returns (study, new
        state) pairs."""
        return self._release("analysed_by = ?", (worker,), why, max_crashes)

    def _release(
        self, where: str, args: tuple[int, ...], why: str, max_crashes: int
    ) -> list[tuple[str, str]]:
        released: list[tuple[str, str]] = []
        with self._transaction() as db:
            rows = db.execute(
                f"SELECT study_uid, crashes FROM studies WHERE state = ? AND {where}",
                (StudyState.ANALYSING, *args),
            ).fetchall()
            for study_uid, crashes in rows:
                count = int(crashes) + 1
                if count >= max_crashes:
                    state = StudyState.FAILED
                    reason = (f"analysis stopped {count} times ({why}); not retried: "
                              "re-send the study, or ask the maintainers")  # fmt: skip
                else:
                    state = StudyState.COMPLETE
                    reason = f"analysis interrupted ({why}); queued again"
                db.execute(
                    "UPDATE studies SET state = ?, reason = ?, crashes = ?, analysed_by = NULL,"
                    " state_changed_at = ? WHERE study_uid = ?",
                    (state, reason, count, time.time(), study_uid),
                )
                released.append((str(study_uid), state))
        return released

    def schedule(self, study_uid: str, destinations: list[str], files: list[Path], now: float,
                 *, final_state: str = StudyState.DONE, reason: str = "",
                 hold_until: float = 0.0) -> None:  # fmt: skip
        """Results are on disk: deliver `files` to every destination, from now or from
        `hold_until` (the end of the grace period, see dicomnode.completeness), whichever is
        later; the study ends in `final_state` (with `reason`) once all are delivered."""
        listing = "\n".join(str(f) for f in files)
        with self._transaction() as db:
            db.execute("DELETE FROM deliveries WHERE study_uid = ?", (study_uid,))
            db.execute("DELETE FROM delivery_leases WHERE study_uid = ?", (study_uid,))
            for destination in destinations:
                db.execute(
                    "INSERT INTO deliveries (study_uid, destination, files, next_attempt_at, "
                    "final_state) VALUES (?, ?, ?, ?, ?)",
                    (study_uid, destination, listing, max(now, hold_until), final_state),
                )
            state: str
            if destinations:
                state = StudyState.SENDING
            elif needs_revision(db, study_uid):
                state, reason = StudyState.RECEIVING, REVISION_REASON
            else:
                state, reason = final_state, reason or "no destination"
            db.execute(
                "UPDATE studies SET state = ?, reason = ?, state_changed_at = ?,"
                " analysed_by = NULL, crashes = 0 WHERE study_uid = ? AND state = ?",
                (state, reason, now, study_uid, StudyState.ANALYSING),
            )

    def withdraw_stale(self, now: float) -> list[tuple[str, tuple[Path, ...]]]:
        """Withdraw results no destination has had yet from studies that received an instance
        after their claim: their deliveries go, and the studies go back to 'receiving' to be
        analysed again with that instance, a first report instead of a sent one and its
        revision. Once any delivery of a study was attempted (or is being attempted), its
        results go out and a revision follows, as `settle_study` says. Returns each withdrawn
        study with its result files, for the caller to remove: never sent, they must not become
        the predecessor of the next SR (a crash before the removal leaves that only)."""
        withdrawn: list[tuple[str, tuple[Path, ...]]] = []
        with self._transaction() as db:
            rows = db.execute(
                "SELECT study_uid FROM studies s WHERE state = ? AND needs_revision = 1"
                " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.study_uid = s.study_uid"
                " AND (d.attempts > 0 OR d.status != 'pending'))"
                " AND NOT EXISTS (SELECT 1 FROM delivery_leases l"
                " WHERE l.study_uid = s.study_uid AND l.until > ?)",
                (StudyState.SENDING, now),
            ).fetchall()
            for (study_uid,) in rows:
                listings = db.execute("SELECT files FROM deliveries WHERE study_uid = ?",
                                      (study_uid,)).fetchall()  # fmt: skip
                files = {Path(p) for (listing,) in listings for p in listing.splitlines()}
                db.execute("DELETE FROM deliveries WHERE study_uid = ?", (study_uid,))
                db.execute(
                    "UPDATE studies SET state = ?, reason = ?, needs_revision = 0,"
                    " state_changed_at = ? WHERE study_uid = ?",
                    (StudyState.RECEIVING, WITHDRAWN_REASON, now, study_uid),
                )
                withdrawn.append((str(study_uid), tuple(sorted(files))))
        return withdrawn

    def due(self, now: float) -> list[Delivery]:
        """Pending deliveries whose next attempt is due."""
        rows = self._query(
            "SELECT study_uid, destination, files, attempts, first_failure_at FROM deliveries "
            "WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at",
            (now,),
        )
        return [Delivery(r[0], r[1], tuple(Path(p) for p in r[2].splitlines()), r[3], r[4])
                for r in rows]  # fmt: skip

    def claim_due(self, now: float, timeout_s: float) -> Delivery | None:
        """Take the oldest pending delivery due at `now` for one attempt, None when none is.

        The claim is a lease of `timeout_s` per network exchange the send may wait for: until
        `record_attempt` (or the lease's end, should the worker die mid-send) no other worker
        takes the same results, so two workers never deliver, and report, one study twice.
        """
        with self._transaction() as db:
            row = db.execute(
                "SELECT study_uid, destination, files, attempts, first_failure_at FROM deliveries d"
                " WHERE status = 'pending' AND next_attempt_at <= ? AND NOT EXISTS (SELECT 1 FROM"
                " delivery_leases l WHERE l.study_uid = d.study_uid"
                " AND l.destination = d.destination AND l.until > ?)"
                " ORDER BY next_attempt_at LIMIT 1",
                (now, now),
            ).fetchone()
            if row is None:
                return None
            delivery = Delivery(row[0], row[1], tuple(Path(p) for p in row[2].splitlines()),
                                row[3], row[4])  # fmt: skip
            until = now + timeout_s * (len(delivery.files) + LEASE_EXTRA_MESSAGES)
            db.execute("INSERT OR REPLACE INTO delivery_leases VALUES (?, ?, ?)",
                       (delivery.study_uid, delivery.destination, until))  # fmt: skip
        return delivery

    def record_attempt(self, delivery: Delivery, *, sent: bool, reason: str, now: float,
                       policy: RetryPolicy, random_unit: float = 0.5,
                       give_up: bool = False) -> str:  # fmt: skip
        """Record one attempt; returns the delivery's new status: sent, pending or failed."""
        attempts = delivery.attempts + 1
        first = delivery.first_failure_at
        if sent:
            status, next_at = "sent", now
        else:
            first = now if first is None else first
            at = next_attempt_at(policy, first_failure_at=first, attempts=attempts, now=now,
                                 random_unit=random_unit)  # fmt: skip
            status, next_at = ("failed", now) if at is None or give_up else ("pending", at)
        with self._transaction() as db:
            db.execute("DELETE FROM delivery_leases WHERE study_uid = ? AND destination = ?",
                       (delivery.study_uid, delivery.destination))  # fmt: skip
            db.execute(
                "UPDATE deliveries SET attempts = ?, first_failure_at = ?, next_attempt_at = ?, "
                "status = ?, reason = ? WHERE study_uid = ? AND destination = ?",
                (attempts, first, next_at, status, reason, delivery.study_uid,
                 delivery.destination),
            )  # fmt: skip
            settle_study(db, delivery.study_uid, now)
        return status

    def record_timing(self, study_uid: str, stage: str, seconds: float, at: float) -> None:
        """One stage's duration for a study. The stage histogram counts it (a trigger, see
        dicomnode.migrations); the per-study row is kept TIMINGS_KEPT_S."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}")
        with self._transaction() as db:
            db.execute("INSERT INTO stage_timings VALUES (?, ?, ?, ?)",
                       (study_uid, stage, seconds, at))  # fmt: skip
            db.execute("DELETE FROM stage_timings WHERE at < ?", (at - TIMINGS_KEPT_S,))

    def timings(self, since: float = 0.0) -> list[tuple[str, float]]:
        """(stage, seconds) per study recorded since `since` (TIMINGS_KEPT_S at most)."""
        rows = self._query("SELECT stage, seconds FROM stage_timings WHERE at >= ?", (since,))
        return [(r[0], float(r[1])) for r in rows]

    def stage_histograms(self) -> dict[str, StageHistogram]:
        """Every stage's histogram since the first timing; one bounded read (a row per stage
        and bucket), whatever the number of studies."""
        rows = self._query("SELECT stage, le, count, seconds FROM stage_histogram")
        histograms = {}
        for stage in STAGES:
            mine = [(float(le), int(n), float(s)) for name, le, n, s in rows if name == stage]
            cumulative = tuple((bound, sum(n for le, n, _ in mine if le <= bound))
                               for bound in (*STAGE_BUCKETS, float("inf")))  # fmt: skip
            histograms[stage] = StageHistogram(cumulative, sum(n for _, n, _ in mine),
                                               sum(s for _, _, s in mine))  # fmt: skip
        return histograms

    def failure_reasons(self) -> dict[str, int]:
        """Failed studies by the first part of their reason."""
        rows = self._query("SELECT reason FROM studies WHERE state = ?", (StudyState.FAILED,))
        counts: dict[str, int] = {}
        for (reason,) in rows:
            key = (reason.split(":")[0] or "unknown")[:60]
            counts[key] = counts.get(key, 0) + 1
        return counts

    def record_analysis_health(self, health: AnalysisHealth) -> None:
        """Keep the supervisor's view of the analysis workers (see `analysis_health`)."""
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO analysis_health VALUES (1, ?, ?, ?, ?, ?)",
                       (health.state, health.reason, health.failures, health.since,
                        health.retry_at))  # fmt: skip

    def analysis_health(self) -> AnalysisHealth:
        """The analysis workers' health the service last recorded ('running' if never)."""
        rows = self._query("SELECT state, reason, failures, since, retry_at FROM analysis_health")
        if not rows:
            return AnalysisHealth()
        state, reason, failures, since, retry_at = rows[0]
        return AnalysisHealth(state, reason, int(failures), float(since), retry_at)

    def backlog(self) -> dict[str, int]:
        """Pending deliveries per destination."""
        rows = self._query(
            "SELECT destination, COUNT(*) FROM deliveries WHERE status = 'pending' "
            "GROUP BY destination"
        )
        return {r[0]: int(r[1]) for r in rows}
