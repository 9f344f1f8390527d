"""The view reader's training side: labels that follow the image, a short run, a stable cache."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models.view_net import angle_to_direction, direction_to_angle
from train.cli import main
from train.phantoms.shapes import Placement
from train.projection import render as projection
from train.projection import spec as projection_spec
from train.view_reader import data
from train.view_reader.augment import AugmentSettings, augment_batch, dihedral, hflip, rot90, vflip
from train.view_reader.card import write_run
from train.view_reader.evaluate import angle_errors, load_model, predict
from train.view_reader.fit import FitSettings, fit
from train.view_reader.sampling import draw_sample

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
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
    assert "View reader" in (tmp_path / "run" / "MODEL_CARD.md").read_text()
    images = data.load_or_draw("phantom", 0, 48, tmp_path / "cache", progress=False).images[:8]
    loaded, trained = predict(load_model(tmp_path / "run"), images), predict(result.model, images)
    for key in ("wrist", "inverted", "direction"):
        assert np.allclose(loaded[key], trained[key], atol=1e-6)


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
