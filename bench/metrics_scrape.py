"""Benchmark: the cost of a `/metrics` scrape after a year of history.

Builds, in a temporary folder, the database of a node that has handled `--studies` studies over
the past year as release 1 left it (schema version 1: every timing row kept, the metrics
computed from whole tables), with the default retention (30 days: older studies purged, their
instances forgotten). Then it times the old scrape's queries once, opens the database with
today's code (migration to the current schema, backup copy first) and times full scrapes: HTTP
GETs of /metrics on a loopback port, the median of `--scrapes`.

    .venv/bin/python bench/metrics_scrape.py [--studies 1000000] [--scrapes 9]
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicomnode import migrations
from dicomnode.health import start_http
from dicomnode.work_queue import STAGES, WorkQueue

YEAR_S, KEPT_S = 365 * 86400.0, 30 * 86400.0
INSTANCES_PER_STUDY = 2
# One study in 200 failed (kept for a resend), the rest delivered; one in 10 out of scope.
FAILED_EVERY, OUT_OF_SCOPE_EVERY = 200, 10


def _uid(kind: int, i: int) -> str:
    return f"1.2.826.0.1.3680043.10.543.{kind}.{i}"


def _state(i: int) -> str:
    if i % FAILED_EVERY == 0:
        return "failed"
    return "out_of_scope" if i % OUT_OF_SCOPE_EVERY == 0 else "done"


def build_v1(path: Path, studies: int, now: float) -> None:
    """A version-1 database holding `studies` past studies, in one transaction."""
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;")
    db.execute("BEGIN")
    migrations.MIGRATIONS[0].apply(db)
    db.execute("INSERT INTO schema_version VALUES (1)")

    def at(i: int) -> float:
        return now - YEAR_S * (studies - i) / studies

    def recent() -> Iterator[int]:
        return (i for i in range(studies) if now - at(i) < KEPT_S)

    db.executemany(
        "INSERT INTO studies (study_uid, state, first_received, last_received, released_at,"
        " n_instances, needs_revision, state_changed_at, reason)"
        " VALUES (?, ?, ?, ?, ?, ?, 0, ?, ?)",
        ((_uid(1, i), _state(i), at(i), at(i) + 2, at(i) + 3, INSTANCES_PER_STUDY, at(i) + 60,
          "send: association rejected" if _state(i) == "failed" else "")
         for i in range(studies)),
    )  # fmt: skip
    db.executemany(
        "INSERT INTO associations VALUES (?, 'MODALITY', '10.0.0.7', ?, ?, 1)",
        ((_uid(2, i), at(i), at(i) + 3) for i in range(studies)),
    )
    db.executemany(
        "INSERT INTO association_studies VALUES (?, ?)",
        ((_uid(2, i), _uid(1, i)) for i in range(studies)),
    )
    db.executemany(
        "INSERT INTO deliveries VALUES (?, 'PACS@10.0.0.9:104', ?, 1, NULL, ?, ?, '', ?)",
        ((_uid(1, i), f"results/{i}/sr.dcm", at(i) + 60,
          "failed" if _state(i) == "failed" else "sent", _state(i)) for i in range(studies)),
    )  # fmt: skip
    db.executemany(
        "INSERT INTO stage_timings VALUES (?, ?, ?, ?)",
        ((_uid(1, i), stage, 0.05 * (1 + (i + k) % 97), at(i) + 30)
         for i in range(studies) for k, stage in enumerate(STAGES)),
    )  # fmt: skip
    # Retention purged the delivered studies older than 30 days; the recent ones keep files.
    db.executemany(
        "INSERT INTO purged VALUES (?, ?, ?, ?, ?, 3, 3000000)",
        ((_uid(1, i), at(i) + 60, at(i) + KEPT_S, _state(i), INSTANCES_PER_STUDY)
         for i in range(studies) if _state(i) != "failed" and now - at(i) >= KEPT_S),
    )  # fmt: skip
    kept = [i for i in range(studies) if _state(i) == "failed" or now - at(i) < KEPT_S]
    db.executemany(
        "INSERT INTO instances VALUES (?, ?, ?, '1.2.840.10008.5.1.4.1.1.1.1', ?, 'MODALITY',"
        " ?, ?, 0)",
        ((_uid(3, i * 10 + k), _uid(1, i), _uid(4, i), f"spool/{i}/{k}.dcm", _uid(2, i),
          at(i)) for i in kept for k in range(INSTANCES_PER_STUDY)),
    )  # fmt: skip
    db.executemany(
        "INSERT INTO instance_sizes VALUES (?, 1500000)",
        ((_uid(3, i * 10 + k),) for i in kept for k in range(INSTANCES_PER_STUDY)),
    )
    db.execute("COMMIT")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


def old_scrape_s(path: Path) -> float:
    """Seconds the queries of a version-1 scrape took (whole tables read each time)."""
    db = sqlite3.connect(path)
    started = time.perf_counter()
    db.execute("SELECT state, COUNT(*) FROM studies GROUP BY state").fetchall()
    db.execute("SELECT COUNT(*) FROM instances").fetchall()
    db.execute(
        "SELECT COALESCE(SUM(s.bytes), 0) FROM instance_sizes s"
        " JOIN instances i USING (sop_uid) WHERE i.ours = 0"
    ).fetchall()
    timings = db.execute("SELECT stage, seconds FROM stage_timings WHERE at >= 0").fetchall()
    for stage in STAGES:
        values = [s for name, s in timings if name == stage]
        [sum(1 for v in values if v <= b) for b in migrations.STAGE_BUCKETS]
    db.execute("SELECT reason FROM studies WHERE state = 'failed'").fetchall()
    db.execute(
        "SELECT destination, COUNT(*) FROM deliveries WHERE status = 'pending' GROUP BY destination"
    ).fetchall()
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def _size_mb(path: Path) -> float:
    wal = path.with_name(path.name + "-wal")
    return (path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)) / 1e6


def run(studies: int, scrapes: int) -> dict[str, float]:
    """Build, migrate and scrape; returns the figures (also printed)."""
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="metrics-bench-") as folder:
        path, now = Path(folder) / "index.sqlite", time.time()
        started = time.perf_counter()
        build_v1(path, studies, now)
        figures["build_s"] = time.perf_counter() - started
        figures["v1_mb"] = _size_mb(path)
        figures["v1_scrape_ms"] = old_scrape_s(path) * 1000
        started = time.perf_counter()
        queue = WorkQueue(path)  # migrates, after the backup copy
        figures["migrate_s"] = time.perf_counter() - started
        figures["current_mb"] = _size_mb(path)
        figures["backup_mb"] = _size_mb(migrations.backup_path(path, 1))
        server = start_http("127.0.0.1", 0, queue, lambda: {"ok": True})
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        try:
            times, body = [], b""
            for _ in range(scrapes):
                started = time.perf_counter()
                with urllib.request.urlopen(url, timeout=60) as answer:
                    body = answer.read()
                times.append(time.perf_counter() - started)
        finally:
            server.shutdown()
            server.server_close()
            queue.close()
        figures["scrape_ms"] = statistics.median(times) * 1000
        figures["scrape_max_ms"] = max(times) * 1000
        line = 'dicomnode_stage_seconds_count{stage="wait"} '
        waits = [float(t[len(line) :]) for t in body.decode().splitlines() if t.startswith(line)]
        if waits != [studies]:
            raise SystemExit(f"the scrape counts {waits} 'wait' timings, not {studies}")
    print(f"studies                    {studies}")
    print(f"build (version 1)          {figures['build_s']:.1f} s, {figures['v1_mb']:.0f} MB")
    print(f"version-1 scrape queries   {figures['v1_scrape_ms']:.1f} ms (once)")
    print(f"migration to version {migrations.CURRENT_VERSION}     {figures['migrate_s']:.1f} s"
          f" (backup {figures['backup_mb']:.0f} MB)")  # fmt: skip
    print(f"database now               {figures['current_mb']:.0f} MB")
    print(f"/metrics scrape            median {figures['scrape_ms']:.1f} ms,"
          f" max {figures['scrape_max_ms']:.1f} ms over {scrapes} (target < 50 ms)")  # fmt: skip
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=1_000_000, help="past studies")
    parser.add_argument("--scrapes", type=int, default=9, help="scrapes timed")
    args = parser.parse_args()
    run(args.studies, args.scrapes)


if __name__ == "__main__":
    main()
