"""Tests of the collimation/border band finder (pipeline.preprocess.collimation)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipeline.preprocess.collimation import SIDES, find_collimation
from tests.phantom_specs import PLAIN as BASE
from train.phantoms.anatomy import render_view

PLAIN = replace(BASE, marker="L", specks=2, noise=0.01, heel=0.1)


def paint(image: np.ndarray, widths: dict[str, float], level: float) -> tuple[int, ...]:
    """Paint bands (width as a fraction of the side) in place; return the true inner box."""
    rows, cols = image.shape
    px = {s: int(f * (rows if s in ("top", "bottom") else cols)) for s, f in widths.items()}
    if px.get("top"):
        image[: px["top"]] = level
    if px.get("bottom"):
        image[rows - px["bottom"] :] = level
    if px.get("left"):
        image[:, : px["left"]] = level
    if px.get("right"):
        image[:, cols - px["right"] :] = level
    return (
        px.get("left", 0),
        px.get("top", 0),
        cols - px.get("right", 0),
        rows - px.get("bottom", 0),
    )


CASES = [
    ({"left": 0.05, "top": 0.1}, 1.0),
    ({"left": 0.03, "top": 0.04, "right": 0.12, "bottom": 0.08}, 1.0),
    ({"right": 0.07}, 0.98),
    ({"top": 0.12, "bottom": 0.03}, 0.0),
    ({"left": 0.09, "top": 0.06, "right": 0.04}, 0.01),
    ({"left": 0.04, "top": 0.05, "right": 0.06, "bottom": 0.07}, 0.0),
]


@pytest.mark.parametrize(("widths", "level"), CASES)
@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("invert", [False, True])
def test_painted_bands_are_found(
    widths: dict[str, float], level: float, seed: int, invert: bool
) -> None:
    spec = replace(PLAIN, angle_deg=10.0 * seed, width=384 + 60 * seed)
    image = render_view(spec, np.random.default_rng(seed)).image
    if invert:
        image = (1.0 - image).astype(np.float32)
    truth = paint(image, widths, level)
    found = find_collimation(image)
    assert set(found.bands) == set(widths)
    assert found.band_level == pytest.approx(level, abs=0.01)
    rows, cols = image.shape
    for got, want, side in zip(found.inner, truth, (cols, rows, cols, rows), strict=True):
        assert abs(got - want) <= 0.02 * side


@pytest.mark.parametrize("seed", range(6))
def test_unframed_renders_have_no_bands(seed: int) -> None:
    spec = replace(PLAIN, angle_deg=15.0 * seed - 40.0, noise=0.005 + 0.006 * seed)
    image = render_view(spec, np.random.default_rng(seed)).image
    for pixels in (image, 1.0 - image):
        found = find_collimation(pixels)
        assert found.bands == ()
        assert found.inner == (0, 0, image.shape[1], image.shape[0])
        assert found.band_level is None


def test_band_of_another_level_in_the_corner() -> None:
    """A black shutter band overlapping a white workstation band is still found."""
    image = render_view(PLAIN, np.random.default_rng(3)).image
    paint(image, {"left": 0.06}, 0.0)
    truth = paint(image, {"top": 0.08}, 1.0)
    truth = (int(0.06 * image.shape[1]), truth[1], truth[2], truth[3])
    found = find_collimation(image)
    assert set(found.bands) == {"left", "top"}
    assert all(abs(a - b) <= 0.02 * 512 for a, b in zip(found.inner, truth, strict=True))


def test_uniform_and_too_wide_regions_are_not_bands() -> None:
    flat = np.full((300, 200), 0.5, np.float32)
    assert find_collimation(flat).bands == ()
    image = render_view(PLAIN, np.random.default_rng(4)).image
    paint(image, {"left": 0.35}, 1.0)  # wider than any frame: content, not a band
    assert "left" not in find_collimation(image).bands


def test_full_size_does_not_modify_input() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((3000, 2500), dtype=np.float32)
    truth = paint(image, {"left": 0.05, "bottom": 0.1}, 1.0)
    before = image.copy()
    found = find_collimation(image)
    assert np.array_equal(image, before)
    assert found.bands == ("left", "bottom")
    assert found.inner == truth
    assert set(found.bands) <= set(SIDES)


def test_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        find_collimation(np.zeros((4, 4, 3), np.float32))
