"""`dicomnode status` and `dicomnode resend` read and change the node's database."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dicomnode.cli import main
from dicomnode.completeness import CompletenessParams
from dicomnode.retry import RetryPolicy
from dicomnode.work_queue import WorkQueue


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    queue = WorkQueue(tmp_path / "index.sqlite")
    for study, at in (("1.1", 100.0), ("1.2", 200.0), ("1.3", 300.0)):
        queue.record_instance(sop_uid=f"{study}.1", study_uid=study, series_uid=f"{study}.9",
                              sop_class_uid="1.2.840.10008.5.1.4.1.1.1", path=tmp_path / "x",
                              calling_aet="CR1", association_id=f"a{study}", received_at=at,
                              ours=False)  # fmt: skip
    queue.promote_complete(250.0, CompletenessParams(grace_seconds=1.0, quiet_seconds=30.0))
    for _ in range(2):
        study = queue.claim(now=260.0)
        assert study is not None
        queue.schedule(study.study_uid, ["PACS@h:104"], [Path("sr.dcm")], now=260.0)
    policy = RetryPolicy(give_up_after_s=10.0)
    for delivery in queue.due(260.0):
        if delivery.study_uid == "1.1":
            queue.record_attempt(delivery, sent=False, reason="connection refused", now=260.0,
                                 policy=policy, give_up=True)  # fmt: skip
    queue.close()
    return tmp_path


def test_status_json(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--storage", str(storage), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["counts"]["failed"] == 1 and report["counts"]["sending"] == 1
    assert report["counts"]["receiving"] == 1 and report["counts"]["instances"] == 3
    assert report["oldest_waiting"]["study_instance_uid"] == "1.2"
    assert report["recent_failures"][0]["study_instance_uid"] == "1.1"
    assert "connection refused" in report["recent_failures"][0]["reason"]
    assert report["backlog"] == {"PACS@h:104": 1}


def test_status_text(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--storage", str(storage)]) == 0
    out = capsys.readouterr().out
    assert "failed 1" in out and "backlog: PACS@h:104 1" in out and "connection refused" in out


def test_resend_requeues_a_failed_study(storage: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["resend", "--storage", str(storage), "1.1"]) == 0
    assert "queued again (was failed)" in capsys.readouterr().out
    queue = WorkQueue(storage / "index.sqlite")
    assert queue.study("1.1").state == "complete"  # type: ignore[union-attr]
    assert main(["resend", "--storage", str(storage), "9.9"]) == 0
    assert "no study 9.9" in capsys.readouterr().out


def test_status_counts_purges_and_resend_refuses_a_purged_study(
    storage: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queue = WorkQueue(storage / "index.sqlite")
    queue.set_state("1.2", "done")
    (study,) = queue.purge_candidates(("done",), changed_before=float("inf"))
    assert queue.record_purge(study, at=400.0, instances=1, results=2, bytes_removed=3_000_000)
    queue.close()
    assert main(["status", "--storage", str(storage), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["purged"] == {"studies": 1, "instances": 1, "results": 2, "bytes": 3_000_000}
    assert main(["status", "--storage", str(storage)]) == 0
    assert "purged after delivery: 1 studies, 3.0 MB" in capsys.readouterr().out
    assert main(["resend", "--storage", str(storage), "1.2"]) == 0
    assert "has no images left (purged" in capsys.readouterr().out
    queue = WorkQueue(storage / "index.sqlite")
    assert queue.study("1.2").state == "done"  # type: ignore[union-attr]
