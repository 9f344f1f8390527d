"""Site acceptance (`dicomnode-train accept`): labels, the rule, the report and recalibration."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.dicomio import read_radiograph
from pipeline.inference import ModelBundle
from train.acceptance import (
    METRICS,
    Figure,
    StudyScore,
    assess,
    card_figures,
    group_studies,
    passes,
    raw_study_logit,
)
from train.acceptance_cli import read_labels
from train.cli import main
from train.evaluation.calibration import expected_calibration_error
from train.evaluation.metrics import operating_point, roc_auc, wilson_interval
from train.phantoms.archive import generate_archive
from train.recalibrate import bump_version, holdout_split
from train.report_labels import label_report, label_reports

DEMO = Path(__file__).resolve().parents[2] / "config" / "models" / "wrist-demo"
NATIVE = ("explicit_le", "implicit_le", "deflated", "rle")


@pytest.mark.parametrize(
    ("text", "label"),
    [
        ("No fracture.", 0),
        ("Fracture of the distal radius.", 1),
        ("No evidence of acute fracture.", 0),
        ("Healing fracture of the distal radius.", None),
        ("No evidence of acute fracture. Old healed fracture of the ulnar styloid.", None),
        ("Normal wrist.", 0),
        ("Impression: no acute bony injury.", 0),
        ("", None),
        ("Soft tissue swelling.", None),
        ("Clinical history: fall on outstretched hand, ?fracture\nFindings: No fracture.", 0),
        ("Possible fracture of the scaphoid.", None),
        ("A scaphoid fracture cannot be excluded.", None),
        ("Fracture not excluded.", None),
        ("Fracture is not seen.", 0),
        ("A fracture of the distal radius is not seen.", 0),
        ("Fracture of the scaphoid which is not seen on the lateral view.", 1),
        ("Fracture ruled out.", 0),
        ("Fracture: none.", 0),
        ("Negative for fracture.", 0),
        ("The radius is not fractured.", 0),
        ("No displacement of the fracture fragments.", 1),
        ("Non-displaced fracture of the radial styloid.", 1),
        ("No dislocation, effusion or fracture.", 0),
        ("No dislocation, fracture of the distal radius.", 1),
        ("No dislocation. Transverse fracture of the distal radius.", 1),
        ("No fracture of the radius. Fracture of the scaphoid.", 1),
        ("8-year-old boy. Buckle fracture of the distal radius.", 1),
        ("Compared with prior study, new fracture of the radius.", 1),
        ("Fx distal radius.", 1),
    ],
)
def test_report_labeller(text: str, label: int | None) -> None:
    assert label_report(text).label == label


def test_label_reports_counts_and_excludes_what_it_cannot_label(tmp_path: Path) -> None:
    path = tmp_path / "reports.csv"
    path.write_text(
        'study_uid,report_text\n1.1,"No fracture."\n1.2,"Fracture of the radius."\n'
        '1.3,"Possible fracture."\n1.4,"Healing fracture."\n',
        encoding="utf-8",
    )
    result = label_reports(path)
    assert result.labels == {"1.1": 0, "1.2": 1}
    assert result.unlabelled == {"1.3": "uncertain", "1.4": "old or healing"}
    assert sum(result.reasons.values()) == 4


def test_read_labels_accepts_words_and_names_a_bad_line(tmp_path: Path) -> None:
    good = tmp_path / "labels.csv"
    good.write_text("study_uid,label\n1.1,fracture\n1.2,No Fracture\n1.3,1\n", encoding="utf-8")
    assert read_labels(good) == {"1.1": 1, "1.2": 0, "1.3": 1}
    bad = tmp_path / "bad.csv"
    bad.write_text("study_uid,label\n1.1,0\n1.2,maybe\n", encoding="utf-8")
    with pytest.raises(ValueError, match="line 3"):
        read_labels(bad)


def test_rule_fails_only_when_the_local_interval_is_wholly_worse() -> None:
    card = Figure(0.95, (0.93, 0.96))
    inside = Figure(0.94, (0.90, 0.97))
    overlapping = Figure(0.90, (0.85, 0.931))
    worse = Figure(0.85, (0.80, 0.92))
    better = Figure(0.99, (0.97, 1.0))
    assert passes(inside, card, higher_is_better=True)
    assert passes(overlapping, card, higher_is_better=True)
    assert not passes(worse, card, higher_is_better=True)
    assert passes(better, card, higher_is_better=True)
    limit = Figure(0.05, (0.0, 0.05))
    assert passes(Figure(0.08, (0.04, 0.15)), limit, higher_is_better=False)
    assert not passes(Figure(0.20, (0.12, 0.30)), limit, higher_is_better=False)


def _card(sensitivity_ci: tuple[float, float]) -> dict[str, Figure]:
    card = {m.key: Figure(0.5, (0.0, 1.0), "card") for m in METRICS}
    card["sensitivity_possible"] = Figure(sum(sensitivity_ci) / 2, sensitivity_ci, "card")
    return card


def test_assess_passes_one_metric_and_fails_another() -> None:
    # 60 fractured, 60 intact; at 'possible' (0.5) 30/60 fractured are found.
    labels = np.array([1] * 60 + [0] * 60)
    probabilities = np.array([0.9] * 30 + [0.4] * 30 + [0.1] * 60)
    thresholds = {"possible": 0.5, "likely": 0.8}
    report = assess(labels, probabilities, thresholds, _card((0.93, 0.96)), not_analysed=0)
    verdicts = {c.metric.key: c.verdict for c in report.checks}
    assert verdicts["sensitivity_possible"] == "FAIL"  # 0.5 [0.38, 0.62] is wholly below
    assert verdicts["specificity_possible"] == "PASS"
    assert not report.passed
    lenient = assess(labels, probabilities, thresholds, _card((0.55, 0.70)), not_analysed=0)
    assert lenient.passed


def test_too_few_local_studies_fail_as_insufficient() -> None:
    labels = np.array([1] * 10 + [0] * 60)
    probabilities = np.where(labels == 1, 0.9, 0.1)
    report = assess(
        labels,
        probabilities,
        {"possible": 0.5, "likely": 0.8},
        _card((0.0, 1.0)),
        not_analysed=0,
        min_per_class=50,
    )
    assert "insufficient local data: 10 fractured" in report.insufficient
    assert {c.verdict for c in report.checks} == {"INSUFFICIENT"}
    assert not report.passed
    card = _card((0.0, 1.0))
    card["auc"] = Figure(None, None, "card")
    enough = assess(
        labels,
        probabilities,
        {"possible": 0.5, "likely": 0.8},
        card,
        not_analysed=0,
        min_per_class=10,
    )
    assert next(c for c in enough.checks if c.metric.key == "auc").verdict == "NO CARD FIGURE"
    assert not enough.passed


def test_card_figures_are_the_external_test_figures() -> None:
    info = ModelBundle.load(DEMO).info
    study = info.metrics["external_test"]["aggregations"][info.aggregation]["study"]
    card = card_figures(info, max_ece=0.2)
    assert card["auc"] == Figure(study["auc"], tuple(study["auc_ci95"]), "card")
    likely = study["operating_points"]["high_specificity"]
    assert card["specificity_likely"].value == likely["specificity"]
    assert card["specificity_likely"].ci95 == tuple(likely["specificity_ci95"])
    assert card["ece"] == Figure(0.2, (0.0, 0.2), "limit")  # the demo card records no ECE


def test_holdout_split_is_stratified_and_reproducible() -> None:
    scores = [
        StudyScore(f"1.{i}", i % 2, True, 0.5, 0.0, (0.0,), "negative", "") for i in range(40)
    ]
    fit, check = holdout_split(scores, 0.25)
    assert len(check) == 10 and sum(s.label for s in check) == 5
    assert {s.study_uid for s in fit} | {s.study_uid for s in check} == {
        s.study_uid for s in scores
    }
    again = holdout_split(list(reversed(scores)), 0.25)[1]
    assert {s.study_uid for s in again} == {s.study_uid for s in check}


def test_bump_version() -> None:
    assert bump_version("2.2.0") == "2.2.0+site.1"
    assert bump_version("2.2.0+site.1") == "2.2.0+site.2"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site") / "archive"
    generate_archive(out, studies=12, seed=2, syntaxes=NATIVE)
    return out


@pytest.fixture(scope="module")
def accepted(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One end-to-end run with recalibration (the slow part: every study is scored)."""
    root = tmp_path_factory.mktemp("accepted")
    before = _tree_digest(DEMO)
    code = main(
        [
            "accept",
            str(DEMO),
            str(archive),
            "--labels",
            str(archive / "labels.csv"),
            "--min-per-class",
            "2",
            "--n-boot",
            "200",
            "--json",
            str(root / "out.json"),
            "--recalibrate",
            str(root / "site"),
            "--recalibrate-views",
        ]
    )
    return {
        "code": code,
        "report": json.loads((root / "out.json").read_text(encoding="utf-8")),
        "bundle": root / "site",
        "untouched": _tree_digest(DEMO) == before,
    }


def test_report_numbers_equal_a_direct_computation(accepted: dict[str, Any]) -> None:
    report = accepted["report"]
    studies = report["studies"]
    analysed = [s for s in studies if s["analysed"]]
    y = np.array([s["label"] for s in analysed])
    p = np.array([s["probability"] for s in analysed])
    figures = {m["metric"]: m for m in report["acceptance"]["metrics"]}
    assert figures["auc"]["local"]["value"] == pytest.approx(roc_auc(y, p))
    thresholds = ModelBundle.load(DEMO).info.thresholds
    for level in ("possible", "likely"):
        point = operating_point(y, p, thresholds[level], level)
        assert figures[f"sensitivity_{level}"]["local"]["value"] == point.sensitivity
        assert figures[f"specificity_{level}"]["local"]["ci95"] == list(point.specificity_ci95)
    assert figures["ece"]["local"]["value"] == pytest.approx(expected_calibration_error(p, y))
    refused = len(studies) - len(analysed)
    assert figures["not_analysed"]["local"]["value"] == refused / len(studies)
    assert figures["not_analysed"]["local"]["ci95"] == list(wilson_interval(refused, len(studies)))
    labels = {
        r["study_instance_uid"]: int(r["label"])
        for r in csv.DictReader((Path(report["archive"]) / "labels.csv").open(encoding="utf-8"))
    }
    assert {s["study_uid"]: s["label"] for s in studies} == labels
    final = report["recalibration"]["acceptance"]["passed"]
    assert accepted["code"] == (0 if final else 1)


def test_recalibration_writes_a_new_loadable_bundle(accepted: dict[str, Any]) -> None:
    original = ModelBundle.load(DEMO).info
    new = ModelBundle.load(accepted["bundle"]).info
    assert accepted["untouched"]
    assert new.version == "2.3.0+site.1"
    assert new.study_temperature != original.study_temperature
    assert new.view_temperature != original.view_temperature
    record = new.metrics["recalibration"]
    assert record["from_version"] == original.version
    analysed = [s for s in accepted["report"]["studies"] if s["analysed"]]
    assert record["studies"] == len(analysed)
    assert record["positives"] == sum(s["label"] for s in analysed)
    assert len(record["data_hash"]) == 64
    change = record["changes"]["study_temperature"]
    assert (change["old"], change["new"]) == (original.study_temperature, new.study_temperature)
    assert new.metrics["calibration"]["study"][new.aggregation]["temperature"] == (
        new.study_temperature
    )
    card = (accepted["bundle"] / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert card.startswith("# Model card: wrist-demo 2.3.0+site.1")
    assert "## Local recalibration" in card and "(optimistic)" in card


def test_raw_study_logit_is_what_the_bundle_scaled(archive: Path) -> None:
    bundle = ModelBundle.load(DEMO)
    studies, _ = group_studies(archive)
    uid = sorted(studies)[0]
    prediction = bundle.predict([read_radiograph(p) for p in studies[uid]], heatmaps=False)
    raw = raw_study_logit(bundle.info, prediction)
    rescaled = 1.0 / (1.0 + math.exp(-raw / bundle.info.study_temperature))
    assert rescaled == pytest.approx(prediction.probability, abs=1e-9)


def test_reports_with_too_few_studies_fail_as_insufficient(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = list(csv.DictReader((archive / "labels.csv").open(encoding="utf-8")))
    texts = {"1": "Fracture of the distal radius.", "0": "No fracture."}
    reports = tmp_path / "reports.csv"
    with reports.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_uid", "report_text"])
        writer.writerow([rows[0]["study_instance_uid"], texts[rows[0]["label"]]])
        writer.writerow([rows[1]["study_instance_uid"], "Possible scaphoid fracture."])
    out = tmp_path / "out.json"
    assert (
        main(
            [
                "accept",
                str(DEMO),
                str(archive),
                "--reports",
                str(reports),
                "--n-boot",
                "50",
                "--json",
                str(out),
            ]
        )
        == 1
    )
    printed = capsys.readouterr().out
    assert "1 could not be labelled and are excluded" in printed and "1 uncertain" in printed
    assert "insufficient local data" in printed and "result: FAIL" in printed
    report = json.loads(out.read_text(encoding="utf-8"))
    assert [s["study_uid"] for s in report["studies"]] == [rows[0]["study_instance_uid"]]
    assert report["acceptance"]["passed"] is False


def test_recalibrate_refuses_an_existing_folder(archive: Path, tmp_path: Path) -> None:
    code = main(
        [
            "accept",
            str(DEMO),
            str(archive),
            "--labels",
            str(archive / "labels.csv"),
            "--recalibrate",
            str(tmp_path),
        ]
    )
    assert code == 2
