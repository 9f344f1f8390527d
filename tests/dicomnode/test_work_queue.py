"""The work queue: completeness promotion, claims, crash recovery and delivery bookkeeping."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicomnode.completeness import CompletenessParams
from dicomnode.retry import RetryPolicy
from dicomnode.work_queue import MAX_CRASHES, WITHDRAWN_REASON, WorkQueue

PARAMS = CompletenessParams(grace_seconds=2.0, quiet_seconds=30.0)
POLICY = RetryPolicy(initial_delay_s=30.0, max_delay_s=3600.0, give_up_after_s=86400.0,
                     jitter=0.0)  # fmt: skip


@pytest.fixture
def queue(tmp_path: Path) -> WorkQueue:
    q = WorkQueue(tmp_path / "index.sqlite")
    for study, at in (("1.1", 100.0), ("1.2", 105.0)):
        q.record_instance(sop_uid=f"{study}.1", study_uid=study, series_uid=f"{study}.9",
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.1", path=tmp_path / "x.dcm",
                          calling_aet="MODALITY", association_id=f"a{study}", received_at=at,
                          ours=False)  # fmt: skip
    return q


def test_promotion_follows_the_completeness_rule(queue: WorkQueue) -> None:
    assert queue.promote_complete(120.0, PARAMS) == []
    queue.association_closed("a1.1", 101.0, released=True)
    assert queue.promote_complete(102.5, PARAMS) == ["1.1"]
    assert queue.study("1.1").state == "complete"  # type: ignore[union-attr]
    assert queue.promote_complete(135.0, PARAMS) == ["1.2"]  # the quiet period


def test_claims_are_exclusive_and_recovered_after_a_crash(queue: WorkQueue, tmp_path: Path) -> None:
    queue.promote_complete(1000.0, PARAMS)
    first = queue.claim(now=1001.0)
    second = queue.claim(now=1001.0)
    assert first and second and first.study_uid != second.study_uid
    assert queue.claim(now=1002.0) is None
    assert first.state == "analysing"
    restarted = WorkQueue(tmp_path / "index.sqlite")  # another process after a kill -9
    assert restarted.recover() == 2
    assert {s.study_uid for s in restarted.studies_in_state("complete")} == {"1.1", "1.2"}


def test_a_dead_workers_study_is_queued_again_then_failed_when_it_kills_every_worker(
    queue: WorkQueue,
) -> None:
    queue.promote_complete(1000.0, PARAMS)
    held = queue.claim(now=1001.0, worker=4242)
    other = queue.claim(now=1001.0, worker=4343)
    assert held and other
    for attempt in range(1, MAX_CRASHES):
        assert queue.release_crashed(4242, "killed by signal SIGSEGV") == [
            (held.study_uid, "complete")
        ]
        row = queue.study(held.study_uid)
        assert row and row.state == "complete" and "SIGSEGV" in row.reason
        assert queue.claim(now=1002.0 + attempt, worker=4242) is not None
    assert queue.release_crashed(4242, "killed by signal SIGSEGV") == [(held.study_uid, "failed")]
    row = queue.study(held.study_uid)
    assert row and row.state == "failed" and f"stopped {MAX_CRASHES} times" in row.reason
    # The other worker's study was never touched; a pid that held nothing releases nothing.
    assert queue.study(other.study_uid).state == "analysing"  # type: ignore[union-attr]
    assert queue.release_crashed(999, "exited with status 1") == []


def test_a_finished_analysis_and_a_reopened_study_forget_earlier_crashes(
    queue: WorkQueue, tmp_path: Path
) -> None:
    queue.promote_complete(1000.0, PARAMS)
    queue.set_state("1.2", "done")  # one study in play
    study = queue.claim(now=1001.0, worker=7)
    assert study is not None
    for _ in range(MAX_CRASHES - 1):
        queue.release_crashed(7, "killed")
        assert queue.claim(now=1002.0, worker=7) is not None
    queue.schedule(study.study_uid, [], [Path("r.dcm")], now=1003.0)  # analysed after all
    queue.set_state(study.study_uid, "complete")
    assert queue.claim(now=1004.0, worker=7) is not None
    assert queue.release_crashed(7, "killed") == [(study.study_uid, "complete")]  # count restarted
    # A failed study reopened by a new instance starts counting afresh too.
    while queue.release_crashed(7, "killed") != [(study.study_uid, "failed")]:
        assert queue.claim(now=1005.0, worker=7) is not None
    queue.record_instance(sop_uid=f"{study.study_uid}.2", study_uid=study.study_uid,
                          series_uid=f"{study.study_uid}.9",
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.1", path=tmp_path / "y.dcm",
                          calling_aet="MODALITY", association_id="again", received_at=2000.0,
                          ours=False)  # fmt: skip
    queue.set_state(study.study_uid, "complete")
    assert queue.claim(now=2001.0, worker=7) is not None
    assert queue.release_crashed(7, "killed") == [(study.study_uid, "complete")]


def test_results_held_for_the_grace_period_are_withdrawn_when_an_instance_arrives(
    queue: WorkQueue, tmp_path: Path
) -> None:
    queue.promote_complete(1000.0, PARAMS)
    queue.set_state("1.2", "done")  # one study in play
    study = queue.claim(now=1000.0)
    assert study is not None and study.study_uid == "1.1"
    results = [tmp_path / "sr.dcm", tmp_path / "sc.dcm"]
    queue.schedule("1.1", ["PACS@127.0.0.1:104", "ARCHIVE@127.0.0.1:105"], results,
                   now=1001.0, hold_until=1002.0)  # fmt: skip
    assert queue.due(1001.5) == [] and len(queue.due(1002.0)) == 2
    assert queue.withdraw_stale(1001.5) == []  # nothing arrived: nothing withdrawn
    queue.record_instance(sop_uid="1.1.2", study_uid="1.1", series_uid="1.1.9",
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.1", path=tmp_path / "y.dcm",
                          calling_aet="MODALITY", association_id="late", received_at=1001.6,
                          ours=False)  # fmt: skip
    assert queue.withdraw_stale(1001.7) == [("1.1", tuple(sorted(results)))]
    row = queue.study("1.1")
    assert row and row.state == "receiving" and not row.needs_revision
    assert row.reason == WITHDRAWN_REASON and row.n_instances == 2
    assert queue.due(5000.0) == []  # nothing of the withdrawn analysis will go out


def test_results_already_being_sent_are_not_withdrawn_the_study_is_revised_after(
    queue: WorkQueue, tmp_path: Path
) -> None:
    queue.promote_complete(1000.0, PARAMS)
    queue.set_state("1.2", "done")
    assert queue.claim(now=1000.0) is not None
    queue.schedule("1.1", ["PACS@127.0.0.1:104"], [tmp_path / "sr.dcm"], now=1001.0)
    delivery = queue.claim_due(1001.0, timeout_s=30.0)  # a worker is sending it right now
    assert delivery is not None
    queue.record_instance(sop_uid="1.1.2", study_uid="1.1", series_uid="1.1.9",
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.1", path=tmp_path / "y.dcm",
                          calling_aet="MODALITY", association_id="late", received_at=1001.5,
                          ours=False)  # fmt: skip
    assert queue.withdraw_stale(1001.6) == []
    queue.record_attempt(delivery, sent=True, reason="", now=1002.0, policy=POLICY)
    row = queue.study("1.1")
    assert row and row.state == "receiving" and row.reason == "instance received during analysis"


def _analysed(queue: WorkQueue) -> str:
    queue.promote_complete(1000.0, PARAMS)
    study = queue.claim(now=1000.0)
    assert study is not None
    return study.study_uid


def test_no_destination_means_done_with_the_reason(queue: WorkQueue) -> None:
    uid = _analysed(queue)
    queue.schedule(uid, [], [Path("r.dcm")], now=1001.0)
    study = queue.study(uid)
    assert study and study.state == "done" and study.reason == "no destination"


def test_delivery_retries_back_off_then_succeed(queue: WorkQueue) -> None:
    uid = _analysed(queue)
    queue.schedule(uid, ["PACS@h:104", "ARCHIVE@h:105"], [Path("sr.dcm"), Path("sc.dcm")],
                   now=1001.0)  # fmt: skip
    assert queue.study(uid).state == "sending"  # type: ignore[union-attr]
    due = queue.due(1001.0)
    assert {d.destination for d in due} == {"PACS@h:104", "ARCHIVE@h:105"}
    assert due[0].files == (Path("sr.dcm"), Path("sc.dcm"))
    pacs = next(d for d in due if d.destination == "PACS@h:104")
    archive = next(d for d in due if d.destination == "ARCHIVE@h:105")
    assert queue.record_attempt(archive, sent=True, reason="", now=1001.0, policy=POLICY) == "sent"
    status = queue.record_attempt(pacs, sent=False, reason="connection refused", now=1001.0,
                                  policy=POLICY)  # fmt: skip
    assert status == "pending" and queue.study(uid).state == "sending"  # type: ignore[union-attr]
    assert queue.due(1020.0) == [] and queue.backlog() == {"PACS@h:104": 1}
    retry = queue.due(1031.0)
    assert len(retry) == 1 and retry[0].attempts == 1
    assert queue.record_attempt(retry[0], sent=True, reason="", now=1031.0, policy=POLICY) == "sent"
    assert queue.study(uid).state == "done"  # type: ignore[union-attr]


def test_delivery_gives_up_and_says_why(queue: WorkQueue) -> None:
    uid = _analysed(queue)
    queue.schedule(uid, ["PACS@h:104"], [Path("sr.dcm")], now=1000.0)
    delivery = queue.due(1000.0)[0]
    queue.record_attempt(delivery, sent=False, reason="refused 0xA700", now=1000.0, policy=POLICY)
    late = queue.due(1000.0 + 86400.0)[0]
    status = queue.record_attempt(late, sent=False, reason="refused 0xA700", now=1000.0 + 86400.0,
                                  policy=POLICY)  # fmt: skip
    study = queue.study(uid)
    assert status == "failed" and study and study.state == "failed"
    assert "PACS@h:104: refused 0xA700" in study.reason


def test_out_of_scope_report_keeps_its_state_and_reason(queue: WorkQueue) -> None:
    uid = _analysed(queue)
    queue.schedule(uid, ["PACS@h:104"], [Path("na.dcm")], now=1001.0,
                   final_state="out_of_scope", reason="no wrist view to analyse")  # fmt: skip
    delivery = queue.due(1001.0)[0]
    queue.record_attempt(delivery, sent=True, reason="", now=1001.0, policy=POLICY)
    study = queue.study(uid)
    assert study and study.state == "out_of_scope" and study.reason == "no wrist view to analyse"


def test_an_out_of_scope_study_is_analysed_again_after_an_arrival(
    queue: WorkQueue, tmp_path: Path
) -> None:
    uid = _analysed(queue)
    assert queue.claim(now=1000.0) is not None  # the fixture's other study, out of the way
    queue.schedule(uid, ["PACS@h:104"], [Path("na.dcm")], now=1001.0,
                   final_state="out_of_scope", reason="no wrist view to analyse")  # fmt: skip
    queue.record_attempt(queue.due(1001.0)[0], sent=True, reason="", now=1001.0, policy=POLICY)
    queue.record_instance(sop_uid=f"{uid}.2", study_uid=uid, series_uid=f"{uid}.9",
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.1", path=tmp_path / "y.dcm",
                          calling_aet="MODALITY", association_id="b", received_at=1100.0,
                          ours=False)  # fmt: skip
    queue.association_closed("b", 1100.5, released=True)
    assert queue.promote_complete(1103.0, PARAMS) == [uid]
    claimed = queue.claim(now=1104.0)
    assert claimed is not None and claimed.study_uid == uid and claimed.n_instances == 2


def test_received_bytes_count_kept_instances_not_our_results(tmp_path: Path) -> None:
    queue = WorkQueue(tmp_path / "index.sqlite")
    theirs, ours = tmp_path / "theirs.dcm", tmp_path / "ours.dcm"
    theirs.write_bytes(b"x" * 1000)
    ours.write_bytes(b"y" * 500)
    for uid, path, is_ours in (("1.1.1", theirs, False), ("1.1.2", ours, True)):
        queue.record_instance(sop_uid=uid, study_uid="1.1", series_uid="1.1.9",
                              sop_class_uid="1.2", path=path, calling_aet="X",
                              association_id="a", received_at=1.0, ours=is_ours)  # fmt: skip
    assert queue.received_bytes() == 1000
