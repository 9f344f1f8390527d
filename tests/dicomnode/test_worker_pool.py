"""Workers that stop are restarted with backoff, then no more: a model that fails leaves the
node unhealthy with the reason, its studies queued; ingest is another process."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dicomnode.config import Config, with_overrides
from dicomnode.health import health, start_http
from dicomnode.model_check import ModelFault
from dicomnode.operations import format_status, status
from dicomnode.spool import Spool
from dicomnode.supervision import AnalysisHealth, RestartPolicy, after_failure, after_running
from dicomnode.work_queue import WorkQueue
from dicomnode.worker import WorkerPool, analyse_next, database

STUDY = "1.2.826.0.1.3680043.8.498.1"


def test_restarts_back_off_then_stop_and_a_stable_run_ends_the_failures() -> None:
    policy = RestartPolicy()
    health, now, waits = AnalysisHealth(since=0.0), 1000.0, []
    while health.state != "stopped":
        health = after_failure(health, "worker 7 killed by signal SIGKILL", now, policy)
        waits.append(None if health.retry_at is None else health.retry_at - now)
        now += 1.0
    assert waits == [0.0, 5.0, 10.0, 20.0, 40.0, None]
    assert health.failures == policy.max_failures and not health.ok
    assert "stopped after 6 failures in a row: worker 7 killed by signal SIGKILL" in (
        health.describe()
    )
    assert after_failure(health, "again", now, policy) == health  # stopped stays stopped
    restarting = after_failure(AnalysisHealth(), "x", 50.0, policy)
    assert after_running(restarting, 119.0, 200.0, policy) == restarting
    assert after_running(restarting, 120.0, 200.0, policy) == AnalysisHealth(since=200.0)


def test_a_killed_worker_is_restarted_at_once(tmp_path: Path) -> None:
    config = with_overrides(Config(), storage={"path": tmp_path}, analysis={"workers": 1})
    pool = WorkerPool(config)
    pool.start()
    try:
        first = pool.processes[0]
        assert first is not None and first.pid is not None and first.is_alive()
        os.kill(first.pid, signal.SIGKILL)
        first.join(10)
        assert pool.alive() == 0
        pool.supervise()
        replacement = pool.processes[0]
        assert replacement is not None and replacement.pid != first.pid
        assert pool.health.state == "restarting" and pool.health.retry_at is not None
        assert pool.health.reason == f"worker {first.pid} killed by signal SIGKILL"
        deadline = time.monotonic() + 10
        while not replacement.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pool.alive() == 1
    finally:
        pool.shutdown(timeout=30)
    assert pool.alive() == 0


def test_the_study_a_killed_worker_was_analysing_is_queued_again_at_once(tmp_path: Path) -> None:
    config = with_overrides(Config(), storage={"path": tmp_path}, analysis={"workers": 1})
    queue = WorkQueue(database(config))
    pool = WorkerPool(config)
    pool.start()
    try:
        worker = pool.processes[0]
        assert worker is not None and worker.pid is not None
        _queued_study(queue, tmp_path)
        # As if the worker had claimed it (it claims only what is 'complete': no race here).
        assert queue.claim(worker=worker.pid) is not None
        os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        pool.supervise()
        study = queue.study(STUDY)
        assert study is not None and study.state == "complete"
        assert f"worker {worker.pid} killed by signal SIGKILL" in study.reason
    finally:
        pool.shutdown(timeout=30)


def _healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _queued_study(queue: WorkQueue, tmp_path: Path) -> None:
    queue.record_instance(sop_uid=f"{STUDY}.1", study_uid=STUDY, series_uid=f"{STUDY}.9",
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.1", path=tmp_path / "x.dcm",
                          calling_aet="CR1", association_id="a1", received_at=100.0,
                          ours=False)  # fmt: skip
    queue.set_state(STUDY, "complete")


def _wait_until_stopped(pool: WorkerPool) -> None:
    process = pool.processes[0]
    assert process is not None
    process.join(180)  # spawning, importing torch and loading the bundle take a while
    assert not process.is_alive()


def test_a_model_that_fails_makes_healthz_unhealthy_then_analysis_stops(
    tmp_path: Path, broken_bundle: Path
) -> None:
    config = with_overrides(Config(), storage={"path": tmp_path / "node"},
                            model={"bundle": broken_bundle}, analysis={"workers": 1})  # fmt: skip
    queue = WorkQueue(database(config))
    _queued_study(queue, tmp_path)
    pool = WorkerPool(config, RestartPolicy(max_failures=2), on_change=queue.record_analysis_health)
    http = start_http("127.0.0.1", 0, queue, lambda: health(queue, pool.alive(), 1, pool.health))
    port = http.server_address[1]
    assert _healthz(port) == (503, {"ok": False, "workers": 0, "expected_workers": 1,
                                    "database": True, "analysis": "running",
                                    "time": pytest.approx(time.time(), abs=60),
                                    "reason": "0 of 1 analysis workers running"})  # fmt: skip
    pool.start()
    try:
        _wait_until_stopped(pool)
        pool.supervise()
        assert pool.health.state == "restarting"
        code, answer = _healthz(port)
        assert code == 503 and answer["ok"] is False and answer["analysis"] == "restarting"
        assert answer["reason"] == (
            f"analysis restarting after 1 failure(s) in a row: {broken_bundle}: the model's "
            "output for a blank image is not a number"
        )
        _wait_until_stopped(pool)  # the first restart is at once, and fails the same way
        pool.supervise()
        pool.supervise(now=time.time() + 86400)  # and no more restarts, however long it waits
        assert pool.processes == [None] and pool.alive() == 0
        code, answer = _healthz(port)
        assert code == 503 and answer["analysis"] == "stopped"
        assert answer["reason"].startswith(f"analysis stopped after 2 failures in a row: "
                                           f"{broken_bundle}: the model's output")  # fmt: skip
        assert "studies stay queued" in answer["reason"]
    finally:
        pool.shutdown(timeout=30)
        http.shutdown()
    study = queue.study(STUDY)
    assert study is not None and study.state == "complete"  # still queued, not failed
    queue.close()
    report = status(config)
    assert report["analysis"]["state"] == "stopped" and report["analysis"]["failures"] == 2
    assert format_status(report).startswith("analysis: stopped after 2 failures in a row: ")


@pytest.mark.parametrize("model_works", [True, False], ids=["bad-study", "broken-model"])
def test_an_analysis_failure_fails_the_study_only_when_the_model_still_works(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_works: bool
) -> None:
    queue = WorkQueue(tmp_path / "index.sqlite")
    _queued_study(queue, tmp_path)
    results = Spool(tmp_path / "results")
    (results.instances / STUDY).mkdir()

    def analyse_study(*args: object, **kwargs: object) -> None:
        (results.instances / STUDY / "half-written.dcm").write_bytes(b"")
        raise RuntimeError("the analysis failed")

    def self_test(bundle: object) -> None:
        if not model_works:
            raise ModelFault("bundle: the model fails on a blank image")

    monkeypatch.setattr("dicomnode.analysis.analyse_study", analyse_study)
    monkeypatch.setattr("dicomnode.worker.self_test", self_test)
    bundle: Any = SimpleNamespace()
    if model_works:
        assert analyse_next(queue, bundle, results, []) is True
    else:
        with pytest.raises(ModelFault, match="fails on a blank image"):
            analyse_next(queue, bundle, results, [])
        assert list((results.instances / STUDY).iterdir()) == []  # never a predecessor SR
    study = queue.study(STUDY)
    assert study is not None
    if model_works:
        assert (study.state, study.reason) == ("failed", "analysis error: RuntimeError")
    else:
        assert study.state == "complete"  # queued again, for when the model works
        assert study.reason == "model failure: bundle: the model fails on a blank image"
    queue.close()
