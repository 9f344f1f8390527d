"""The SQLite index of received instances, studies and associations (WAL, synchronous=FULL).

A study's state belongs to the analysis side; receiving only opens a study ('receiving'), flags
needs_revision=1 when an instance arrives after analysis began, and reopens ('receiving') one
that had ended (`REOPENED_BY_ARRIVAL`: 'done', 'failed', 'out_of_scope'), so that it is analysed
again and its report revised. An instance received again (same SOP Instance UID, the latest copy
replaces the file) is an arrival like any other. Our own results (``ours``) never touch their
study. The schema (the index's and the work queue's) is made and migrated by dicomnode.migrations.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dicomnode.migrations import migrate
from dicomnode.states import StudyState

STUDY_STATES = tuple(StudyState)
REOPENED_BY_ARRIVAL = (StudyState.DONE, StudyState.FAILED, StudyState.OUT_OF_SCOPE)
"""The ended states an arriving instance reopens: results (or the verdict that there were none to
make) cover the study as it was, not with this instance (a wrist view after the hand view, or the
same instance re-sent with a corrected Body Part Examined)."""
_REOPEN = ", ".join(f"'{state}'" for state in REOPENED_BY_ARRIVAL)
_STALE = f"'{StudyState.COMPLETE}', '{StudyState.ANALYSING}', '{StudyState.SENDING}', {_REOPEN}"

# A store into a study and a purge of it exclude each other (see `Index.study_lock`): across
# threads by these locks, across processes (receivers, the retention job) by flock on one file
# per stripe. Striped, so stores into different studies rarely wait for one another.
_STUDY_LOCKS = tuple(threading.Lock() for _ in range(256))


@dataclass(frozen=True)
class StudyRow:
    """A study as the index knows it. `released_at` is None while an association that sent to
    it is open; `n_instances` counts received instances, our own results excluded."""

    study_uid: str
    state: str
    first_received: float
    last_received: float
    released_at: float | None
    n_instances: int
    needs_revision: bool
    state_changed_at: float
    reason: str


@dataclass(frozen=True)
class InstanceRow:
    """One received instance."""

    sop_uid: str
    study_uid: str
    series_uid: str
    sop_class_uid: str
    path: Path
    calling_aet: str
    association_id: str
    received_at: float
    ours: bool


_STUDY_FIELDS = tuple(StudyRow.__dataclass_fields__)
_INSTANCE_FIELDS = tuple(InstanceRow.__dataclass_fields__)
_STUDY_COLUMNS, _INSTANCE_COLUMNS = ", ".join(_STUDY_FIELDS), ", ".join(_INSTANCE_FIELDS)


class Index:
    """One SQLite connection shared by the association threads, serialised by a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # Autocommit mode: each write below runs in its own explicit BEGIN IMMEDIATE.
        self._db = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
        # recursive_triggers: a REPLACE that removes a row fires its delete trigger too, which
        # keeps the counters of dicomnode.migrations version 2 right.
        self._db.executescript(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA recursive_triggers=ON;"
        )
        self._lock_files = _LockFiles(path.parent / "locks")
        try:
            migrate(self._db, path)  # SchemaError for a database newer than this code
        except BaseException:
            self._db.close()
            raise

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def record_instance(
        self,
        *,
        sop_uid: str,
        study_uid: str,
        series_uid: str,
        sop_class_uid: str,
        path: Path,
        calling_aet: str,
        association_id: str,
        received_at: float,
        ours: bool,
    ) -> bool:
        """Index a stored instance and update its study; True if the SOP UID was known."""
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        with self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO instance_sizes VALUES (?, ?)", (sop_uid, size))
            known = db.execute("SELECT 1 FROM instances WHERE sop_uid = ?", (sop_uid,)).fetchone()
            db.execute(
                f"INSERT OR REPLACE INTO instances ({_INSTANCE_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (sop_uid, study_uid, series_uid, sop_class_uid, str(path), calling_aet,
                 association_id, received_at, int(ours)),
            )  # fmt: skip
            if ours:
                return known is not None
            db.execute(
                "INSERT OR IGNORE INTO studies (study_uid, state, first_received, last_received,"
                " state_changed_at, reason) VALUES (?, ?, ?, ?, ?, 'first instance')",
                (study_uid, StudyState.RECEIVING, received_at, received_at, received_at),
            )
            db.execute(
                f"UPDATE studies SET needs_revision = needs_revision OR state IN ({_STALE}),"
                f" state_changed_at = IIF(state IN ({_REOPEN}), ?, state_changed_at),"
                f" reason = IIF(state IN ({_REOPEN}), 'instance received after ' || state, reason),"
                f" state = IIF(state IN ({_REOPEN}), '{StudyState.RECEIVING}', state),"
                f" crashes = IIF(state IN ({_REOPEN}), 0, crashes),"
                " last_received = MAX(last_received, ?), released_at = NULL,"
                " n_instances = (SELECT COUNT(*) FROM instances WHERE study_uid = ? AND ours = 0)"
                " WHERE study_uid = ?",
                (received_at, received_at, study_uid, study_uid),
            )
            db.execute(
                "INSERT OR IGNORE INTO association_studies VALUES (?, ?)",
                (association_id, study_uid),
            )
            return known is not None

    def association_opened(
        self, association_id: str, calling_aet: str, address: str, at: float
    ) -> None:
        """Record an accepted association."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO associations VALUES (?, ?, ?, ?, NULL, NULL)",
                (association_id, calling_aet, address, at),
            )

    def association_closed(self, association_id: str, at: float, *, released: bool) -> None:
        """Record its end; its studies with no other sender open get released_at = `at`."""
        with self._transaction() as db:
            db.execute(
                "UPDATE associations SET closed_at = ?, released = ? WHERE association_id = ?",
                (at, int(released), association_id),
            )
            db.execute(
                "UPDATE studies SET released_at = ? WHERE study_uid IN"
                " (SELECT study_uid FROM association_studies WHERE association_id = ?)"
                " AND NOT EXISTS (SELECT 1 FROM association_studies s"
                "  JOIN associations a ON a.association_id = s.association_id"
                "  WHERE s.study_uid = studies.study_uid AND a.closed_at IS NULL)",
                (at, association_id),
            )

    def close_open_associations(self, at: float, *, prefix: str = "") -> int:
        """Close, as aborted at `at`, the associations a crash left open; call at start-up.
        With `prefix`, only those whose id starts with it (a receiver process that died, see
        dicomnode.receivers)."""
        rows = self._query(
            "SELECT association_id FROM associations WHERE closed_at IS NULL"
            " AND substr(association_id, 1, ?) = ?",
            (len(prefix), prefix),
        )
        for (association_id,) in rows:
            self.association_closed(association_id, at, released=False)
        return len(rows)

    def study(self, study_uid: str) -> StudyRow | None:
        """The study `study_uid`, or None if no instance of it was received."""
        return next(iter(self._studies("study_uid = ?", (study_uid,))), None)

    def calling_aets(self, study_uid: str) -> list[str]:
        """The calling AE titles that sent instances of the study (our own results excluded)."""
        rows = self._query(
            "SELECT DISTINCT calling_aet FROM instances WHERE study_uid = ? AND ours = 0 "
            "ORDER BY calling_aet",
            (study_uid,),
        )
        return [str(r[0]).strip() for r in rows]

    def instances(self, study_uid: str, *, include_ours: bool = False) -> list[InstanceRow]:
        """The instances of a study, ordered by arrival; our own results only if asked."""
        rows = self._query(
            f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE study_uid = ?"
            " AND (? OR ours = 0) ORDER BY received_at, sop_uid",
            (study_uid, int(include_ours)),
        )
        return [_instance_row(r) for r in rows]

    def studies_in_state(self, *states: str) -> list[StudyRow]:
        """The studies in any of `states`, oldest first."""
        _check_state(*states)
        marks = ", ".join("?" for _ in states)
        return self._studies(f"state IN ({marks}) ORDER BY first_received, study_uid", states)

    def set_state(
        self, study_uid: str, state: str, *, reason: str = "", at: float | None = None
    ) -> None:
        """Move a study to `state`, recording when (`at`, default now) and why; ValueError for
        an unknown state, KeyError for a study the index does not hold."""
        _check_state(state)
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE studies SET state = ?, reason = ?, state_changed_at = ? WHERE study_uid=?",
                (state, reason, time.time() if at is None else at, study_uid),
            )
            if cursor.rowcount == 0:
                raise KeyError(f"study {study_uid} is not in the index")

    def received_bytes(self) -> int:
        """Bytes of the received instances kept (our own results excluded)."""
        return int(self._query("SELECT received_bytes FROM instance_totals")[0][0])

    def instance(self, sop_uid: str) -> InstanceRow | None:
        """The instance `sop_uid` (our own results included), or None if not received."""
        rows = self._query(f"SELECT {_INSTANCE_COLUMNS} FROM instances WHERE sop_uid = ?",
                           (sop_uid,))  # fmt: skip
        return _instance_row(rows[0]) if rows else None

    def counts(self) -> dict[str, int]:
        """Studies per state (every state present, zero included) and the instance total."""
        result: dict[str, int] = dict.fromkeys(STUDY_STATES, 0)
        result.update(self._query("SELECT state, n FROM study_counts WHERE n > 0"))
        return result | {"instances": self._query("SELECT instances FROM instance_totals")[0][0]}

    def study_lock(self, study_uid: str) -> contextlib.AbstractContextManager[None]:
        """The lock a store into `study_uid` (file and index row) and a purge of that study hold,
        so that a purge never removes an instance being stored, in this process or in another
        (receiver processes, see dicomnode.receivers): a thread lock, then an flock on the
        stripe's file beside the database."""
        stripe = zlib.crc32(study_uid.encode()) % len(_STUDY_LOCKS)
        return _held(_STUDY_LOCKS[stripe], self._lock_files, stripe)

    def purge_candidates(self, states: tuple[str, ...], changed_before: float) -> list[StudyRow]:
        """Studies in `states` since before `changed_before` and not purged since, oldest first."""
        _check_state(*states)
        marks = ", ".join("?" for _ in states)
        return self._studies(
            f"state IN ({marks}) AND state_changed_at < ? AND NOT EXISTS (SELECT 1 FROM purged p"
            " WHERE p.study_uid = studies.study_uid"
            " AND p.state_changed_at = studies.state_changed_at)"
            " ORDER BY state_changed_at, study_uid",
            (*states, changed_before),
        )

    def record_purge(
        self,
        study: StudyRow,
        *,
        at: float,
        instances: int,
        results: int,
        bytes_removed: int,
    ) -> bool:
        """After the files of `study` were removed: forget its instances and record the purge,
        provided the study is still in the state `study` shows (False, nothing recorded, if it
        moved on). The study row stays, in its final state."""
        with self._transaction() as db:
            row = db.execute(
                "SELECT state, state_changed_at FROM studies WHERE study_uid = ?",
                (study.study_uid,),
            ).fetchone()
            if row is None or (row[0], row[1]) != (study.state, study.state_changed_at):
                return False
            db.execute(
                "DELETE FROM instance_sizes WHERE sop_uid IN"
                " (SELECT sop_uid FROM instances WHERE study_uid = ?)",
                (study.study_uid,),
            )
            db.execute("DELETE FROM instances WHERE study_uid = ?", (study.study_uid,))
            db.execute(
                "INSERT OR REPLACE INTO purged VALUES (?, ?, ?, ?, ?, ?, ?)",
                (study.study_uid, study.state_changed_at, at, study.state, instances, results,
                 bytes_removed),
            )  # fmt: skip
            db.execute(
                "UPDATE purge_totals SET studies = studies + 1, instances = instances + ?,"
                " results = results + ?, bytes = bytes + ?",
                (instances, results, bytes_removed),
            )
            return True

    def forget_purged(self, purged_before: float) -> int:
        """Forget the studies purged before `purged_before` and still as their purge left them
        (same final state, no instance since): their rows, deliveries, commitments and timings,
        then the closed associations that sent nothing else. Keeps the index's size bounded by
        retention; the purge totals stay. A study sent again after this is a new study to the
        node (analysed again; its result UIDs are deterministic, so the PACS stores it once).
        Returns how many studies were forgotten."""
        with self._transaction() as db:
            db.execute("CREATE TEMP TABLE IF NOT EXISTS forgotten (study_uid TEXT PRIMARY KEY)")
            db.execute("DELETE FROM forgotten")
            db.execute(
                "INSERT INTO forgotten SELECT s.study_uid FROM studies s JOIN purged p"
                " ON p.study_uid = s.study_uid AND p.state_changed_at = s.state_changed_at"
                " WHERE p.purged_at < ? AND s.state = p.state"
                " AND NOT EXISTS (SELECT 1 FROM instances i WHERE i.study_uid = s.study_uid)",
                (purged_before,),
            )
            forgotten = "study_uid IN (SELECT study_uid FROM forgotten)"
            for table in ("deliveries", "delivery_leases", "commitments", "stage_timings",
                          "association_studies", "purged", "studies"):  # fmt: skip
                db.execute(f"DELETE FROM {table} WHERE {forgotten}")
            count = int(db.execute("SELECT COUNT(*) FROM forgotten").fetchone()[0])
            db.execute(
                "DELETE FROM associations WHERE closed_at < ? AND association_id NOT IN"
                " (SELECT association_id FROM association_studies)",
                (purged_before,),
            )
            db.execute("DELETE FROM forgotten")
        return count

    def purge_totals(self) -> dict[str, int]:
        """Purges so far: studies (each purge counted), instances, results and bytes removed."""
        row = self._query("SELECT studies, instances, results, bytes FROM purge_totals")[0]
        return dict(zip(("studies", "instances", "results", "bytes"), map(int, row), strict=True))

    def _studies(self, where: str, params: tuple[Any, ...]) -> list[StudyRow]:
        rows = self._query(f"SELECT {_STUDY_COLUMNS} FROM studies WHERE {where}", params)
        return [_study_row(r) for r in rows]

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error:
                # A COMMIT that failed (disk full, I/O error) may leave the transaction open;
                # SQLite usually rolls back by itself, but does not promise it.
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise


class _LockFiles:
    """The lock file of each stripe, opened for each hold and closed after it (flock locks
    belong to the open file, and the thread lock of the stripe orders the threads of this
    process): a process keeps no descriptor open between stores, however many stripes it
    touched."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def open(self, stripe: int) -> int:
        self.folder.mkdir(mode=0o700, exist_ok=True)
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        return os.open(self.folder / f"study-{stripe:03d}.lock", flags, 0o600)


@contextlib.contextmanager
def _held(lock: threading.Lock, files: _LockFiles, stripe: int) -> Iterator[None]:
    with lock:
        fd = files.open(stripe)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock


def _check_state(*states: str) -> None:
    for state in states:
        if state not in STUDY_STATES:
            raise ValueError(f"unknown study state {state!r}; one of {', '.join(STUDY_STATES)}")


def _study_row(r: tuple[Any, ...]) -> StudyRow:
    return StudyRow(**{**dict(zip(_STUDY_FIELDS, r, strict=True)), "needs_revision": bool(r[6])})


def _instance_row(r: tuple[Any, ...]) -> InstanceRow:
    fields = dict(zip(_INSTANCE_FIELDS, r, strict=True))
    return InstanceRow(**{**fields, "path": Path(r[4]), "ours": bool(r[8])})
