"""The view reader's training side: labels that follow the image, a short run, a stable cache."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.view_net import (
    ViewNet,
    angle_to_direction,
    direction_to_angle,
    reading_from_outputs,
)
from pipeline.preprocess.view_reader import load_view_reader
from train.cli import main
from train.phantoms.shapes import Placement
from train.projection import render as projection
from train.projection import spec as projection_spec
from train.view_reader import data
from train.view_reader.augment import AugmentSettings, augment_batch, dihedral, hflip, rot90, vflip
from train.view_reader.card import body_part_table, write_run
from train.view_reader.evaluate import angle_errors, figures, load_model, predict
from train.view_reader.fit import BODY_PART_WEIGHT, FitSettings, fit, losses
from train.view_reader.sampling import body_parts, draw_sample

GEOMETRY_ONLY = AugmentSettings(gamma=1.0, contrast=0.0, brightness=0.0, noise=0.0, invert=0.0)


def _marked(h: int, w: int, forearm: tuple[float, float], fingers: tuple[float, float]):
    """An image with 0.5 at the forearm point and 1.0 at the fingers point."""
    image = torch.zeros(1, h, w)
    image[0, round(forearm[1]), round(forearm[0])] = 0.5
    image[0, round(fingers[1]), round(fingers[0])] = 1.0
    return image


def _seen_direction(image: torch.Tensor) -> np.ndarray:
    """The unit vector from the 0.5 mark to the 1.0 mark (x right, y down)."""
    plane = image.reshape(image.shape[-2:]).numpy()
    (fy, fx), (ay, ax) = (np.argwhere(np.isclose(plane, v))[0] for v in (1.0, 0.5))
    d = np.array([fx - ax, fy - ay], float)
    return d / np.linalg.norm(d)


def _angle_between(a: np.ndarray, b: np.ndarray) -> float:
    return float(angle_errors(np.asarray(a, float)[None], np.asarray(b, float)[None])[0])


@pytest.fixture(scope="module")
def rendered_arm() -> tuple[projection.ProjectedView, tuple[float, float]]:
    """A projection-world arm at 35 degrees, fingers down, with its landmarks and label."""
    spec = projection_spec.random_spec(np.random.default_rng(4), size="small")
    spec = replace(spec, angle_deg=35.0, fingers_down=True, parts=1, layout="single")
    view = projection.render_view(spec, np.random.default_rng(5))
    part = view.parts[0]
    return view, angle_to_direction(part.angle_deg, part.fingers_down)


def test_label_points_where_the_rendered_fingers_are(rendered_arm) -> None:
    view, label = rendered_arm
    marks = view.landmarks[0]
    seen = np.subtract(marks["third_metacarpal_head"], marks["radius_shaft"])
    assert _angle_between(seen, label) < 8.0


@pytest.mark.parametrize("angle", [0.0, 35.0, 90.0, -120.0, 180.0])
@pytest.mark.parametrize("fingers_down", [False, True])
def test_label_matches_the_phantom_renderer_frame(angle: float, fingers_down: bool) -> None:
    # The phantom draws the hand towards +v of this placement.
    pl = Placement.make(0.0, 0.0, angle, flip=fingers_down, mirror=False, scale=1.0)
    assert np.allclose((pl.dx, pl.dy), angle_to_direction(angle, fingers_down), atol=1e-9)


@pytest.mark.parametrize("code", range(8))
def test_transforms_move_the_label_with_the_rendered_fingers(rendered_arm, code: int) -> None:
    view, label = rendered_arm
    marks = view.landmarks[0]
    h, w = view.image.shape
    image = _marked(h, w, marks["radius_shaft"], marks["third_metacarpal_head"])
    moved, direction = dihedral(image, torch.tensor(label, dtype=torch.float64), code)
    assert _angle_between(_seen_direction(moved), direction.numpy()) < 8.0


@pytest.mark.parametrize("angle", [-170.0, -45.0, 0.0, 20.0, 90.0, 135.0])
def test_transform_algebra_against_angle_to_direction(angle: float) -> None:
    d = torch.tensor(angle_to_direction(angle), dtype=torch.float64)
    blank = torch.zeros(1, 4, 4)
    expected = {
        "hflip": angle_to_direction(-angle),
        "vflip": angle_to_direction(180.0 - angle),
        "rot90": angle_to_direction(angle + 90.0),  # counter-clockwise: the angle grows
        "rot270": angle_to_direction(angle - 90.0),
    }
    got = {
        "hflip": hflip(blank, d)[1],
        "vflip": vflip(blank, d)[1],
        "rot90": rot90(blank, d, 1)[1],
        "rot270": rot90(blank, d, 3)[1],
    }
    for name, vector in got.items():
        assert np.allclose(vector.numpy(), expected[name], atol=1e-9), name
    assert math.isclose(direction_to_angle(*rot90(blank, d, 4)[1].tolist()), angle, abs_tol=1e-6)


def test_batch_augmentation_keeps_every_label_with_its_image() -> None:
    rng = np.random.default_rng(0)
    images, labels = [], []
    for _ in range(16):
        angle = float(rng.uniform(-180, 180))
        d = np.array(angle_to_direction(angle))
        centre = np.array([32.0, 32.0])
        images.append(_marked(64, 64, tuple(centre - 20 * d), tuple(centre + 20 * d)))
        labels.append(d)
    batch = torch.stack(images)
    direction = torch.tensor(np.array(labels), dtype=torch.float32)
    inverted = torch.zeros(16)
    out, moved, still = augment_batch(
        batch, direction, inverted, GEOMETRY_ONLY, torch.Generator().manual_seed(1)
    )
    for row in range(16):
        assert _angle_between(_seen_direction(out[row]), moved[row].numpy()) < 4.0
    assert torch.equal(still, inverted)
    everything = replace(GEOMETRY_ONLY, dihedral=False, invert=1.0)
    flipped, _, now = augment_batch(batch, direction, inverted, everything, torch.Generator())
    assert torch.allclose(flipped, 1.0 - batch, atol=1e-3) and torch.equal(now, torch.ones(16))


def test_cache_is_deterministic_and_reused(tmp_path: Path, monkeypatch) -> None:
    first = data.load_or_draw("phantom", 11, 6, tmp_path, workers=1, progress=False)
    path = data.cache_path(tmp_path, "phantom", 11, 6)
    assert path.is_file()

    def no_drawing(*args, **kwargs):
        raise AssertionError("the cache was not reused")

    monkeypatch.setattr(data, "draw_set", no_drawing)
    again = data.load_or_draw("phantom", 11, 6, tmp_path, workers=1, progress=False)
    monkeypatch.undo()
    fresh = data.draw_set("phantom", 11, 6, workers=1, progress=False)
    for got in (again, fresh):
        assert np.array_equal(got.images, first.images)
        assert np.array_equal(got.direction, first.direction)
        assert np.array_equal(got.body_part, first.body_part)
    # A sample depends on (world, seed, index) only, not on the set's size.
    assert np.array_equal(draw_sample("phantom", 11, 5).image, first.images[5])
    a, b = draw_sample("projection", 11, 2), draw_sample("projection", 11, 2)
    assert np.array_equal(a.image, b.image) and a.direction == b.direction


def test_a_short_run_lowers_the_loss_and_writes_loadable_weights(tmp_path: Path) -> None:
    settings = FitSettings(
        worlds=("phantom",), images=48, epochs=4, batch_size=16, width=8, workers=1
    )
    result = fit(settings, tmp_path / "cache", progress=False)
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    write_run(tmp_path / "run", settings, result)
    info = json.loads((tmp_path / "run" / "model.json").read_text())
    assert info["training"]["worlds"] == ["phantom"] and info["width"] == 8
    assert info["body_parts"] == ["chest", "pelvis", "skull", "wrist"]  # sorted, wrist included
    assert result.model.body_parts == tuple(info["body_parts"])
    assert result.validation["all"]["body_part"]["classes"] == info["body_parts"]
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    assert "View reader" in (tmp_path / "run" / "MODEL_CARD.md").read_text()
    images = data.load_or_draw("phantom", 0, 48, tmp_path / "cache", progress=False).images[:8]
    model = load_model(tmp_path / "run")
    assert model.body_parts == ("chest", "pelvis", "skull", "wrist")
    loaded, trained = predict(model, images), predict(result.model, images)
    for key in ("wrist", "inverted", "direction", "body_part"):
        assert np.allclose(loaded[key], trained[key], atol=1e-6)
    assert loaded["body_part"].shape == (8, 4)


def test_cli_fits_evaluates_and_refuses_the_training_seed(tmp_path: Path, capsys) -> None:
    run, cache = tmp_path / "run", tmp_path / "cache"
    common = ["--cache", str(cache), "--workers", "1"]
    fit_args = ["view-reader", "fit", "--worlds", "phantom", "--images", "24", "--epochs", "1"]
    assert main([*fit_args, "--seed", "3", "--out", str(run), *common]) == 0
    evaluate = ["view-reader", "evaluate", str(run), "--world", "phantom", "--images", "12"]
    assert main([*evaluate, "--seed", "3", *common]) == 2
    capsys.readouterr()
    assert main([*evaluate, "--seed", "4", "--json", "--record", *common]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["world"] == "phantom" and figures["images"] == 12
    assert json.loads((run / "model.json").read_text())["tests"]["phantom"]["seed"] == 4


def _set(parts: list[str]) -> data.SampleSet:
    """A sample set of blank thumbnails whose rows are the given body parts."""
    n = len(parts)
    return data.SampleSet(
        images=np.zeros((n, 8, 8), np.uint8),
        wrist=np.array([p == "wrist" for p in parts]),
        inverted=np.zeros(n, bool),
        direction=np.zeros((n, 2), np.float32),
        has_direction=np.zeros(n, bool),
        body_part=np.array(parts, dtype="U16"),
        parts=np.ones(n, np.int16),
        angle_deg=np.full(n, np.nan, np.float32),
        world=np.full(n, "projection", dtype="U16"),
        index=np.arange(n),
    )


def test_a_part_the_reader_never_saw_is_scored_apart_not_as_a_miss() -> None:
    classes = ("chest", "pelvis", "wrist")
    samples = _set(["chest", "chest", "foot", "foot", "foot", "wrist"])
    named = ["chest", "pelvis", "pelvis", "wrist", "chest", "wrist"]
    logits = np.array([[5.0 if c == name else 0.0 for c in classes] for name in named])
    outputs = {
        "wrist": np.array([-2.0, -2.0, -2.0, 2.0, -2.0, 2.0]),
        "inverted": np.full(6, -2.0),
        "direction": np.zeros((6, 2)),
        "body_part": logits,
    }
    figs = figures(samples, outputs, classes)
    body = figs["body_part"]
    # chest 1 of 2, wrist 1 of 1; the feet have no class and are left out
    assert body["accuracy"] == pytest.approx(2 / 3, abs=1e-4)
    assert body["decoy_accuracy"] == 0.5
    assert body["unknown_decoys"] == 3
    assert body["unknown_decoys_named_not_wrist"] == pytest.approx(2 / 3, abs=1e-4)
    foot = figs["by_body_part"]["foot"]
    assert foot["trained_on"] is False and foot["named_right"] is None
    assert foot["named_as"] == {"chest": 1, "pelvis": 1, "wrist": 1}
    assert foot["accuracy"] == pytest.approx(2 / 3, abs=1e-4)  # the wrist head refused two of three
    chest = figs["by_body_part"]["chest"]
    assert chest["named_right"] == 0.5 and chest["named_not_wrist"] == 1.0
    card = "\n".join(body_part_table("projection -> phantom (test)", figs))
    assert "| foot | 3 | 0.667 | never trained on | 0.667 |" in card
    without_head = figures(samples, {k: v for k, v in outputs.items() if k != "body_part"})
    assert without_head["body_part"] is None
    assert "named_as" not in without_head["by_body_part"]["foot"]


def test_the_body_part_loss_counts_only_with_the_head() -> None:
    torch.manual_seed(0)
    outputs = {
        "wrist": torch.zeros(4),
        "inverted": torch.zeros(4),
        "direction": torch.zeros(4, 2),
        "body_part": torch.randn(4, 3),
    }
    labels = (torch.ones(4), torch.zeros(4), torch.zeros(4, 2), torch.zeros(4, dtype=torch.bool))
    parts = torch.tensor([0, 1, 2, 0])
    plain = losses({k: v for k, v in outputs.items() if k != "body_part"}, *labels, parts)
    both = losses(outputs, *labels, parts)
    expected = torch.nn.functional.cross_entropy(outputs["body_part"], parts)
    assert "body_part" not in plain and torch.isclose(both["body_part"], expected)
    assert torch.isclose(both["total"], plain["total"] + BODY_PART_WEIGHT * expected)
    assert body_parts(("phantom",)) == ("chest", "pelvis", "skull", "wrist")
    assert "lower_leg" in body_parts(("phantom", "projection"))


def test_an_old_reader_without_the_body_part_head_still_loads(tmp_path: Path) -> None:
    net = ViewNet(width=4)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    old = {"name": "old", "version": "1.0.0", "width": 4}  # before the body-part head
    (tmp_path / "model.json").write_text(json.dumps(old))
    model = load_model(tmp_path)
    assert model.body_parts == () and model.heads.out_features == 4
    outputs = predict(model, np.zeros((2, 32, 32), np.uint8))
    assert set(outputs) == {"wrist", "inverted", "direction"}
    with torch.no_grad():
        assert reading_from_outputs(model(torch.zeros(1, 1, 32, 32))).body_part == ""


SHIPPED = Path(__file__).resolve().parents[2] / "config" / "models" / "view-reader"
CHESTS = {"phantom": (18, 30, 40, 60), "projection": (16, 35, 37, 106)}
"""Indices of chest decoys among the samples drawn with seed 7 (a seed no training or test set
of the shipped reader used); the test checks they are chests before reading them."""


@pytest.mark.parametrize("world", ["phantom", "projection"])
def test_the_shipped_reader_names_a_chest_a_chest(world: str) -> None:
    info = json.loads((SHIPPED / "model.json").read_text())
    assert set(info["body_parts"]) >= {"chest", "pelvis", "skull", "foot", "wrist"}
    load_view_reader.cache_clear()
    reader = load_view_reader(str(SHIPPED))
    for index in CHESTS[world]:
        sample = draw_sample(world, 7, index)
        assert sample.body_part == "chest"
        reading = reader.read(sample.image.astype(np.float32) / 255.0)
        assert reading.body_part == "chest" and reading.body_part_probability > 0.5, reading
        assert reading.wrist_probability < 0.2, reading
