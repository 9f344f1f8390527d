"""The localisation figures: the line sampling, the counting, and the node path on a real study."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from pipeline.inference import ModelBundle
from train.evaluation.localisation import (
    ViewLocalisation,
    fractured_studies,
    line_points,
    localise_study,
    summarise,
)
from train.phantoms.archive import generate_archive, read_truth

BUNDLE = Path(__file__).resolve().parents[2] / "config" / "models" / "wrist-demo"


def _view(detected: bool, localised: bool, hit: bool, px: float) -> ViewLocalisation:
    return ViewLocalisation("1.2", "1.2.3", 0.9 if detected else 0.1, detected, localised, hit,
                            px if localised else math.nan, px, 0.2)  # fmt: skip


def test_line_points_run_from_end_to_end() -> None:
    points = line_points([[[0, 0], [10, 20]], [[5, 5], [5, 6]]])
    assert points.shape == (128, 2)
    np.testing.assert_allclose(points[0], [0, 0])
    np.testing.assert_allclose(points[63], [10, 20])
    np.testing.assert_allclose(points[-1], [5, 6])
    assert line_points([]).shape == (0, 2)


def test_hit_rate_counts_every_detected_view_and_ignores_missed_ones() -> None:
    views = [
        _view(True, True, True, 10.0),
        _view(True, True, False, 50.0),
        _view(True, False, False, 0.0),  # detected, empty heat map: a miss, not left out
        _view(False, False, False, 0.0),  # not detected: not localisation's business
    ]
    s = summarise(views)
    assert (s.views, s.detected, s.localised, s.hits) == (4, 3, 2, 1)
    assert s.hit_rate == pytest.approx(1 / 3)
    assert s.median_centre_px == pytest.approx(30.0)
    assert s.median_centre_mm == pytest.approx(6.0)  # 0.2 mm per pixel
    assert s.hit_interval[0] < 1 / 3 < s.hit_interval[1]


def test_the_node_path_scores_the_fractured_views_of_a_study(tmp_path: Path) -> None:
    generate_archive(tmp_path, studies=16, seed=31, workers=1, syntaxes=("explicit_le",))
    rows = list(read_truth(tmp_path))
    studies = fractured_studies(rows)
    assert studies, "the archive holds no fractured wrist study"
    bundle = ModelBundle.load(BUNDLE)
    study_rows = next(iter(studies.values()))
    views = localise_study(bundle, tmp_path, study_rows)
    fractured = {r["sop_instance_uid"] for r in study_rows if json.loads(r["fracture_line"])}
    assert views and {v.sop_instance_uid for v in views} <= fractured
    for v in views:
        assert v.detected == (v.probability >= bundle.info.thresholds["possible"])
        assert v.localised <= v.detected and v.hit <= v.localised
        assert math.isfinite(v.centre_px) == v.localised
        if v.hit:  # a line through the region is never farther than the region's half diagonal
            assert v.centre_px < 200
