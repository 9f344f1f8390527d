"""Benchmark: a burst of two-view full-size wrist studies arriving at once (issue "node at
hospital scale", item 6).

80 studies (by default) are sent over 8 concurrent associations to the node, with a real
Orthanc as the destination, once per worker setting (--workers, e.g. "1,0": one worker, then
the default, one per core). For each run:
- p50 and p95 of the time from a study's last instance received to its results delivered;
- the analysis time, summed over studies (the preprocess, inference and report stages the node
  records), divided by the cores: the least time the burst could take on this machine;
- the target: p95 <= 1.3 x that + the grace period, PASS or FAIL.

    .venv/bin/python bench/burst.py [--studies 80] [--associations 8] [--workers 1,0]
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.loadgen import (
    copy_study,
    load_templates,
    percentile,
    send_parallel,
    wait_final,
)
from dicomnode.config import Config, available_cores, with_overrides
from tests.integration.node_process import NodeProcess
from tests.integration.orthanc import OrthancServer
from train.phantoms.archive import generate_archive

GRACE_S = 2.0
ANALYSIS_STAGES = ("preprocess", "inference", "report")
TARGET_FACTOR = 1.3


def _studies(tmp: Path, count: int) -> list[list[Path]]:
    """`count` two-view full-size wrist studies, copies of a few synthetic templates."""
    templates = tmp / "templates"
    generate_archive(templates, studies=8, seed=802, size="full", workers=2,
                     syntaxes=("explicit_le",))  # fmt: skip
    wrist = load_templates(templates).wrist
    if len(wrist) < 2:
        raise RuntimeError("the template archive has fewer than two wrist instances")
    studies = []
    for i in range(count):
        pair = [wrist[(2 * i) % len(wrist)], wrist[(2 * i + 1) % len(wrist)]]
        studies.append(list(copy_study(pair, tmp / "copies", wrist=True, label=f"BURST{i:03d}")
                            .files))  # fmt: skip
    return studies


def _analysis_seconds(index: Path, study_uids: set[str]) -> float:
    db = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        rows = db.execute(
            f"SELECT study_uid, SUM(seconds) FROM stage_timings WHERE stage IN "
            f"({', '.join('?' for _ in ANALYSIS_STAGES)}) GROUP BY study_uid",
            ANALYSIS_STAGES,
        ).fetchall()
    finally:
        db.close()
    return sum(seconds for uid, seconds in rows if uid in study_uids)


def burst(
    tmp: Path, studies: list[list[Path]], associations: int, workers: int
) -> dict[str, float]:
    """One burst against a fresh node with `workers` analysis workers (0: one per core)."""
    tmp.mkdir(parents=True)
    with OrthancServer(tmp / "orthanc") as orthanc:
        destination = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        node = NodeProcess(tmp, destinations=[destination],
                           completeness={"grace_seconds": GRACE_S, "quiet_seconds": 30.0},
                           analysis={"workers": workers}).start()  # fmt: skip
        try:
            time.sleep(20.0)  # the workers load the model before the burst, as in service
            batches = [[f for s in studies[i::associations] for f in s]
                       for i in range(associations)]  # fmt: skip
            results, sent_s = send_parallel("WRISTAI", node.port, batches)
            if not all(r.ok for r in results):
                raise RuntimeError("the burst was not stored in full")
            uids = {_study_uid(s[0]) for s in studies}
            outcomes = wait_final(node.index_path, uids, timeout=1800.0)
            waits = [o.seconds_to_final for o in outcomes.values() if o.state == "done"]
            if len(waits) != len(studies):
                raise RuntimeError(f"{len(studies) - len(waits)} studies did not end done")
            analysis = _analysis_seconds(node.index_path, uids)
        finally:
            node.stop()
    count = with_overrides(Config(), analysis={"workers": workers}).analysis.worker_count
    floor = analysis / available_cores()
    return {"workers": count, "send_s": sent_s, "p50_s": percentile(waits, 50),
            "p95_s": percentile(waits, 95), "analysis_s": analysis, "floor_s": floor,
            "target_s": TARGET_FACTOR * floor + GRACE_S}  # fmt: skip


def _study_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--studies", type=int, default=80)
    parser.add_argument("--associations", type=int, default=8)
    parser.add_argument("--workers", default="1,0", help="worker settings to compare (0: auto)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="burst-") as folder:
        tmp = Path(folder)
        studies = _studies(tmp, args.studies)
        rows = []
        for setting in (int(w) for w in args.workers.split(",")):
            row = burst(tmp / f"run-{setting}", studies, args.associations, setting)
            rows.append(row)
            print(f"workers={setting}: {_line(row)}", flush=True)
    print(f"\n{args.studies} two-view full-size studies over {args.associations} associations, "
          f"{available_cores()} cores, grace {GRACE_S:g} s")  # fmt: skip
    print(f"{'workers':>8} {'p50 s':>8} {'p95 s':>8} {'analysis s':>11} {'floor s':>8} "
          f"{'target s':>9}  verdict")  # fmt: skip
    for row in rows:
        print(f"{row['workers']:>8.0f} {row['p50_s']:>8.1f} {row['p95_s']:>8.1f} "
              f"{row['analysis_s']:>11.1f} {row['floor_s']:>8.1f} {row['target_s']:>9.1f}  "
              f"{_verdict(row)}")  # fmt: skip


def _verdict(row: dict[str, float]) -> str:
    return "PASS" if row["p95_s"] <= row["target_s"] else "FAIL"


def _line(row: dict[str, float]) -> str:
    return (
        f"{row['workers']:.0f} worker(s): p50 {row['p50_s']:.1f} s, p95 {row['p95_s']:.1f} s;"
        f" analysis {row['analysis_s']:.1f} s / {available_cores()} cores ="
        f" {row['floor_s']:.1f} s; target p95 <= {row['target_s']:.1f} s: {_verdict(row)}"
    )


if __name__ == "__main__":
    main()
