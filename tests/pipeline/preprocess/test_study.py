"""The whole preprocessing against the synthetic archive's ground truth (not its own output)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.dicomio import read_radiograph
from pipeline.preprocess.study import PreprocessedInstance, PreprocessParams, preprocess_radiograph
from train.evaluation.preprocessing_checks import PreprocessingReport, markdown_table, score
from train.phantoms.archive import generate_archive, read_truth

Row = dict[str, str]
Results = list[tuple[Row, PreprocessedInstance]]


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Results:
    archive = tmp_path_factory.mktemp("study-archive")
    generate_archive(archive, studies=150, seed=13, size="small", workers=2)
    params = PreprocessParams()
    out = []
    for row in read_truth(archive):
        if not row["corrupt"]:
            out.append((row, preprocess_radiograph(read_radiograph(archive / row["path"]), params)))
    return out


@pytest.fixture(scope="module")
def report(results: Results) -> PreprocessingReport:
    return score(results)


def _wrists(
    results: Results,
) -> Results:
    return [(r, p) for r, p in results if r["body_part"] == "wrist" and p.wrist.is_wrist]


def test_wrist_filter_agrees_with_the_truth(report: PreprocessingReport) -> None:
    scope = report.checks["scope"].overall
    assert scope.value is not None and scope.value >= 0.99


def test_inversion_is_decided_right(report: PreprocessingReport) -> None:
    inversion = report.checks["inversion"].overall
    assert inversion.n > 250 and inversion.value is not None and inversion.value >= 0.98


def test_number_of_parts_is_right(report: PreprocessingReport) -> None:
    parts = report.checks["parts"]
    assert parts.overall.value is not None and parts.overall.value >= 0.95
    assert parts.groups["truth parts"]["2"].n >= 5  # the two-part case is exercised


def test_views_are_upright_with_fingers_at_the_top(report: PreprocessingReport) -> None:
    orientation = report.checks["orientation"].overall
    assert orientation.n > 250
    assert orientation.value is not None and orientation.value >= 0.95


def test_the_report_has_every_check_by_category(report: PreprocessingReport) -> None:
    groups = {name: set(check.groups) for name, check in report.checks.items()}
    assert groups["scope"] >= {"body part", "wrist tag", "decoy tag"}
    assert groups["inversion"] >= {"photometric", "frame"}
    assert groups["orientation"] >= {"angle", "fingers"}
    assert groups["parts"] >= {"truth parts"}
    assert set(report.checks["scope"].groups["body part"]) >= {"wrist", "chest"}
    table = markdown_table({"phantom": report})
    assert "| scope · body part = wrist | " in table and table.count("\n") > 15


def test_views_have_the_model_input_geometry(
    results: Results,
) -> None:
    for _, instance in _wrists(results)[:40]:
        for view in instance.views:
            assert view.pixels.shape == (512, 341) and view.pixels.dtype == np.float32
            points = np.array([[0.0, 0.0], [340.0, 511.0], [170.0, 255.0]])
            np.testing.assert_allclose(view.from_source(view.to_source(points)), points, atol=1e-6)
            # Bone bright after the inversion step: the view is mostly dark background.
            assert np.median(view.pixels) < 0.5
