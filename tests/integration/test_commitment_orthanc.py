"""Storage commitment end to end: the node delivers a wrist study's results, asks for commitment
and counts the delivery only when the PACS confirms it.

A real Orthanc (Storage Commitment SCP since 1.6) reports on a new association to the node's
SCP; a small pynetdicom PACS in the test reports on the N-ACTION's own association (failures
first, then success) or never reports at all.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.events import Event

from dicomnode.audit import read_events
from dicomnode.commitment import (
    ALL_COMMITTED,
    FAILURES_EXIST,
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
)
from dicomnode.work_queue import WorkQueue
from pipeline.dicom import dimse
from tests.conftest import require_tool
from tests.integration.node_process import ROOT, NodeProcess
from tests.integration.orthanc import OrthancServer, free_port, orthanc_available
from train.phantoms.archive import generate_archive, read_truth

pytestmark = pytest.mark.integration
NATIVE = ("explicit_le", "implicit_le")


class CommittingOrthanc(OrthancServer):
    """An Orthanc that knows the node (AE title WRISTAI at `node_port`, set before start) as a
    modality whose storage commitment requests it answers, on a new association to that port."""

    node_port = 0

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["DicomModalities"]["wristai"] = {
            "AET": "WRISTAI",
            "Host": "127.0.0.1",
            "Port": self.node_port,
            "AllowStorageCommitment": True,  # Orthanc 1.10: N-ACTION and N-EVENT-REPORT
        }
        return config


@pytest.fixture(scope="module")
def wrist_study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The instances of one wrist study in a syntax storescu proposes by default."""
    out = tmp_path_factory.mktemp("commitment-archive")
    generate_archive(out, studies=6, seed=11, size="small", workers=1)
    studies: dict[str, list[Path]] = defaultdict(list)
    for row in read_truth(out):
        if not row["corrupt"] and row["transfer_syntax"] in NATIVE and row["body_part"] == "wrist":
            studies[row["study_instance_uid"]].append(out / row["path"])
    assert studies, "the archive holds no readable wrist study"
    return next(iter(studies.values()))


def _study_uid(files: list[Path]) -> str:
    import pydicom

    return str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)


def _wait_for(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return predicate()


def _state(node: NodeProcess, study_uid: str) -> tuple[str, str]:
    queue = WorkQueue(node.index_path)
    try:
        study = queue.study(study_uid)
        return ("", "") if study is None else (study.state, study.reason)
    finally:
        queue.close()


def _status(node: NodeProcess) -> tuple[str, dict[str, Any]]:
    command = [sys.executable, "-m", "dicomnode.cli", "status", "--config", str(node.config)]
    text = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)
    as_json = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=60,
                             cwd=ROOT)  # fmt: skip
    assert text.returncode == 0 and as_json.returncode == 0, text.stderr + as_json.stderr
    return text.stdout, json.loads(as_json.stdout)


def _node(tmp_path: Path, pacs_aet: str, pacs_port: int, **sending: float) -> NodeProcess:
    return NodeProcess(
        tmp_path,
        destinations=[{"ae_title": pacs_aet, "host": "127.0.0.1", "port": pacs_port,
                       "storage_commitment": True}],
        sending={"commitment_timeout_seconds": 30.0, **sending},
    )  # fmt: skip


def test_orthanc_confirms_on_a_new_association_and_the_study_ends_done(
    tmp_path: Path, wrist_study: list[Path]
) -> None:
    if not orthanc_available():
        require_tool("Orthanc")
    orthanc = CommittingOrthanc(tmp_path / "orthanc")
    node = _node(tmp_path, orthanc.aet, orthanc.dicom_port)
    orthanc.node_port = node.port
    with orthanc:
        node.start()
        try:
            assert node.storescu(wrist_study).returncode == 0
            uid = _study_uid(wrist_study)
            assert _wait_for(lambda: _state(node, uid)[0] == "done", 180), (
                _state(node, uid), node.log()[-3000:], orthanc.log_tail())  # fmt: skip
            queue = WorkQueue(node.index_path)
            commitments = queue.commitments(uid)
            queue.close()
            assert [c.status for c in commitments] == ["committed"]
            assert commitments[0].reported_by == orthanc.aet
            stored = {orthanc.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"]
                      for i in orthanc.instances()}  # fmt: skip
            assert {r.sop_instance_uid for r in commitments[0].instances} <= stored
            assert len(commitments[0].instances) >= 2  # the SR and a Secondary Capture
            text, report = _status(node)
            assert report["commitments"]["committed"] == 1
            assert report["commitments"]["awaiting"] == 0
            assert "storage commitment: awaiting 0, committed 1" in text
            with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/metrics",
                                        timeout=10) as answer:  # fmt: skip
                metrics = answer.read().decode()
            assert "# HELP dicomnode_storage_commitments " in metrics
            assert 'dicomnode_storage_commitments{status="committed"} 1.0' in metrics
        finally:
            assert node.stop() == 0, node.log()[-3000:]
    events = read_events(node.audit_path)
    committed = [e for e in events if e["event"] == "result-committed"]
    assert len(committed) == 1 and committed[0]["study_uid"] == uid
    assert committed[0]["transaction_uid"] == commitments[0].transaction_uid
    # Orthanc reported on an association of its own, to the node's SCP.
    assert any(e["event"] == "association-accepted" and e["calling_aet"] == orthanc.aet
               for e in events)  # fmt: skip


class FakePacs:
    """A pynetdicom PACS: stores whatever it is sent, answers every N-ACTION with Success and
    then, per `reports`, an N-EVENT-REPORT on the same association ("fail": every instance
    failed, "commit": all committed) or nothing (the list is used up)."""

    def __init__(self, reports: list[str]) -> None:
        self.reports = list(reports)
        self.requests: list[Dataset] = []
        self.answers: list[int] = []
        self.port = free_port()
        ae = AE(ae_title="FAKEPACS")
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL)
        ae.dimse_timeout = ae.network_timeout = 10
        handlers: list[Any] = [(evt.EVT_C_STORE, lambda event: dimse.SUCCESS),
                               (evt.EVT_N_ACTION, self._n_action)]  # fmt: skip
        self.server = ae.start_server(("127.0.0.1", self.port), block=False,
                                      evt_handlers=handlers)  # fmt: skip

    def _n_action(self, event: Event) -> tuple[int, None]:
        request = event.action_information
        self.requests.append(request)
        if self.reports:
            kind = self.reports.pop(0)
            threading.Thread(target=self._report, args=(event.assoc, request, kind)).start()
        return dimse.SUCCESS, None

    def _report(self, assoc: Any, request: Dataset, kind: str) -> None:
        time.sleep(0.2)  # after the N-ACTION response is out
        report = Dataset()
        report.TransactionUID = request.TransactionUID
        if kind == "commit":
            report.ReferencedSOPSequence = request.ReferencedSOPSequence
        else:
            report.FailedSOPSequence = request.ReferencedSOPSequence
            for item in report.FailedSOPSequence:
                item.FailureReason = 0x0110
        event_type = ALL_COMMITTED if kind == "commit" else FAILURES_EXIST
        status, _ = assoc.send_n_event_report(report, event_type, STORAGE_COMMITMENT_PUSH_MODEL,
                                              STORAGE_COMMITMENT_INSTANCE)  # fmt: skip
        self.answers.append(int(status.Status) if "Status" in status else -1)

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def fake_pacs(request: pytest.FixtureRequest) -> Iterator[FakePacs]:
    pacs = FakePacs(request.param)
    yield pacs
    pacs.stop()


@pytest.mark.parametrize("fake_pacs", [["fail", "commit"]], indirect=True)
def test_a_report_with_failures_on_the_same_association_is_retried(
    tmp_path: Path, wrist_study: list[Path], fake_pacs: FakePacs
) -> None:
    node = _node(tmp_path, "FAKEPACS", fake_pacs.port, initial_delay_seconds=1.0)
    node.start()
    try:
        assert node.storescu(wrist_study).returncode == 0
        uid = _study_uid(wrist_study)
        assert _wait_for(lambda: _state(node, uid)[0] == "done", 180), (
            _state(node, uid), node.log()[-3000:])  # fmt: skip
    finally:
        assert node.stop() == 0, node.log()[-3000:]
    assert len(fake_pacs.requests) == 2  # resent, then a second N-ACTION
    first, second = (str(r.TransactionUID) for r in fake_pacs.requests)
    assert first != second
    assert fake_pacs.answers == [dimse.SUCCESS, dimse.SUCCESS]
    kinds = ("result-sent", "commitment-failed", "result-committed")
    events = [e for e in read_events(node.audit_path) if e["event"] in kinds]
    assert [e["event"] for e in events] == ["result-sent", "commitment-failed", "result-sent",
                                            "result-committed"]  # fmt: skip
    assert events[1]["outcome"] == "pending" and "0x0110 processing failure" in events[1]["reason"]
    assert events[3]["transaction_uid"] == second


@pytest.mark.parametrize("fake_pacs", [[]], indirect=True)
def test_a_pacs_that_never_reports_is_retried_then_the_study_fails(
    tmp_path: Path, wrist_study: list[Path], fake_pacs: FakePacs
) -> None:
    node = _node(tmp_path, "FAKEPACS", fake_pacs.port, commitment_timeout_seconds=2.0,
                 initial_delay_seconds=1.0, max_delay_seconds=2.0,
                 give_up_after_seconds=5.0)  # fmt: skip
    node.start()
    try:
        assert node.storescu(wrist_study).returncode == 0
        uid = _study_uid(wrist_study)
        assert _wait_for(lambda: _state(node, uid)[0] == "failed", 180), (
            _state(node, uid), node.log()[-3000:])  # fmt: skip
        reason = _state(node, uid)[1]
        text, report = _status(node)
    finally:
        assert node.stop() == 0, node.log()[-3000:]
    assert len(fake_pacs.requests) >= 2  # retried before giving up
    n = len(fake_pacs.requests[0].ReferencedSOPSequence)
    assert reason == (f"FAKEPACS@127.0.0.1:{fake_pacs.port}: PACS did not confirm storage of"
                      f" {n} instance(s) within 2 s")  # fmt: skip
    assert report["commitments"]["expired"] == len(fake_pacs.requests)
    assert report["commitments"]["committed"] == 0
    assert "failed" in text and "PACS did not confirm storage" in text
    failed = [e for e in read_events(node.audit_path) if e["event"] == "commitment-failed"]
    assert [e["outcome"] for e in failed][-1] == "failed"
    assert all(e["outcome"] == "pending" for e in failed[:-1])
