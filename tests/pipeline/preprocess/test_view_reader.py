"""The learned view reader beside the heuristics: how disagreements are settled and recorded."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.dicomio import Radiograph, read_radiograph
from pipeline.models.view_net import (
    ViewNet,
    ViewReading,
    angle_to_direction,
    direction_to_angle,
    thumbnail,
)
from pipeline.preprocess.study import PreprocessParams, preprocess_radiograph
from pipeline.preprocess.view_reader import (
    ViewReaderParams,
    load_view_reader,
    reconcile_inversion,
    reconcile_rotation,
)
from pipeline.preprocess.wrist_filter import reader_refusal
from train.phantoms.archive import read_truth

PARAMS = ViewReaderParams(path="unused")


def _reading(wrist: float = 0.9, inverted: float = 0.5, angle: float = 0.0, conf: float = 0.95):
    return ViewReading(wrist, inverted, angle, conf)


@pytest.mark.parametrize("angle", [-170.0, -90.0, -30.0, 0.0, 45.0, 120.0, 179.0])
@pytest.mark.parametrize("down", [False, True])
def test_angle_and_direction_are_inverse(angle: float, down: bool) -> None:
    dx, dy = angle_to_direction(angle, down)
    back = direction_to_angle(dx, dy)
    expected = angle + (180.0 if down else 0.0)
    assert abs((back - expected + 180.0) % 360.0 - 180.0) < 1e-6
    assert angle_to_direction(0.0) == pytest.approx((0.0, -1.0))  # fingers up: towards -y


def test_inversion_keeps_the_heuristic_unless_the_reader_is_sure_of_the_opposite() -> None:
    assert reconcile_inversion(True, _reading(inverted=0.97), PARAMS).value is True
    assert reconcile_inversion(True, _reading(inverted=0.3), PARAMS).value is True  # unsure
    refused = reconcile_inversion(True, _reading(inverted=0.02), PARAMS)
    assert refused.value is None and refused.rule == "inversion:disagree"
    assert "p=0.02" in refused.evidence and "not analysed" in refused.evidence
    assert reconcile_inversion(False, _reading(inverted=0.95), PARAMS).value is None


def test_rotation_keeps_the_heuristic_axis_and_takes_the_readers_fingers_end() -> None:
    # Heuristic turns by -30 (fingers at +30 deg); the reader agrees within tolerance.
    assert reconcile_rotation(-30.0, _reading(angle=36.0), PARAMS).value == -30.0
    # Same axis, fingers the other way: flipped by 180.
    flipped = reconcile_rotation(-30.0, _reading(angle=-150.0), PARAMS)
    assert flipped.value == pytest.approx(150.0) and flipped.rule == "rotation:reader-flip"
    # Axes 90 degrees apart: a sure reader's angle is taken, an unsure one is not.
    taken = reconcile_rotation(0.0, _reading(angle=80.0), PARAMS)
    assert taken.value == pytest.approx(-80.0) and taken.rule == "rotation:reader"
    assert reconcile_rotation(0.0, _reading(angle=80.0, conf=0.3), PARAMS).value == 0.0


def test_thumbnail_keeps_aspect_and_range() -> None:
    image = np.zeros((300, 100), np.float32)
    image[:, 40:60] = 1.0
    small = thumbnail(image, 64)
    assert small.shape == (64, 64) and small.dtype == np.float32
    assert small.min() >= 0.0 and small.max() <= 1.0
    columns = np.nonzero(small.max(axis=0) > 0.5)[0]
    assert columns.min() >= 28 and columns.max() <= 36  # the bright band stays central and thin


@pytest.fixture(scope="module")
def reader_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reader whose heads are forced: wrist p=0.05, not inverted, fingers up."""
    return _forced_reader(tmp_path_factory.mktemp("reader"), (), [])


def test_a_wrist_tagged_image_the_reader_calls_no_wrist_is_refused_with_the_reason(
    synthetic_archive: Path, reader_folder: Path
) -> None:
    radiograph = _wrist_tagged_wrist(synthetic_archive)
    plain = preprocess_radiograph(radiograph, PreprocessParams())
    assert plain.wrist.is_wrist and plain.evidence == ()
    params = replace(PreprocessParams(), view_reader=ViewReaderParams(path=str(reader_folder)))
    judged = preprocess_radiograph(radiograph, params)
    assert not judged.wrist.is_wrist and judged.views == ()
    assert "view reader: wrist probability 0.05" in judged.wrist.reason
    assert judged.evidence and judged.evidence[0].startswith("view reader forced 0")


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ("chest", "image looks like a chest, not a wrist (view reader: chest p=0.87, wrist p=0.05"),
        ("lower_leg", "image looks like a lower leg, not a wrist (view reader: lower leg p=0.87"),
        ("ankle", "image looks like an ankle, not a wrist"),
        ("wrist", "image does not look like a wrist (view reader: wrist p=0.05; most likely"),
        ("", "image does not look like a wrist (view reader: wrist p=0.05)"),
    ],
)
def test_the_readers_refusal_names_the_body_part_in_words(part: str, expected: str) -> None:
    said = reader_refusal(0.05, (part, 0.87) if part else None)
    assert said.startswith(expected), said
    assert "_" not in said


def test_an_unsure_body_part_is_not_named_as_what_the_image_looks_like() -> None:
    said = reader_refusal(0.05, ("lower_leg", 0.45))
    assert said == (
        "image does not look like a wrist (view reader: wrist p=0.05; most likely body part: "
        "lower leg, p=0.45)"
    )
    assert reader_refusal(0.05, ("ankle", 0.45), name_from=0.4).startswith("image looks like an")


def _wrist_tagged_wrist(archive: Path) -> Radiograph:
    """The first readable wrist image of the archive tagged WRIST."""
    row = next(
        r for r in read_truth(archive)
        if r["body_part"] == "wrist" and r["body_part_tag"] == "WRIST" and not r["corrupt"]
    )  # fmt: skip
    return read_radiograph(archive / row["path"])


def _forced_reader(folder: Path, parts: tuple[str, ...], part_logits: list[float]) -> Path:
    """A reader whose heads are forced: wrist p=0.05, not inverted, fingers up, and the
    body-part head's logits `part_logits` (one per class in `parts`)."""
    net = ViewNet(width=4, body_parts=parts)
    with torch.no_grad():
        net.heads.weight.zero_()
        net.heads.bias.copy_(torch.tensor([-3.0, -4.0, 0.0, -1.0, *part_logits]))
    torch.save(net.state_dict(), folder / "weights.pt")
    info: dict[str, object] = {"name": "forced", "version": "0", "width": 4}
    if parts:  # a reader without the body-part head writes no class list (the old format)
        info["body_parts"] = list(parts)
    (folder / "model.json").write_text(json.dumps(info))
    load_view_reader.cache_clear()
    return folder


def test_a_refused_wrist_tagged_image_is_said_to_look_like_the_readers_body_part(
    synthetic_archive: Path, tmp_path: Path
) -> None:
    radiograph = _wrist_tagged_wrist(synthetic_archive)
    reader = _forced_reader(tmp_path, ("chest", "pelvis", "wrist"), [3.0, 0.0, -2.0])
    params = replace(PreprocessParams(), view_reader=ViewReaderParams(path=str(reader)))
    judged = preprocess_radiograph(radiograph, params)
    chest_p = float(torch.softmax(torch.tensor([3.0, 0.0, -2.0]), 0)[0])
    assert not judged.wrist.is_wrist and judged.wrist.rule == "tag:wrist+image-veto"
    assert judged.refusal.startswith(
        f"image looks like a chest, not a wrist (view reader: chest p={chest_p:.2f}, "
        "wrist p=0.05); Body Part Examined"
    ), judged.refusal
    assert judged.wrist.image_body_part == ("chest", pytest.approx(chest_p))
    image_cue = next(c for c in judged.cues if c.step == "scope" and c.value is not None
                     and c.threshold == 0.2)  # fmt: skip
    assert f"looks like: chest (p={chest_p:.2f})" in image_cue.cue
    assert image_cue.short.endswith(" chest")
    assert judged.evidence[0].endswith(f"body part chest p={chest_p:.2f}")


def test_a_reader_whose_top_part_is_the_wrist_says_only_that_it_does_not_look_like_one(
    synthetic_archive: Path, tmp_path: Path
) -> None:
    radiograph = _wrist_tagged_wrist(synthetic_archive)
    reader = _forced_reader(tmp_path, ("chest", "wrist"), [-1.0, 1.0])
    params = replace(PreprocessParams(), view_reader=ViewReaderParams(path=str(reader)))
    judged = preprocess_radiograph(radiograph, params)
    assert not judged.wrist.is_wrist
    assert judged.refusal.startswith("image does not look like a wrist (view reader: wrist p=0.05")
    assert "chest" not in judged.refusal


def test_an_old_reader_without_the_body_part_head_still_loads_and_reads(
    reader_folder: Path,
) -> None:
    assert "body_parts" not in json.loads((reader_folder / "model.json").read_text())
    load_view_reader.cache_clear()
    reader = load_view_reader(str(reader_folder))
    assert reader.net.body_parts == ()
    reading = reader.read(np.full((200, 160), 0.3, np.float32))
    assert reading.body_part == "" and reading.body_part_probability == 0.0
    assert reading.wrist_probability == pytest.approx(float(torch.sigmoid(torch.tensor(-3.0))))
