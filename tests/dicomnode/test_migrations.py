"""Schema migrations of index.sqlite, the bounded metrics they bring, and the typed states."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from dicomnode import migrations
from dicomnode.health import NodeCollector
from dicomnode.migrations import CURRENT_VERSION, STAGE_BUCKETS, SchemaError, backup_path
from dicomnode.states import StudyState
from dicomnode.work_queue import STAGES, WorkQueue

ROOT = Path(__file__).resolve().parents[2]
NOW = time.time()
OLD = NOW - 90 * 86400  # past the 30 days the per-study timing rows are kept

# (study, state, instances received, of ours) as release 1 left them.
STUDIES = [
    ("1.2.3.1", "receiving", 1, 0),
    ("1.2.3.2", "complete", 2, 0),
    ("1.2.3.3", "analysing", 2, 0),
    ("1.2.3.4", "sending", 2, 2),
    ("1.2.3.5", "done", 3, 2),
    ("1.2.3.6", "failed", 1, 0),
    ("1.2.3.7", "out_of_scope", 1, 1),
    ("1.2.3.8", "done", 2, 2),
]
TIMINGS = [  # (study, stage, seconds, at)
    ("1.2.3.5", "receive", 0.05, NOW - 600),
    ("1.2.3.5", "wait", 2.5, NOW - 590),
    ("1.2.3.5", "inference", 0.7, NOW - 580),
    ("1.2.3.5", "send", 4000.0, NOW - 570),
    ("1.2.3.6", "wait", 0.25, NOW - 500),
    ("1.2.3.8", "wait", 30.0, OLD),
    ("1.2.3.8", "preprocess", 12.0, OLD),
]


def _v1_database(path: Path) -> sqlite3.Connection:
    """A version-1 database with realistic rows; the connection stays open (WAL not folded)."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;")
    db.execute("BEGIN")
    migrations.MIGRATIONS[0].apply(db)
    db.execute("INSERT INTO schema_version VALUES (1)")
    for n, (uid, state, received, ours) in enumerate(STUDIES):
        at = NOW - 3600 + n
        db.execute(
            "INSERT INTO studies VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (uid, state, at, at + 1, at + 2, received, int(state == "analysing"), at + 3,
             "send: association rejected" if state == "failed" else ""),
        )  # fmt: skip
        db.execute("INSERT INTO associations VALUES (?, 'CR1', '127.0.0.1', ?, ?, 1)",
                   (f"a{n}", at, at + 2))  # fmt: skip
        db.execute("INSERT INTO association_studies VALUES (?, ?)", (f"a{n}", uid))
        for k in range(received + ours):
            sop = f"{uid}.{k}"
            db.execute(
                "INSERT INTO instances VALUES (?, ?, ?, '1.2.840.10008.5.1.4.1.1.1', ?, 'CR1',"
                " ?, ?, ?)",
                (sop, uid, f"{uid}.9", f"/spool/{sop}.dcm", f"a{n}", at, int(k >= received)),
            )
            db.execute("INSERT INTO instance_sizes VALUES (?, ?)", (sop, 1000 * (n + 1) + k))
        if state in ("sending", "done", "failed"):
            status = {"sending": "pending", "done": "sent", "failed": "failed"}[state]
            db.execute("INSERT INTO deliveries VALUES (?, 'PACS@127.0.0.1:104', 'out/sr.dcm', 1,"
                       " NULL, ?, ?, '', 'done')", (uid, at + 4, status))  # fmt: skip
    db.execute("INSERT INTO purged VALUES ('1.2.3.8', 1.0, 2.0, 'done', 2, 2, 5000)")
    db.execute("INSERT INTO analysis_health VALUES (1, 'running', '', 0, 1.0, NULL)")
    db.executemany("INSERT INTO stage_timings VALUES (?, ?, ?, ?)", TIMINGS)
    db.execute("COMMIT")
    return db


def _rows(db: sqlite3.Connection, table: str) -> list[tuple[Any, ...]]:
    return sorted(db.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


def _dump(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def _version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return migrations.schema_version(db)
    finally:
        db.close()


def _expected_histogram(stage: str) -> tuple[list[tuple[float, int]], int, float]:
    values = [s for _, name, s, _ in TIMINGS if name == stage]
    bounds = (*STAGE_BUCKETS, float("inf"))
    return [(b, sum(1 for v in values if v <= b)) for b in bounds], len(values), sum(values)


def test_a_version_1_database_is_migrated_after_a_backup(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    fixture = _v1_database(path)  # still open: the backup must read what only the WAL holds
    original = _dump(path)
    tables = ("studies", "instances", "instance_sizes", "associations", "association_studies",
              "deliveries", "purged", "analysis_health")  # fmt: skip
    before = {table: _rows(fixture, table) for table in tables}

    queue = WorkQueue(path)
    fixture.close()

    backup = backup_path(path, 1)
    assert backup.name == "index.sqlite.v1.bak"
    assert _dump(backup) == original
    assert _version(backup) == 1
    assert _version(path) == CURRENT_VERSION
    after = sqlite3.connect(path)
    migrated = {table: _rows(after, table) for table in tables}
    # Version 4 added two columns to studies: no worker holds a study, none has crashed one.
    assert {row[-2:] for row in migrated["studies"]} == {(None, 0)}
    migrated["studies"] = [row[:-2] for row in migrated["studies"]]
    assert migrated == before
    # The histogram holds every timing, old ones included; the per-study rows only recent ones.
    histograms = queue.stage_histograms()
    for stage in STAGES:
        buckets, count, total = _expected_histogram(stage)
        assert list(histograms[stage].buckets) == buckets, stage
        assert (histograms[stage].count, histograms[stage].sum) == (count, pytest.approx(total))
    recent = [t for t in TIMINGS if t[3] != OLD]
    assert _rows(after, "stage_timings") == sorted(recent, key=repr)
    # The counters start from what the tables held.
    counts = queue.counts()
    for state in StudyState:
        assert counts[state] == sum(1 for s in STUDIES if s[1] == state), state
    assert counts["instances"] == sum(r + o for _, _, r, o in STUDIES)
    received = after.execute("SELECT SUM(s.bytes) FROM instance_sizes s JOIN instances i"
                             " USING (sop_uid) WHERE i.ours = 0").fetchone()[0]  # fmt: skip
    assert queue.received_bytes() == received > 0
    assert queue.failure_reasons() == {"send": 1}
    assert queue.backlog() == {"PACS@127.0.0.1:104": 1}
    # Version 5 seeds the purge totals from the purges recorded before it.
    assert queue.purge_totals() == {"studies": 1, "instances": 2, "results": 2, "bytes": 5000}
    after.close()
    queue.close()


def test_a_version_1_database_made_by_the_index_alone_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    fixture = _v1_database(path)
    for table in ("deliveries", "delivery_leases", "analysis_health", "stage_timings", "purged"):
        fixture.execute(f"DROP TABLE {table}")
    fixture.close()
    queue = WorkQueue(path)
    assert _version(path) == CURRENT_VERSION
    assert queue.backlog() == {} and queue.stage_histograms()["wait"].count == 0
    queue.record_timing("1.2.3.1", "wait", 1.5, NOW)
    assert queue.stage_histograms()["wait"].count == 1
    queue.close()


def test_a_newer_database_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    WorkQueue(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE schema_version SET version = ?", (CURRENT_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(SchemaError) as refused:
        WorkQueue(path)
    message = str(refused.value)
    assert str(path) in message and f"version {CURRENT_VERSION + 1}" in message
    assert message.count(". ") == 0 and "\n" not in message  # one sentence
    assert _version(path) == CURRENT_VERSION + 1
    assert sorted(p.name for p in tmp_path.iterdir() if ".bak" in p.name) == []


def test_the_command_refuses_a_newer_database_with_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dicomnode.cli import main

    storage = tmp_path / "storage"
    WorkQueue(storage / "index.sqlite").close()
    db = sqlite3.connect(storage / "index.sqlite")
    db.execute("UPDATE schema_version SET version = 99")
    db.commit()
    db.close()
    assert main(["status", "--storage", str(storage)]) == 2
    assert "index.sqlite has schema version 99" in capsys.readouterr().err


def test_a_new_or_current_database_gets_no_backup(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    WorkQueue(path).close()
    assert _version(path) == CURRENT_VERSION
    WorkQueue(path).close()
    assert not [p for p in tmp_path.iterdir() if ".bak" in p.name]


def test_a_failed_migration_leaves_the_database_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "index.sqlite"
    WorkQueue(path).close()
    original = _dump(path)

    def breaks(db: sqlite3.Connection) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise sqlite3.OperationalError("disk I/O error")

    step = migrations.Migration(CURRENT_VERSION + 1, "breaks", breaks)
    monkeypatch.setattr(migrations, "MIGRATIONS", (*migrations.MIGRATIONS, step))
    monkeypatch.setattr(migrations, "CURRENT_VERSION", CURRENT_VERSION + 1)
    with pytest.raises(sqlite3.OperationalError):
        WorkQueue(path)
    assert _dump(path) == original
    assert _dump(backup_path(path, CURRENT_VERSION)) == original


def _totals(path: Path) -> tuple[dict[str, int], int, int]:
    """Studies per state, instances and received bytes, counted over the whole tables."""
    db = sqlite3.connect(path)
    try:
        states = dict(db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall())
        instances = db.execute("SELECT COUNT(*) FROM instances").fetchone()[0]
        received = db.execute(
            "SELECT COALESCE(SUM(s.bytes), 0) FROM instance_sizes s JOIN instances i"
            " USING (sop_uid) WHERE i.ours = 0"
        ).fetchone()[0]
        return states, instances, received
    finally:
        db.close()


def test_the_counters_follow_every_change(tmp_path: Path) -> None:
    queue = WorkQueue(tmp_path / "index.sqlite")
    spool = tmp_path / "spool"
    spool.mkdir()

    def store(sop: str, study: str, size: int, *, ours: bool = False) -> None:
        (spool / sop).write_bytes(b"x" * size)
        queue.record_instance(sop_uid=sop, study_uid=study, series_uid="9", sop_class_uid="1",
                              path=spool / sop, calling_aet="CR1", association_id="a",
                              received_at=NOW, ours=ours)  # fmt: skip

    def check() -> None:
        states, instances, received = _totals(tmp_path / "index.sqlite")
        counts = queue.counts()
        assert {s: n for s, n in counts.items() if n and s != "instances"} == states
        assert (counts["instances"], queue.received_bytes()) == (instances, received)

    store("1", "s1", 100)
    store("2", "s1", 200)
    store("3", "s2", 300)
    check()
    store("2", "s1", 250)  # received again: the new copy replaces the old
    store("r1", "s1", 5000, ours=True)
    check()
    queue.set_state("s1", StudyState.DONE)
    queue.set_state("s2", StudyState.FAILED, reason="analysis error: ValueError")
    check()
    study = queue.study("s1")
    assert study is not None
    assert queue.record_purge(study, at=NOW, instances=2, results=1, bytes_removed=5350)
    check()
    store("4", "s1", 400)  # reopens the purged study
    check()
    assert queue.counts()[StudyState.RECEIVING] == 1
    queue.close()


SPREAD = (*(bound / 2 for bound in STAGE_BUCKETS), 5000.0)  # one timing in every bucket


def _bulk_history(path: Path, studies: int) -> None:
    """`studies` delivered studies with their timings (one per stage, across every bucket), in
    one transaction."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO studies (study_uid, state, first_received, last_received, released_at,"
        " n_instances, needs_revision, state_changed_at, reason)"
        " VALUES (?, 'done', 1.0, 2.0, 3.0, 1, 0, 4.0, '')",
        ((f"9.{i}",) for i in range(studies)),
    )
    db.executemany(
        "INSERT INTO deliveries VALUES (?, 'PACS@127.0.0.1:104', 'f', 1, NULL, 5.0, 'sent', '',"
        " 'done')",
        ((f"9.{i}",) for i in range(studies)),
    )
    db.executemany(
        "INSERT INTO stage_timings VALUES (?, ?, ?, ?)",
        (
            (f"9.{i}", stage, SPREAD[i % len(SPREAD)], NOW)
            for i in range(studies)
            for stage in STAGES
        ),
    )
    db.execute("COMMIT")
    db.close()


def _scrape_steps(queue: WorkQueue) -> int:
    """SQLite virtual-machine steps one full collect() takes: the work of the queries, which
    grows with the rows they read (a count, not a time)."""
    steps = 0

    def step() -> int:
        nonlocal steps
        steps += 1
        return 0

    queue._db.set_progress_handler(step, 1)  # the connection the collector's queries run on
    try:
        families = list(NodeCollector(queue).collect())
    finally:
        queue._db.set_progress_handler(None, 1)
    assert families
    return steps


def test_a_scrape_reads_the_same_rows_whatever_the_history(tmp_path: Path) -> None:
    small, large = WorkQueue(tmp_path / "small.sqlite"), WorkQueue(tmp_path / "large.sqlite")
    _bulk_history(tmp_path / "small.sqlite", 50)
    _bulk_history(tmp_path / "large.sqlite", 5000)
    assert small.stage_histograms()["wait"].count == 50
    assert large.stage_histograms()["wait"].count == 5000
    assert large.counts()[StudyState.DONE] == 5000
    assert _scrape_steps(small) == _scrape_steps(large)
    small.close()
    large.close()


def test_the_bench_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "metrics_scrape.py"), "--studies", "2000",
         "--scrapes", "3"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "/metrics scrape            median" in result.stdout


def test_study_states_keep_their_stored_values() -> None:
    assert [str(s) for s in StudyState] == [
        "receiving", "complete", "analysing", "sending", "done", "failed", "out_of_scope",
    ]  # fmt: skip
    assert f"{StudyState.OUT_OF_SCOPE}" == "out_of_scope" == StudyState.OUT_OF_SCOPE
