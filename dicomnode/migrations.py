"""Numbered schema migrations of the node's database (index.sqlite: the index and the work queue).

Each migration moves the schema from the version before it to its own; `migrate` applies, at
start, those a database lacks, in one transaction, after copying the database to
`<file>.v<N>.bak` (N: the version it held) with SQLite's backup API, which gives a consistent
copy even while other processes write in WAL mode. A failed migration rolls back and leaves the
database as it was. The version lives in the `schema_version` table that version 1 created: an
older release, which checks that table, refuses a database migrated past it instead of running
on a schema it does not know. A migration, once released, never changes: version 1 below is the
schema as it was before migrations existed, so a fixture of it can always be made.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("dicomnode.migrations")

STAGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
"""Upper bounds (seconds) of the stage histogram's buckets; past the last, +Inf. Part of the
schema of `stage_histogram` (its rows are counted per bound): changing them takes a migration."""
TIMINGS_KEPT_S = 30 * 86400.0
"""How long the per-study rows of `stage_timings` are kept; the histogram keeps them all."""


class SchemaError(RuntimeError):
    """The database holds a schema this release cannot use."""


@dataclass(frozen=True)
class Migration:
    """One step of the schema: `apply` moves a database from `version - 1` to `version`."""

    version: int
    description: str
    apply: Callable[[sqlite3.Connection], None]


def _sql(*statements: str) -> Callable[[sqlite3.Connection], None]:
    def apply(db: sqlite3.Connection) -> None:
        for statement in statements:
            db.execute(statement)

    return apply


def _bucket(seconds: str) -> str:
    """SQL for the upper bound of the bucket that holds `seconds` (9e999 reads as +Inf)."""
    cases = " ".join(f"WHEN {seconds} <= {bound!r} THEN {bound!r}" for bound in STAGE_BUCKETS)
    return f"CASE {cases} ELSE 9e999 END"


# Version 1: the schema before migrations, as Index and WorkQueue created it (the index's tables,
# then the queue's, and `purged`, which retention created on first use). Frozen.
_V1 = (
    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS studies (study_uid TEXT PRIMARY KEY, state TEXT NOT NULL,"
    " first_received REAL NOT NULL, last_received REAL NOT NULL, released_at REAL,"
    " n_instances INTEGER NOT NULL DEFAULT 0, needs_revision INTEGER NOT NULL DEFAULT 0,"
    " state_changed_at REAL NOT NULL, reason TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX IF NOT EXISTS studies_state ON studies (state)",
    "CREATE TABLE IF NOT EXISTS instances (sop_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL,"
    " series_uid TEXT NOT NULL, sop_class_uid TEXT NOT NULL, path TEXT NOT NULL,"
    " calling_aet TEXT NOT NULL, association_id TEXT NOT NULL, received_at REAL NOT NULL,"
    " ours INTEGER NOT NULL)",
    "CREATE INDEX IF NOT EXISTS instances_study ON instances (study_uid)",
    "CREATE TABLE IF NOT EXISTS associations (association_id TEXT PRIMARY KEY,"
    " calling_aet TEXT NOT NULL, address TEXT NOT NULL, opened_at REAL NOT NULL,"
    " closed_at REAL, released INTEGER)",
    # Bytes kept per instance (for the metrics).
    "CREATE TABLE IF NOT EXISTS instance_sizes (sop_uid TEXT PRIMARY KEY, bytes INTEGER NOT NULL)",
    # Which studies each association sent to: released_at waits for all of them to close.
    "CREATE TABLE IF NOT EXISTS association_studies (association_id TEXT NOT NULL,"
    " study_uid TEXT NOT NULL, PRIMARY KEY (association_id, study_uid))",
    "CREATE TABLE IF NOT EXISTS deliveries (study_uid TEXT NOT NULL, destination TEXT NOT NULL,"
    " files TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, first_failure_at REAL,"
    " next_attempt_at REAL NOT NULL, status TEXT NOT NULL DEFAULT 'pending',"
    " reason TEXT NOT NULL DEFAULT '', final_state TEXT NOT NULL DEFAULT 'done',"
    " PRIMARY KEY (study_uid, destination))",
    # A delivery a worker is attempting right now (see WorkQueue.claim_due).
    "CREATE TABLE IF NOT EXISTS delivery_leases (study_uid TEXT NOT NULL,"
    " destination TEXT NOT NULL, until REAL NOT NULL, PRIMARY KEY (study_uid, destination))",
    # The analysis workers' health as the supervisor last saw it, for `dicomnode status`.
    "CREATE TABLE IF NOT EXISTS analysis_health (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " state TEXT NOT NULL, reason TEXT NOT NULL, failures INTEGER NOT NULL, since REAL NOT NULL,"
    " retry_at REAL)",
    "CREATE TABLE IF NOT EXISTS stage_timings (study_uid TEXT NOT NULL, stage TEXT NOT NULL,"
    " seconds REAL NOT NULL, at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS stage_timings_at ON stage_timings (at)",
    # Studies whose files retention removed, one row per purge. `state_changed_at` is the
    # study's at the purge: a study reopened and delivered again since is purged again later.
    "CREATE TABLE IF NOT EXISTS purged (study_uid TEXT NOT NULL, state_changed_at REAL NOT NULL,"
    " purged_at REAL NOT NULL, state TEXT NOT NULL, instances INTEGER NOT NULL,"
    " results INTEGER NOT NULL, bytes INTEGER NOT NULL, PRIMARY KEY (study_uid, state_changed_at))",
)

_ADD_ONE = "ON CONFLICT (state) DO UPDATE SET n = n + 1"
_SIZE = "COALESCE((SELECT bytes FROM instance_sizes WHERE sop_uid = {0}.sop_uid), 0)"
_IS_RECEIVED = "EXISTS (SELECT 1 FROM instances WHERE sop_uid = {0}.sop_uid AND ours = 0)"

# Version 2: what a metrics scrape reads is bounded, whatever the history. Counters kept by
# triggers (so every writer keeps them right, in the writer's own transaction): studies per
# state, instances and bytes kept, a per-stage histogram of the stage timings. The per-study
# timing rows are kept TIMINGS_KEPT_S (pruned when one is recorded); pending deliveries get an
# index. A version-1 file made by the index alone, or never purged, lacks some tables: they are
# created first.
_V2 = (
    *_V1,
    # Studies per state.
    "CREATE TABLE study_counts (state TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
    "INSERT INTO study_counts SELECT state, COUNT(*) FROM studies GROUP BY state",
    "CREATE TRIGGER studies_counted AFTER INSERT ON studies BEGIN"
    f" INSERT INTO study_counts VALUES (NEW.state, 1) {_ADD_ONE}; END",
    "CREATE TRIGGER studies_uncounted AFTER DELETE ON studies BEGIN"
    " UPDATE study_counts SET n = n - 1 WHERE state = OLD.state; END",
    "CREATE TRIGGER studies_recounted AFTER UPDATE OF state ON studies"
    " WHEN OLD.state IS NOT NEW.state BEGIN"
    " UPDATE study_counts SET n = n - 1 WHERE state = OLD.state;"
    f" INSERT INTO study_counts VALUES (NEW.state, 1) {_ADD_ONE}; END",
    # Instances kept (ours included) and bytes of the received ones (ours excluded), whichever of
    # an instance's two rows is written or removed first.
    "CREATE TABLE instance_totals (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " instances INTEGER NOT NULL, received_bytes INTEGER NOT NULL)",
    "INSERT INTO instance_totals SELECT 1, (SELECT COUNT(*) FROM instances),"
    " (SELECT COALESCE(SUM(s.bytes), 0) FROM instance_sizes s JOIN instances i USING (sop_uid)"
    " WHERE i.ours = 0)",
    "CREATE TRIGGER instances_counted AFTER INSERT ON instances BEGIN"
    " UPDATE instance_totals SET instances = instances + 1,"
    f" received_bytes = received_bytes + IIF(NEW.ours = 0, {_SIZE.format('NEW')}, 0); END",
    "CREATE TRIGGER instances_uncounted AFTER DELETE ON instances BEGIN"
    " UPDATE instance_totals SET instances = instances - 1,"
    f" received_bytes = received_bytes - IIF(OLD.ours = 0, {_SIZE.format('OLD')}, 0); END",
    "CREATE TRIGGER instance_sizes_counted AFTER INSERT ON instance_sizes BEGIN"
    " UPDATE instance_totals SET received_bytes = received_bytes + NEW.bytes"
    f" WHERE {_IS_RECEIVED.format('NEW')}; END",
    "CREATE TRIGGER instance_sizes_uncounted AFTER DELETE ON instance_sizes BEGIN"
    " UPDATE instance_totals SET received_bytes = received_bytes - OLD.bytes"
    f" WHERE {_IS_RECEIVED.format('OLD')}; END",
    # Stage timings: count and sum per stage and bucket bound, since the first timing.
    "CREATE TABLE stage_histogram (stage TEXT NOT NULL, le REAL NOT NULL, count INTEGER NOT NULL,"
    " seconds REAL NOT NULL, PRIMARY KEY (stage, le)) WITHOUT ROWID",
    f"INSERT INTO stage_histogram SELECT stage, {_bucket('seconds')}, COUNT(*), SUM(seconds)"
    " FROM stage_timings GROUP BY 1, 2",
    "CREATE TRIGGER stage_timings_histogram AFTER INSERT ON stage_timings BEGIN"
    f" INSERT INTO stage_histogram VALUES (NEW.stage, {_bucket('NEW.seconds')}, 1, NEW.seconds)"
    " ON CONFLICT (stage, le) DO UPDATE SET count = count + 1,"
    " seconds = seconds + excluded.seconds; END",
    "DELETE FROM stage_timings WHERE at < CAST(strftime('%s', 'now') AS REAL)"
    f" - {TIMINGS_KEPT_S!r}",
    "CREATE INDEX deliveries_pending ON deliveries (status, next_attempt_at)",
)

_COUNT_ONE = "ON CONFLICT (status) DO UPDATE SET n = n + 1"

# Version 3: storage commitment (PS3.4 Annex J). One row per N-ACTION the node sent: the
# transaction UID it issued, the delivery it confirms (study, destination), the instances it
# names (JSON list of [SOP class, SOP instance]), when it was asked and until when a report is
# awaited, and the outcome: awaiting, committed, failed (the PACS listed failures or refused the
# request; `failures` says which and why) or expired (no report by the deadline). A delivery to
# a commitment destination waits in status 'committing' after its C-STOREs (see
# dicomnode.commitment_queue). Counts per status are kept by triggers, as in version 2.
_V3 = (
    "CREATE TABLE commitments (transaction_uid TEXT PRIMARY KEY, study_uid TEXT NOT NULL,"
    " destination TEXT NOT NULL, instances TEXT NOT NULL, requested_at REAL NOT NULL,"
    " deadline REAL NOT NULL, status TEXT NOT NULL DEFAULT 'awaiting',"
    " failures TEXT NOT NULL DEFAULT '', reported_at REAL, reported_by TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX commitments_awaiting ON commitments (status, deadline)",
    "CREATE INDEX commitments_delivery ON commitments (study_uid, destination, requested_at)",
    "CREATE TABLE commitment_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL) WITHOUT ROWID",
    "CREATE TRIGGER commitments_counted AFTER INSERT ON commitments BEGIN"
    f" INSERT INTO commitment_counts VALUES (NEW.status, 1) {_COUNT_ONE}; END",
    "CREATE TRIGGER commitments_uncounted AFTER DELETE ON commitments BEGIN"
    " UPDATE commitment_counts SET n = n - 1 WHERE status = OLD.status; END",
    "CREATE TRIGGER commitments_recounted AFTER UPDATE OF status ON commitments"
    " WHEN OLD.status IS NOT NEW.status BEGIN"
    " UPDATE commitment_counts SET n = n - 1 WHERE status = OLD.status;"
    f" INSERT INTO commitment_counts VALUES (NEW.status, 1) {_COUNT_ONE}; END",
)

# Version 4: which worker process analyses a study (`analysed_by`, its pid while the study is
# 'analysing', else NULL) and how many times a worker died while analysing it (`crashes`), so
# the service puts a dead worker's study back in the queue at once, and fails a study that kills
# every worker that takes it instead of restarting them for ever (dicomnode.work_queue).
_V4 = (
    "ALTER TABLE studies ADD COLUMN analysed_by INTEGER",
    "ALTER TABLE studies ADD COLUMN crashes INTEGER NOT NULL DEFAULT 0",
)

# Version 5: the purge totals kept in one row, seeded from `purged`, so that the index can forget
# purged studies long after their purge (`Index.forget_purged`) without losing the totals.
_V5 = (
    "CREATE TABLE purge_totals (id INTEGER PRIMARY KEY CHECK (id = 1), studies INTEGER NOT NULL,"
    " instances INTEGER NOT NULL, results INTEGER NOT NULL, bytes INTEGER NOT NULL)",
    "INSERT INTO purge_totals SELECT 1, COUNT(*), COALESCE(SUM(instances), 0),"
    " COALESCE(SUM(results), 0), COALESCE(SUM(bytes), 0) FROM purged",
)

MIGRATIONS = (
    Migration(1, "the index and the work queue", _sql(*_V1)),
    Migration(2, "bounded metrics: counters, stage histogram, timing retention", _sql(*_V2)),
    Migration(3, "storage commitment: transactions and their outcome", _sql(*_V3)),
    Migration(4, "the worker analysing a study, and the crashes it caused", _sql(*_V4)),
    Migration(5, "purge totals that outlive the purged studies' rows", _sql(*_V5)),
)
CURRENT_VERSION = MIGRATIONS[-1].version


def schema_version(db: sqlite3.Connection) -> int:
    """The schema version of the database open in `db`; 0 for a new, empty one."""
    table = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    if db.execute(table).fetchone() is None:
        return 0
    return int(db.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0])


def backup_path(path: Path, version: int) -> Path:
    """Where the copy of `path` taken before migrating it from `version` goes."""
    return path.with_name(f"{path.name}.v{version}.bak")


def migrate(db: sqlite3.Connection, path: Path) -> Path | None:
    """Bring the database `path`, open in `db` (autocommit), to CURRENT_VERSION; returns the
    backup copy taken first, None when none was needed (a new or an up-to-date database).
    SchemaError, nothing changed, for a database newer than this release."""
    db.execute("BEGIN IMMEDIATE")  # one process migrates; the others then find it done
    try:
        found = schema_version(db)
        if found > CURRENT_VERSION:
            raise SchemaError(
                f"{path} has schema version {found}, newer than the {CURRENT_VERSION} this"
                " release of dicomnode knows: run the newer release, or restore the"
                f" {backup_path(path, CURRENT_VERSION).name} copy it made when it migrated"
            )
        backup = None
        if found < CURRENT_VERSION:
            if found > 0:
                backup = _backup(path, found)
            for migration in MIGRATIONS:
                if migration.version > found:
                    migration.apply(db)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (?)", (CURRENT_VERSION,))
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    if found < CURRENT_VERSION:
        steps = ", ".join(f"{m.version} ({m.description})" for m in MIGRATIONS
                          if m.version > found)  # fmt: skip
        log.info("%s: schema migrated from version %d to %d: %s%s", path, found,
                 CURRENT_VERSION, steps, f"; the version {found} copy is {backup}" if backup
                 else "")  # fmt: skip
    return backup


def _backup(path: Path, version: int) -> Path:
    """Copy `path` as its last commit left it (the caller holds the write lock, so no commit
    comes between the copy and the migration). A second connection reads it: SQLite's backup
    cannot read through a connection that is writing."""
    target = backup_path(path, version)
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    source, copy = sqlite3.connect(path, timeout=30), sqlite3.connect(partial)
    try:
        source.backup(copy)
    finally:
        copy.close()
        source.close()
    os.replace(partial, target)  # never a half copy under the backup's name
    return target
