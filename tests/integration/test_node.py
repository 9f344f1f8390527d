"""The node end to end: storescu -> node -> analysis -> SR + SCs in a real Orthanc."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomnode.index import Index
from tests.integration.orthanc import OrthancServer, free_ports
from train.phantoms.archive import read_truth

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
NATIVE = ("explicit_le", "implicit_le")


def _native_studies(archive: Path) -> dict[str, list[dict[str, str]]]:
    """Readable instances in syntaxes storescu proposes by default, grouped by study."""
    studies: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in read_truth(archive):
        if not row["corrupt"] and row["transfer_syntax"] in NATIVE:
            studies[row["study_instance_uid"]].append(row)
    return studies


def _start_node(tmp_path: Path, orthanc: OrthancServer, *, report_out_of_scope: bool = False,
                grace: float = 0.5) -> tuple[subprocess.Popen[str], int]:  # fmt: skip
    port, http_port = free_ports(2)
    config = tmp_path / "node.toml"
    config.write_text(
        f'[node]\nport = {port}\n[storage]\npath = "{tmp_path / "node"}"\n'
        f"[http]\nport = {http_port}\n"
        f"[completeness]\ngrace_seconds = {grace}\nquiet_seconds = 10.0\n"
        f'[model]\nbundle = "{ROOT / "config" / "models" / "wrist-demo"}"\n'
        "[sending]\ninitial_delay_seconds = 1.0\n"
        f'[[destinations]]\nae_title = "{orthanc.aet}"\nhost = "127.0.0.1"\n'
        f"port = {orthanc.dicom_port}\n"
        f"[results]\nreport_out_of_scope = {str(report_out_of_scope).lower()}\n",
        encoding="utf-8",
    )
    node = subprocess.Popen([sys.executable, "-m", "dicomnode.cli", "serve", "--config",
                             str(config)], stderr=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        echo = subprocess.run(["echoscu", "-aec", "WRISTAI", "127.0.0.1", str(port)],
                              capture_output=True, timeout=30)  # fmt: skip
        if echo.returncode == 0:
            return node, port
        time.sleep(0.3)
    node.kill()
    raise AssertionError(f"the node did not start: {node.communicate()[1][-2000:]}")


def _send(port: int, files: list[Path]) -> None:
    command = ["storescu", "-aec", "WRISTAI", "127.0.0.1", str(port), *map(str, files)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def _modalities(orthanc: OrthancServer) -> list[str]:
    return sorted(orthanc.get(f"/instances/{i}/simplified-tags")["Modality"]
                  for i in orthanc.instances())  # fmt: skip


def _wait_for(predicate: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.5)
    return False


def test_a_wrist_study_comes_back_as_sr_and_secondary_captures(
    tmp_path: Path, orthanc: OrthancServer, synthetic_archive: Path
) -> None:
    studies = _native_studies(synthetic_archive)
    wrist = next(r for r in studies.values() if r[0]["body_part"] == "wrist")
    other = next(r for r in studies.values() if r[0]["body_part"] != "wrist")
    node, port = _start_node(tmp_path, orthanc)
    try:
        _send(port, [synthetic_archive / r["path"] for r in wrist])
        _send(port, [synthetic_archive / r["path"] for r in other])
        assert _wait_for(lambda: "SR" in _modalities(orthanc), 120), _modalities(orthanc)
        assert _wait_for(lambda: _modalities(orthanc).count("OT") >= len(wrist), 30)
        index = Index(tmp_path / "node" / "index.sqlite")
        assert _wait_for(lambda: index.study(wrist[0]["study_instance_uid"]).state == "done", 30)
        # The two studies are analysed in parallel: the other one may finish after the wrist.
        other_uid = other[0]["study_instance_uid"]
        assert _wait_for(lambda: index.study(other_uid).state == "out_of_scope", 30)
        out = index.study(other_uid)
        assert out is not None and out.state == "out_of_scope" and out.reason
        # Nothing was sent for the chest/pelvis/skull study.
        stored = {orthanc.get(f"/instances/{i}/simplified-tags")["StudyInstanceUID"]
                  for i in orthanc.instances()}  # fmt: skip
        assert stored == {wrist[0]["study_instance_uid"]}
        # Our own results routed back to us are kept but never analysed again.
        sc_id = next(
            i
            for i in orthanc.instances()
            if orthanc.get(f"/instances/{i}/simplified-tags")["Modality"] == "OT"
        )
        sc_file = tmp_path / "sc.dcm"
        with urllib.request.urlopen(f"{orthanc.url}/instances/{sc_id}/file", timeout=30) as r:
            sc_file.write_bytes(r.read())
        before = len(orthanc.instances())
        _send(port, [sc_file])
        time.sleep(3)
        assert index.study(wrist[0]["study_instance_uid"]).state == "done"  # type: ignore[union-attr]
        assert len(orthanc.instances()) == before
        _check_health_and_metrics(tmp_path / "node.toml")
    finally:
        node.terminate()
        _, err = node.communicate(timeout=60)
    assert node.returncode == 0, err[-2000:]
    assert all(r["patient_id"] not in err for r in wrist + other)
    # The audit trail tells who sent which study and where its results went, without patient data.
    audit_text = (tmp_path / "node" / "audit.jsonl").read_text()
    events = [json.loads(line) for line in audit_text.splitlines()]
    received = {e["study_uid"]: e for e in events if e["event"] == "study-received"}
    assert received[wrist[0]["study_instance_uid"]]["calling_aets"] == ["STORESCU"]
    assert received[wrist[0]["study_instance_uid"]]["instances"] == len(wrist)
    sent = [e for e in events if e["event"] == "result-sent"]
    assert [e["study_uid"] for e in sent] == [wrist[0]["study_instance_uid"]]
    assert sent[0]["destination"].startswith(orthanc.aet) and sent[0]["instances"] >= 2
    assert all(r["patient_id"] not in audit_text for r in wrist + other)


def test_restart_mid_study_loses_nothing_and_late_instances_revise_the_sr(
    tmp_path: Path, orthanc: OrthancServer, synthetic_archive: Path
) -> None:
    studies = _native_studies(synthetic_archive)
    rows = next(r for r in studies.values() if r[0]["body_part"] == "wrist" and len(r) >= 3)
    first, second, late = rows[:1], rows[1:-1], rows[-1:]
    node, port = _start_node(tmp_path, orthanc)
    _send(port, [synthetic_archive / r["path"] for r in first])
    node.kill()  # kill -9 in the middle of the study (its worker notices and exits)
    node.wait(timeout=30)
    assert node.stderr is not None
    node.stderr.close()
    node, port = _start_node(tmp_path, orthanc)
    uid = rows[0]["study_instance_uid"]
    index = Index(tmp_path / "node" / "index.sqlite")

    def done_with(n: int) -> bool:
        study = index.study(uid)
        return study is not None and study.state == "done" and study.n_instances == n

    try:
        _send(port, [synthetic_archive / r["path"] for r in second])
        assert _wait_for(lambda: done_with(len(first) + len(second)), 120)
        before = _latest_sr(orthanc)
        assert {r["sop_instance_uid"] for r in first + second} <= _evidence(before)  # all kept
        _send(port, [synthetic_archive / r["path"] for r in late])
        assert _wait_for(lambda: done_with(len(rows)), 120)
        after = _latest_sr(orthanc)
        assert after["SOPInstanceUID"] != before["SOPInstanceUID"]
        predecessor = after["PredecessorDocumentsSequence"][0]
        referenced = predecessor["ReferencedSeriesSequence"][0]["ReferencedSOPSequence"][0]
        assert referenced["ReferencedSOPInstanceUID"] == before["SOPInstanceUID"]
    finally:
        node.terminate()
        node.communicate(timeout=60)


def test_an_instance_within_the_grace_period_withdraws_the_held_results_no_revision(
    tmp_path: Path, orthanc: OrthancServer, synthetic_archive: Path
) -> None:
    """The first instance's study is analysed at once, its results held for the grace period;
    the second instance arrives within it: those results never go out, and the PACS gets one
    report covering both instances, not a report and its revision."""
    studies = _native_studies(synthetic_archive)
    wrists = [r for r in studies.values() if r[0]["body_part"] == "wrist" and len(r) >= 2]
    warm_up, rows = wrists[0], wrists[1]
    node, port = _start_node(tmp_path, orthanc, grace=10.0)
    index = Index(tmp_path / "node" / "index.sqlite")

    def state(uid: str) -> str | None:
        study = index.study(uid)
        return None if study is None else study.state

    uid = rows[0]["study_instance_uid"]
    try:
        # Once a study is done, the workers have loaded the model: the next starts at once.
        _send(port, [synthetic_archive / r["path"] for r in warm_up])
        assert _wait_for(lambda: state(warm_up[0]["study_instance_uid"]) == "done", 120)
        _send(port, [synthetic_archive / rows[0]["path"]])
        assert _wait_for(lambda: state(uid) == "sending", 9.0), state(uid)  # results held
        _send(port, [synthetic_archive / r["path"] for r in rows[1:]])
        assert _wait_for(lambda: state(uid) == "done", 120), state(uid)
        tags = [orthanc.get(f"/instances/{i}/tags?simplify") for i in orthanc.instances()]
        (report,) = [t for t in tags if t["Modality"] == "SR" and t["StudyInstanceUID"] == uid]
        assert _evidence(report) == {r["sop_instance_uid"] for r in rows}
        assert "PredecessorDocumentsSequence" not in report
    finally:
        node.terminate()
        node.communicate(timeout=60)


@pytest.mark.parametrize("case", ["wrist view after the hand view", "corrected body part"])
def test_an_out_of_scope_study_is_reopened_analysed_and_its_report_revised(
    tmp_path: Path, orthanc: OrthancServer, synthetic_archive: Path, case: str
) -> None:
    studies = _native_studies(synthetic_archive)
    rows = next(r for r in studies.values() if r[0]["body_part"] == "wrist" and len(r) >= 2)
    source = synthetic_archive / rows[0]["path"]
    if case == "wrist view after the hand view":
        # The hand view first (a wrist image tagged HAND, which the wrist filter refuses on the
        # tag alone), the wrist views of the same study later.
        first = _retagged(source, "HAND", tmp_path / "hand.dcm")
        later = [synthetic_archive / r["path"] for r in rows[1:]]
        stored_tag = "HAND"
    else:
        # A wrist image tagged CHEST, then the same SOP Instance UID with the tag corrected: the
        # latest copy replaces the stored one.
        rows = rows[:1]
        first = _retagged(source, "CHEST", tmp_path / "chest.dcm")
        later = [_retagged(source, "WRIST", tmp_path / "wrist.dcm")]
        stored_tag = "WRIST"
    uid = rows[0]["study_instance_uid"]
    node, port = _start_node(tmp_path, orthanc, report_out_of_scope=True)
    index = Index(tmp_path / "node" / "index.sqlite")

    def ended_in(state: str, n: int) -> bool:
        study = index.study(uid)
        return study is not None and study.state == state and study.n_instances == n

    try:
        _send(port, [first])
        assert _wait_for(lambda: ended_in("out_of_scope", 1), 120), index.study(uid)
        assert _modalities(orthanc) == ["SR"]  # the "not analysed" report, nothing else
        not_analysed = _latest_sr(orthanc)
        assert _evidence(not_analysed) == {rows[0]["sop_instance_uid"]}
        _send(port, later)
        assert _wait_for(lambda: ended_in("done", len(rows)), 120), index.study(uid)
        assert _wait_for(lambda: "OT" in _modalities(orthanc), 30)
        report = _latest_sr(orthanc)
        assert report["SOPInstanceUID"] != not_analysed["SOPInstanceUID"]
        assert _evidence(report) == {r["sop_instance_uid"] for r in rows}
        predecessor = report["PredecessorDocumentsSequence"][0]
        referenced = predecessor["ReferencedSeriesSequence"][0]["ReferencedSOPSequence"][0]
        assert referenced["ReferencedSOPInstanceUID"] == not_analysed["SOPInstanceUID"]
        stored = index.instance(rows[0]["sop_instance_uid"])
        assert stored is not None and pydicom.dcmread(stored.path).BodyPartExamined == stored_tag
    finally:
        node.terminate()
        node.communicate(timeout=60)


def _retagged(source: Path, body_part: str, out: Path) -> Path:
    """A copy of `source` (same SOP Instance UID) whose Body Part Examined says `body_part`."""
    dataset = pydicom.dcmread(source)
    dataset.BodyPartExamined = body_part
    dataset.save_as(out)
    return out


def _evidence(report: dict[str, Any]) -> set[str]:
    return {ref["ReferencedSOPInstanceUID"]
            for series in report["CurrentRequestedProcedureEvidenceSequence"]
            for s in series["ReferencedSeriesSequence"]
            for ref in s["ReferencedSOPSequence"]}  # fmt: skip


def _check_health_and_metrics(config: Path) -> None:
    port = int(config.read_text().split("[http]\nport = ")[1].split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=10) as answer:
        health = json.loads(answer.read())
    assert health["ok"] and health["database"]
    assert health["workers"] == health["expected_workers"] >= 1  # 0 in the file: one per core
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        metrics = answer.read().decode()
    assert 'dicomnode_studies{state="done"} 1.0' in metrics
    assert 'dicomnode_studies{state="out_of_scope"} 1.0' in metrics
    for stage in ("receive", "wait", "preprocess", "inference", "report", "send"):
        assert f'dicomnode_stage_seconds_count{{stage="{stage}"}}' in metrics, stage
    received = next(line for line in metrics.splitlines()
                    if line.startswith("dicomnode_instances_received_total"))  # fmt: skip
    assert float(received.split()[-1]) >= 3
    received_bytes = next(line for line in metrics.splitlines()
                          if line.startswith("dicomnode_received_bytes_total"))  # fmt: skip
    assert float(received_bytes.split()[-1]) > 100_000


def _latest_sr(orthanc: OrthancServer) -> dict[str, Any]:
    reports = [orthanc.get(f"/instances/{i}/tags?simplify") for i in orthanc.instances()]
    srs = [r for r in reports if r["Modality"] == "SR"]
    return max(srs, key=lambda r: int(r["InstanceNumber"]))
