"""Scoring the preprocessing against truth rows, on hand-made decisions (no images)."""

from __future__ import annotations

import json

import numpy as np

from pipeline.preprocess.collimation import Collimation
from pipeline.preprocess.inversion import InversionDecision
from pipeline.preprocess.study import PreprocessedInstance, View
from pipeline.preprocess.transforms import Affine
from pipeline.preprocess.wrist_filter import WristDecision, WristVocabulary
from train.evaluation.preprocessing_checks import (
    finger_direction,
    instance_outcome,
    markdown_table,
    score,
    tag_class,
)

HEIGHT, WIDTH = 8, 6
BOXES = [[0, 0, 100, 200], [100, 0, 200, 200]]


def _view(part: int, fingers: np.ndarray) -> View:
    """A view whose 'up' points along `fingers` in the source, centred in BOXES[part]."""
    across = np.array([-fingers[1], fingers[0]])
    linear = np.column_stack([across, -fingers])  # view (0, -1) -> source `fingers`
    x0, y0, x1, y1 = BOXES[part]
    offset = np.array([(x0 + x1) / 2, (y0 + y1) / 2]) - linear @ [(WIDTH - 1) / 2, (HEIGHT - 1) / 2]
    matrix = np.eye(3)
    matrix[:2, :2], matrix[:2, 2] = linear, offset
    return View("1.2.3", part, 2, np.zeros((HEIGHT, WIDTH), np.float32), Affine(matrix),
                (x0, y0, x1, y1), 0.0, False, False)  # fmt: skip


def _instance(is_wrist: bool, inverted: bool, views: tuple[View, ...]) -> PreprocessedInstance:
    decision = WristDecision(is_wrist, "tag:wrist", "", None, None, None)
    inversion = InversionDecision(inverted, "ring", 0.9, 0.2, 200.0, True,
                                  Collimation((0, 0, 200, 200), (), None))  # fmt: skip
    return PreprocessedInstance("1.2.3", (200, 200), decision, inversion if is_wrist else None,
                                views)  # fmt: skip


def _row(**changes: str) -> dict[str, str]:
    row = {
        "body_part": "wrist", "body_part_tag": "WRIST", "photometric": "inverted",
        "frame": "white", "frame_shape": "L", "renderer": "projection", "parts": "2",
        "part_boxes": json.dumps(BOXES), "arm_angle_deg": "30.00", "fingers_down": "0",
        "part_angles_deg": "[30.0, -75.0]", "part_fingers_down": "[0, 1]",
    }  # fmt: skip
    return {**row, **changes}


def test_per_part_angles_score_every_view_and_old_rows_the_first_only() -> None:
    views = (_view(0, finger_direction(33.0, False)), _view(1, finger_direction(-75.0, True)))
    both = score([(_row(), _instance(True, True, views))])
    orientation = both.checks["orientation"]
    assert (orientation.overall.hits, orientation.overall.n) == (2, 2)
    assert {v: r.n for v, r in orientation.groups["angle"].items()} == {"20-60": 1, "over 60": 1}
    assert {v: r.n for v, r in orientation.groups["fingers"].items()} == {"up": 1, "down": 1}
    # Without per-part columns the renderer gave the first part's angle only.
    old = {k: v for k, v in _row().items() if not k.startswith(("part_a", "part_f"))}
    first_only = score([(old, _instance(True, True, views))]).checks["orientation"].overall
    assert (first_only.hits, first_only.n) == (1, 1)
    # A view turned by 90 degrees, or one whose centre is in no part, is wrong.
    turned = (_view(0, finger_direction(120.0, False)),)
    outcome = instance_outcome(_row(parts="1", part_boxes=json.dumps(BOXES[:1])),
                               _instance(True, True, turned), WristVocabulary.load())  # fmt: skip
    assert [round(v.error_deg) for v in outcome.views] == [90]


def test_scope_inversion_and_parts_by_category() -> None:
    vocabulary = WristVocabulary.load()
    one = (_view(0, finger_direction(30.0, False)),)
    results = [
        (_row(), _instance(True, True, one)),  # one view of two parts
        (_row(photometric="monochrome1", frame="", frame_shape=""), _instance(True, True, one)),
        (_row(body_part="knee", body_part_tag="WRIST"), _instance(False, False, ())),
        (_row(body_part="elbow", body_part_tag="ARM"), _instance(True, False, one)),
        (_row(body_part="chest", body_part_tag=""), _instance(False, False, ())),
    ]
    report = score(results, vocabulary)
    scope = report.checks["scope"]
    assert (scope.overall.hits, scope.overall.n) == (4, 5)
    assert {v: (r.hits, r.n) for v, r in scope.groups["decoy tag"].items()} == {
        "arm": (0, 1), "empty": (1, 1), "wrist": (1, 1)}  # fmt: skip
    assert scope.groups["body part"]["elbow"].hits == 0
    inversion = report.checks["inversion"]
    assert (inversion.overall.hits, inversion.overall.n) == (1, 2)
    assert inversion.groups["frame shape"]["none"].hits == 0
    assert set(inversion.groups["frame"]) == {"none", "white"}
    assert set(inversion.groups["renderer"]) == {"projection"}
    parts = report.checks["parts"]
    assert (parts.overall.hits, parts.overall.n) == (0, 2)
    assert report.checks["orientation"].overall.n == 0  # parts wrong: views not matched
    assert [tag_class(t, vocabulary) for t in ("MUÑECA", "FOREARM", "", "KNEE")] == [
        "wrist", "arm", "empty", "own"]  # fmt: skip
    table = markdown_table({"a": report, "b": score(results[:1], vocabulary)})
    assert "| scope · body part = knee | 1.000 [0.21, 1.00] 1/1 | - |" in table
    assert table.splitlines()[0] == "| check | a | b |"
