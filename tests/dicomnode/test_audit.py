"""The audit trail: one JSON line per event, appended by several processes without tearing,
private to the service user, and never a reason to fail the work it records."""

from __future__ import annotations

import json
import logging
import multiprocessing
from pathlib import Path

import pytest

from dicomnode.audit import EVENTS, AuditLog, read_events


def _append_many(path: str, worker: int) -> None:
    audit = AuditLog(Path(path))
    for n in range(200):
        audit.record("result-sent", study_uid=f"1.2.{worker}.{n}", destination="X" * 300)


def test_events_are_json_lines_with_time_and_fields(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "sub" / "audit.jsonl")
    audit.record("association-accepted", calling_aet="CR1", address="127.0.0.1")
    audit.record("study-received", study_uid="1.2.3", instances=4)
    events = read_events(audit.path)
    assert [e["event"] for e in events] == ["association-accepted", "study-received"]
    assert events[0]["calling_aet"] == "CR1" and events[1]["instances"] == 4
    assert all(e["time"].endswith("Z") and len(e["time"]) == 24 for e in events)
    assert (audit.path.stat().st_mode & 0o777) == 0o600


def test_unknown_event_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown audit event"):
        AuditLog(tmp_path / "a.jsonl").record("patient-viewed")
    assert set(EVENTS) >= {"association-rejected", "result-failed", "study-purged"}


def test_processes_appending_at_once_never_tear_a_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_append_many, args=(str(path), w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 800
    uids = {json.loads(line)["study_uid"] for line in lines}  # each line parses whole
    assert len(uids) == 800


def test_an_unwritable_trail_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocked = tmp_path / "audit.jsonl"
    blocked.mkdir()  # a directory where the file should be: open() fails
    with caplog.at_level(logging.ERROR, logger="dicomnode.audit"):
        AuditLog(blocked).record("result-sent", study_uid="1.2")
    assert "audit event result-sent not written" in caplog.text
