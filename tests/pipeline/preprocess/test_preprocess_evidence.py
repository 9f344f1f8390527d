"""Every preprocessing decision carries the cues behind it, and a refusal names its cue."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.dicomio import Radiograph
from pipeline.models.view_net import ViewNet
from pipeline.preprocess.evidence import Cue, for_view, summary
from pipeline.preprocess.study import PreprocessedInstance, PreprocessParams, preprocess_radiograph
from pipeline.preprocess.view_reader import ViewReaderParams, load_view_reader
from tests.phantom_specs import PLAIN
from train.phantoms.anatomy import random_view_spec, render_view

PARAMS = PreprocessParams()


def _radiograph(pixels: np.ndarray, tag: str, photometric: str = "MONOCHROME2") -> Radiograph:
    h, w = pixels.shape
    return Radiograph(
        pixels=pixels.astype(np.float32), sop_instance_uid="1.2.3", sop_class_uid="",
        study_instance_uid="", series_instance_uid="", modality="CR", body_part_examined=tag,
        study_description="", series_description="", view_position="", laterality="",
        image_laterality="", pixel_spacing=None, photometric_interpretation=photometric,
        manufacturer="", rows=h, columns=w, bits_stored=16, transfer_syntax_uid="",
        voi_source="window",
    )  # fmt: skip


def _upright_wrist() -> np.ndarray:
    return render_view(PLAIN, np.random.default_rng(0)).image


def _chest() -> np.ndarray:
    rng = np.random.default_rng(1)
    return render_view(random_view_spec(rng, body_part="chest"), rng).image


def _step(instance: PreprocessedInstance, step: str) -> list[Cue]:
    return [c for c in instance.cues if c.step == step]


def test_an_upright_monochrome2_wrist_has_a_cue_for_every_step() -> None:
    instance = preprocess_radiograph(_radiograph(_upright_wrist(), "WRIST"), PARAMS)
    assert instance.wrist.is_wrist and len(instance.views) == 1
    assert [c.step for c in instance.cues] == [
        "scope", "scope", "inversion", "inversion", "inversion", "collimation", "parts",
        "orientation",
    ]  # fmt: skip
    tag, image = _step(instance, "scope")
    assert tag.decision == "wrist" and "'WRIST'" in tag.cue and tag.short == "tag WRIST"
    assert (tag.value, tag.threshold) == (100.0, 80.0) and tag.confidence == 20.0
    assert image.value == instance.wrist.image_score and image.threshold == 0.35
    assert image.confidence == pytest.approx(image.value - 0.35)  # type: ignore[operator]
    header, rule, thesis = _step(instance, "inversion")
    assert {c.decision for c in (header, rule, thesis)} == {"not inverted"}
    assert header.short == "MONO2" and rule.short == "border" and thesis.short == "thesis agrees"
    assert rule.value == instance.inversion.border_bright_fraction  # type: ignore[union-attr]
    assert rule.value is not None and rule.value <= 0.35 and rule.threshold == 0.35
    (frame,) = _step(instance, "collimation")
    assert frame.decision == "no frame" and "left none" in frame.cue
    (parts,) = _step(instance, "parts")
    assert parts.decision == "1 part" and "1 kept" in parts.cue
    (turn,) = _step(instance, "orientation")
    view = instance.views[0]
    assert turn.part == 0 and turn.decision == f"rotated {view.rotation_deg:+.0f} deg, fingers up"
    assert turn.value is not None and turn.value > 0 and turn.threshold == 0.0
    assert abs(view.rotation_deg) < 10
    line = summary(instance.cues)
    assert line.startswith("tag WRIST, img ") and "| inv no: MONO2, border, thesis agrees |" in line
    assert line.endswith(f"| no frame | 1 part | rot {view.rotation_deg:+.0f}°")


def test_a_burned_in_inversion_is_named_with_its_margin() -> None:
    instance = preprocess_radiograph(_radiograph(1.0 - _upright_wrist(), "WRIST"), PARAMS)
    header, rule, thesis = _step(instance, "inversion")
    assert header.short == "MONO2" and rule.decision == "inverted" and rule.short == "border"
    assert rule.value is not None and rule.value >= 0.65 and rule.threshold == 0.65
    assert "of the border ring bright" in rule.cue and thesis.short == "thesis agrees"
    assert "inv yes: MONO2, border" in summary(instance.cues)


def test_monochrome1_is_named_as_flipped_when_read() -> None:
    instance = preprocess_radiograph(_radiograph(_upright_wrist(), "WRIST", "MONOCHROME1"), PARAMS)
    header = _step(instance, "inversion")[0]
    assert header.short == "MONO1" and "flipped to display when read" in header.cue
    assert header.decision == "not inverted"  # already display space: nothing left to flip


def test_a_framed_image_names_its_bands() -> None:
    pixels = _upright_wrist().copy()
    pixels[:, :40] = 1.0  # a white band on the left
    pixels[:30, :] = 1.0  # and on top: an L-shaped frame
    instance = preprocess_radiograph(_radiograph(pixels, "WRIST"), PARAMS)
    (frame,) = _step(instance, "collimation")
    assert frame.decision == "frame on left, top" and frame.short == "frame L,T"
    assert "right none" in frame.cue and "band level 1.00" in frame.cue


@pytest.mark.parametrize(
    ("tag", "rule", "shorts"),
    [
        ("WRIST", "tag:wrist+image-veto", ("tag WRIST", "img 0.")),
        ("ARM", "tag:arm+image-reject", ("tag ARM", "img 0.")),
        ("", "empty:image", ("no tag", "img 0.")),
        ("CHEST", "tag:other", ("tag CHEST", "img 0.")),
    ],
)
def test_a_refused_chest_carries_the_rule_and_the_deciding_cue(
    tag: str, rule: str, shorts: tuple[str, str]
) -> None:
    instance = preprocess_radiograph(_radiograph(_chest(), tag), PARAMS)
    assert not instance.wrist.is_wrist and instance.wrist.rule == rule
    cues = instance.cues
    assert [c.step for c in cues] == ["scope", "scope"]
    assert {c.decision for c in cues} == {f"refused ({rule})"}
    assert cues[0].short == shorts[0] and cues[1].short.startswith(shorts[1])
    score = instance.wrist.image_score
    assert score is not None and cues[1].value == score
    line = summary(cues)
    assert line.startswith(f"refused ({rule}): {shorts[0]}, img {score:.2f}")
    if rule != "tag:other":  # an image check decided: the reason names it, value and threshold
        threshold = 0.35 if rule == "tag:wrist+image-veto" else 0.70
        assert cues[1].threshold == threshold
        assert f"image check: extremity score {score:.2f}, below" in instance.wrist.reason
        assert f"{threshold:.2f}" in instance.wrist.reason and "\n" not in instance.wrist.reason
    else:  # the tag decided; the score is shown but compared with nothing
        assert cues[1].threshold is None and cues[1].confidence is None
        assert "matches other term 'CHEST'" in instance.wrist.reason


def test_cues_are_json_ready_and_per_view() -> None:
    pixels = np.concatenate([_upright_wrist(), _upright_wrist()], axis=1)
    instance = preprocess_radiograph(_radiograph(pixels, "WRIST"), PARAMS)
    assert len(instance.views) == 2
    dumped = json.loads(json.dumps([c.as_dict() for c in instance.cues]))
    assert {d["step"] for d in dumped} >= {"scope", "inversion", "collimation", "parts"}
    assert [d["part"] for d in dumped if d["step"] == "orientation"] == [0, 1]
    assert set(dumped[0]) == {"step", "decision", "cue", "value", "threshold", "confidence",
                              "part"}  # fmt: skip
    first = for_view(instance.cues, 0)
    assert [c.part for c in first if c.step == "orientation"] == [0]
    assert "2 parts" in summary(first) and summary(first).count("rot ") == 1


@pytest.fixture(scope="module")
def sure_reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reader whose heads are forced: a wrist (p=0.95), surely not inverted (p=0.02)."""
    folder = tmp_path_factory.mktemp("sure-reader")
    net = ViewNet(width=4)
    with torch.no_grad():
        net.heads.weight.zero_()
        net.heads.bias.copy_(torch.tensor([3.0, -4.0, 0.0, -1.0]))
    torch.save(net.state_dict(), folder / "weights.pt")
    (folder / "model.json").write_text(json.dumps({"name": "sure", "version": "0", "width": 4}))
    load_view_reader.cache_clear()
    return folder


def test_an_inversion_disagreement_is_refused_with_both_cues(sure_reader: Path) -> None:
    params = replace(PARAMS, view_reader=ViewReaderParams(path=str(sure_reader)))
    instance = preprocess_radiograph(_radiograph(1.0 - _upright_wrist(), "WRIST"), params)
    assert not instance.wrist.is_wrist and instance.wrist.rule == "image:inversion-disagree"
    assert "heuristic inverted, view reader p=0.02" in instance.wrist.reason
    scope = [c for c in instance.cues if c.step == "scope"]
    assert len(scope) == 1 and scope[0].decision == "refused (image:inversion-disagree)"
    reader = [c for c in instance.cues if c.cue.startswith("view reader:")]
    assert len(reader) == 1 and reader[0].decision == "inversion:disagree"
    line = summary(instance.cues)
    assert line.startswith("refused (image:inversion-disagree): inversion-disagree")
    assert "inv yes: MONO2, border, thesis agrees, reader disagree" in line


def test_the_refusal_names_the_rule_or_the_missing_part() -> None:
    wrist = preprocess_radiograph(_radiograph(_upright_wrist(), "WRIST"), PARAMS)
    assert wrist.refusal == ""
    chest = preprocess_radiograph(_radiograph(_chest(), ""), PARAMS)
    assert chest.refusal == chest.wrist.reason and "image check: extremity score" in chest.refusal
    empty = replace(wrist, views=())
    assert empty.refusal.startswith("no anatomic part found in the image (Otsu threshold 0.")
