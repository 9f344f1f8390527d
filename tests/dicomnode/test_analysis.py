"""One study's analysis on received files: results written, out-of-scope handling."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest

from dicomnode.analysis import analyse_study
from dicomnode.index import Index
from dicomnode.spool import Spool
from pipeline.inference import ModelBundle
from train.phantoms.archive import read_truth

DEMO = Path(__file__).resolve().parents[2] / "config" / "models" / "wrist-demo"


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.load(DEMO)


def _received(archive: Path, tmp_path: Path, wrist: bool) -> tuple[Index, str]:
    studies: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in read_truth(archive):
        if not row["corrupt"]:
            studies[row["study_instance_uid"]].append(row)
    rows = next(r for r in studies.values() if (r[0]["body_part"] == "wrist") == wrist)
    index = Index(tmp_path / "index.sqlite")
    for row in rows:
        _index(index, row, archive / row["path"])
    return index, rows[0]["study_instance_uid"]


def _index(index: Index, row: dict[str, str], path: Path) -> None:
    index.record_instance(sop_uid=row["sop_instance_uid"], study_uid=row["study_instance_uid"],
                          series_uid="1.2", sop_class_uid="1.2", path=path, calling_aet="CR",
                          association_id="a", received_at=time.time(), ours=False)  # fmt: skip


def test_a_wrist_study_gives_an_sr_and_one_gsps_and_one_sc_per_image(
    bundle: ModelBundle, synthetic_archive: Path, tmp_path: Path
) -> None:
    index, uid = _received(synthetic_archive, tmp_path, wrist=True)
    instances = index.instances(uid)
    outcome = analyse_study(uid, instances, bundle, Spool(tmp_path / "results"))
    assert outcome.in_scope and outcome.prediction is not None
    modalities = sorted(str(pydicom.dcmread(f).Modality) for f in outcome.files)
    assert modalities.count("SR") == 1 and modalities.count("OT") == len(instances)
    assert modalities.count("PR") == len(instances)
    assert {"preprocess", "inference", "report"} <= set(outcome.timings)
    again = analyse_study(uid, instances, bundle, Spool(tmp_path / "results"))
    # The same inputs and model again (a crash before sending, the study received twice): the
    # same result UIDs, not a revision of an SR the PACS may never have had.
    assert sorted(again.files) == sorted(outcome.files)
    srs = [pydicom.dcmread(f) for f in again.files if pydicom.dcmread(f).Modality == "SR"]
    assert len(srs) == 1 and "PredecessorDocumentsSequence" not in srs[0]
    # (Other inputs make a revision: tests/integration/test_node.py, late instances.)


def test_out_of_scope_sends_nothing_unless_asked(
    bundle: ModelBundle, synthetic_archive: Path, tmp_path: Path
) -> None:
    index, uid = _received(synthetic_archive, tmp_path, wrist=False)
    quiet = analyse_study(uid, index.instances(uid), bundle, Spool(tmp_path / "r1"))
    assert not quiet.in_scope and quiet.files == () and "no wrist view" in quiet.reason
    told = analyse_study(uid, index.instances(uid), bundle, Spool(tmp_path / "r2"),
                         report_out_of_scope=True)  # fmt: skip
    assert len(told.files) == 1
    report = pydicom.dcmread(told.files[0])
    texts = [str(e.value) for e in report.iterall() if e.keyword == "TextValue"]
    assert report.Modality == "SR" and any("not analysed" in t.lower() for t in texts)


def test_a_corrected_instance_revises_the_not_analysed_report(
    bundle: ModelBundle, synthetic_archive: Path, tmp_path: Path
) -> None:
    # A wrist image tagged CHEST is out of scope; re-sent under the same SOP Instance UID with
    # its Body Part Examined corrected, it is analysed, and that SR revises the "not analysed" one
    # (the same inputs and model, so only the kind of report tells the two analyses apart).
    row = next(r for r in read_truth(synthetic_archive)
               if r["body_part"] == "wrist" and not r["corrupt"])  # fmt: skip
    uid, results = row["study_instance_uid"], Spool(tmp_path / "results")
    index, outcomes = Index(tmp_path / "index.sqlite"), []
    for body_part in ("CHEST", "WRIST"):
        source = pydicom.dcmread(synthetic_archive / row["path"])
        source.BodyPartExamined = body_part
        source.save_as(tmp_path / f"{body_part}.dcm")
        _index(index, row, tmp_path / f"{body_part}.dcm")
        outcomes.append(analyse_study(uid, index.instances(uid), bundle, results,
                                      report_out_of_scope=True))  # fmt: skip
    refused, analysed = outcomes
    assert not refused.in_scope and analysed.in_scope
    not_analysed = pydicom.dcmread(refused.files[0])
    report = next(ds for ds in map(pydicom.dcmread, analysed.files) if ds.Modality == "SR")
    predecessor = report.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert predecessor.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == (
        not_analysed.SOPInstanceUID
    )
    assert int(report.InstanceNumber) == int(not_analysed.InstanceNumber) + 1
    # Analysed again (a crash before sending): the same revision, not a revision of it.
    again = analyse_study(uid, index.instances(uid), bundle, results, report_out_of_scope=True)
    assert sorted(again.files) == sorted(analysed.files)
