"""Drift monitoring: daily statistics against the bundle's reference, and shadow mode."""

from __future__ import annotations

import json
import logging
import math
import os
import random
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicomnode.cli import main
from dicomnode.config import Config, Destination, with_overrides
from dicomnode.drift import DriftMonitor, DriftStore, reference_of, utc_day
from dicomnode.health import health, start_http
from dicomnode.supervision import AnalysisHealth
from dicomnode.work_queue import WorkQueue
from dicomnode.worker import SHADOW_REASON, database, run_worker
from pipeline.drift import (
    DriftReference,
    bin_counts,
    grouped_psi,
    groups,
    psi,
    reference_from_probabilities,
)
from train.phantoms.archive import read_truth

THRESHOLDS = {"possible": 0.3, "likely": 0.5}
NOON = 1_790_000_000.0 - 1_790_000_000.0 % 86400 + 43200  # a UTC noon
# The reference: 70 % clearly negative, 5 % possible, 25 % likely.
REFERENCE_PROBABILITIES = [0.02] * 70 + [0.4] * 5 + [0.9] * 25


def _reference() -> DriftReference:
    raw = reference_from_probabilities(REFERENCE_PROBABILITIES, THRESHOLDS, source="test data")
    return DriftReference.from_dict(raw)


def _record(monitor: DriftMonitor, probabilities: list[float], at: float) -> None:
    for p in probabilities:
        level = "likely" if p >= 0.5 else "possible" if p >= 0.3 else "negative"
        monitor.record(level, p, now=at)


def test_psi_matches_the_hand_computed_value() -> None:
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 ln 2 + 0.25 ln 1.5
    assert psi([0.5, 0.5], [0.25, 0.75]) == pytest.approx(0.25 * math.log(2) + 0.25 * math.log(1.5))
    assert psi([0.2, 0.3, 0.5], [0.2, 0.3, 0.5]) == 0.0
    with pytest.raises(ValueError, match="without empty bins"):
        psi([0.5, 0.5], [1.0, 0.0])


def test_reference_from_known_probabilities() -> None:
    probabilities = [0.0, 0.05, 0.1, 0.4, 0.45, 0.6, 0.99, 1.0]
    raw = reference_from_probabilities(probabilities, THRESHOLDS, source="eight studies")
    assert raw["source"] == "eight studies" and raw["n_studies"] == 8
    assert raw["level_rates"] == {"likely": 3 / 8, "possible": 2 / 8, "negative": 3 / 8}
    expected = [0] * 20
    for index in (0, 1, 2, 8, 9, 12, 19, 19):
        expected[index] += 1
    assert bin_counts(probabilities) == expected
    assert raw["bin_fractions"] == [c / 8 for c in expected]
    reference = DriftReference.from_dict(raw)
    assert reference.psi_limit == 0.25 and reference.min_studies == 30
    with pytest.raises(ValueError, match="drift_reference"):
        DriftReference.from_dict({**raw, "bin_fractions": [1.0]})


def test_sparse_reference_bins_are_merged_before_the_psi() -> None:
    reference = _reference()
    assert groups(reference.bin_fractions) == [[0], list(range(1, 9)), list(range(9, 20))]
    same, limit = grouped_psi(reference, bin_counts(REFERENCE_PROBABILITIES))
    assert same < 0.01 and limit >= reference.psi_limit


def test_an_in_band_day_is_not_degraded(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    monitor = DriftMonitor(tmp_path, _reference())
    day = list(REFERENCE_PROBABILITIES)
    random.Random(0).shuffle(day)  # studies come mixed, not sorted
    with caplog.at_level(logging.WARNING, logger="dicomnode.drift"):
        _record(monitor, day, NOON)
    report = monitor.report(NOON)
    today = report.windows[0]
    assert today.judged and today.tally.analysed == 100 and not today.out_of_band
    assert today.psi is not None and today.psi < 0.01
    assert not report.degraded and report.reason == "" and caplog.records == []


def test_a_shifted_distribution_is_degraded_with_one_warning_a_day(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monitor = DriftMonitor(tmp_path, _reference())
    with caplog.at_level(logging.WARNING, logger="dicomnode.drift"):
        _record(monitor, [0.9] * 300, NOON)  # every study "likely": a broken input
        report = monitor.report(NOON)
        assert report.degraded
        assert report.reason.startswith("today (300 studies): PSI ")
        assert "likely 100.0% vs 25.0%" in report.reason
        assert len(caplog.records) == 1
        warning = caplog.records[0]
        assert warning.levelno == logging.WARNING and "drift" in warning.getMessage()
        _record(monitor, [0.9] * 40, NOON + 86400)  # the next UTC day: one more line
        assert len(caplog.records) == 2
        reopened = DriftMonitor(tmp_path, _reference())  # another worker, or after a restart
        _record(reopened, [0.9] * 5, NOON + 86400)
    assert len(caplog.records) == 2


def test_a_day_below_the_minimum_is_shown_not_judged(tmp_path: Path) -> None:
    monitor = DriftMonitor(tmp_path, _reference())
    _record(monitor, [0.9] * 29, NOON)
    report = monitor.report(NOON)
    today = report.windows[0]
    assert not today.judged and today.psi is not None and today.psi > 1.0
    assert not report.degraded
    monitor.record("likely", 0.9, now=NOON)  # the 30th study
    assert monitor.report(NOON).degraded


def test_counts_persist_across_reopen_and_windows_cover_seven_days(tmp_path: Path) -> None:
    monitor = DriftMonitor(tmp_path, _reference())
    _record(monitor, [0.02, 0.4, 0.9], NOON - 6 * 86400)
    monitor.record("not_analysable", None, now=NOON - 7 * 86400)  # outside the 7 days
    _record(monitor, [0.02, 0.02], NOON)
    monitor.record("not_analysable", None, now=NOON)
    store = DriftStore(tmp_path / "drift.sqlite")
    today = store.tally(utc_day(NOON), utc_day(NOON))
    assert today.outcomes == {"likely": 0, "possible": 0, "negative": 2, "not_analysable": 1}
    assert today.bins[0] == 2 and sum(today.bins) == 2
    week = DriftMonitor(tmp_path, None).report(NOON).windows[1]
    assert week.name == "last_7_days" and week.tally.analysed == 5
    assert week.tally.outcomes["not_analysable"] == 1
    assert not week.judged and week.psi is None  # no reference: counted, never judged


def _bundle_with_reference(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    raw = reference_from_probabilities(REFERENCE_PROBABILITIES, THRESHOLDS, source="test data")
    (bundle / "model.json").write_text(json.dumps({"drift_reference": raw}), encoding="utf-8")
    return bundle


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_metrics_healthz_and_status_show_the_drift(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle_with_reference(tmp_path)
    storage = tmp_path / "node"
    assert reference_of(bundle) == _reference()
    monitor = DriftMonitor(storage, reference_of(bundle))
    _record(monitor, [0.9] * 40, time.time())
    queue = WorkQueue(storage / "index.sqlite")
    http = start_http("127.0.0.1", 0, queue,
                      lambda: health(queue, 1, 1, AnalysisHealth(), monitor, shadow=True),
                      monitor)  # fmt: skip
    base = f"http://127.0.0.1:{http.server_address[1]}"
    try:
        code, body = _get(f"{base}/healthz")
        answer = json.loads(body)
        assert code == 200 and answer["ok"] is True  # degraded is a field, not a failure
        assert answer["degraded"] is True and answer["shadow"] is True
        assert answer["degraded_reason"].startswith("model outputs drift: today (40 studies)")
        code, body = _get(f"{base}/metrics")
        text = body.decode()
        assert code == 200 and "dicomnode_drift_degraded 1.0" in text
        assert 'dicomnode_drift_level_rate{level="likely",window="today"} 1.0' in text
        assert 'dicomnode_drift_studies{outcome="likely",window="today"} 40.0' in text
        assert 'dicomnode_drift_psi{window="today"}' in text
    finally:
        http.shutdown()
        queue.close()
    plain = health(WorkQueue(tmp_path / "other.sqlite"), 1, 1, AnalysisHealth())
    assert "degraded" not in plain and "shadow" not in plain  # callers without a monitor
    args = ["status", "--storage", str(storage), "--model", str(bundle)]
    assert main([*args, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["drift"]["degraded"] is True and report["shadow"] is False
    assert report["drift"]["windows"]["today"]["studies"] == 40
    assert report["drift"]["reference"]["source"] == "test data"
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "drift: DEGRADED: today (40 studies)" in out
    assert "today: 40 analysed, 0 not analysable; likely 100.0%" in out


class _RecordingScp:
    """A Storage SCP on a free loopback port that records every association and C-STORE."""

    def __init__(self) -> None:
        self.associations: list[str] = []
        self.stored: list[str] = []
        ae = AE(ae_title="PACS")
        ae.supported_contexts = AllStoragePresentationContexts
        handlers = [(evt.EVT_CONN_OPEN, self._opened), (evt.EVT_C_STORE, self._store)]
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers)
        self.port = int(self.server.server_address[1])

    def _opened(self, event: Any) -> None:
        self.associations.append(str(event.address))

    def _store(self, event: Any) -> int:
        self.stored.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def close(self) -> None:
        self.server.shutdown()


def _queue_wrist_study(queue: WorkQueue, archive: Path) -> str:
    rows = [r for r in read_truth(archive) if not r["corrupt"] and r["body_part"] == "wrist"]
    study_uid = rows[0]["study_instance_uid"]
    for row in (r for r in rows if r["study_instance_uid"] == study_uid):
        ds = pydicom.dcmread(archive / row["path"], stop_before_pixels=True)
        queue.record_instance(sop_uid=str(ds.SOPInstanceUID), study_uid=study_uid,
                              series_uid=str(ds.SeriesInstanceUID),
                              sop_class_uid=str(ds.SOPClassUID), path=archive / row["path"],
                              calling_aet="CR", association_id="a", received_at=time.time(),
                              ours=False)  # fmt: skip
    queue.set_state(study_uid, "complete")
    return study_uid


@pytest.mark.parametrize("shadow", [True, False], ids=["shadow", "live"])
def test_shadow_mode_keeps_results_and_sends_nothing(
    tmp_path: Path, synthetic_archive: Path, shadow: bool
) -> None:
    pacs = _RecordingScp()
    pacs_at = Destination("PACS", "127.0.0.1", pacs.port)
    config = with_overrides(Config(), storage={"path": tmp_path / "node"},
                            results={"shadow": shadow}, destinations=(pacs_at,))  # fmt: skip
    queue = WorkQueue(database(config))
    study_uid = _queue_wrist_study(queue, synthetic_archive)
    stop = threading.Event()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # run_worker configures logging
    worker = threading.Thread(target=run_worker, args=(config, stop, os.getppid()), daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 240  # loading the bundle and analysing take a while
        while time.monotonic() < deadline:
            study = queue.study(study_uid)
            if study is not None and study.state in ("done", "failed"):
                break
            time.sleep(0.2)
    finally:
        stop.set()
        worker.join(60)
        pacs.close()
        root.handlers[:], root.level = handlers, level
    study = queue.study(study_uid)
    assert study is not None and study.state == "done"
    results = sorted((tmp_path / "node" / "results").rglob("*.dcm"))
    assert len(results) >= 2  # the SR and the Secondary Captures are kept either way
    today = DriftMonitor(tmp_path / "node", None).report().windows[0]
    assert today.tally.analysed == 1  # the outcome is counted either way
    if shadow:
        assert study.reason == SHADOW_REASON
        assert pacs.associations == [] and pacs.stored == []
        assert queue.backlog() == {}
    else:
        assert len(pacs.associations) >= 1 and len(pacs.stored) == len(results)
    queue.close()


def test_an_unwritable_storage_never_stops_the_node_from_starting(tmp_path: Path) -> None:
    # A node restarting on a full (here: unusable) disk builds its monitor without touching the
    # disk; the report then has no figures, and only recording a study fails (the worker logs
    # that and carries on).
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the storage folder should be", encoding="utf-8")
    monitor = DriftMonitor(blocker / "storage", None)
    report = monitor.report()
    assert report.windows == () and not report.degraded
    with pytest.raises(OSError):
        monitor.record("negative", 0.1)
