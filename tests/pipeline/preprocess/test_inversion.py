"""Tests of the colour inversion step (pipeline.preprocess.inversion) against archive truth."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.dicomio import read_radiograph
from pipeline.preprocess.inversion import InversionDecision, correct_inversion
from train.phantoms.archive import generate_archive, read_truth


@pytest.fixture(scope="module")
def big_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("inversion_archive")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        generate_archive(out, studies=250, seed=8, size="small", workers=2)
    return out


def decisions(folder: Path) -> Iterator[tuple[dict[str, str], InversionDecision]]:
    for row in read_truth(folder):
        if row["corrupt"] or row["body_part"] != "wrist":
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels = read_radiograph(folder / row["path"]).pixels
        yield row, correct_inversion(pixels)[1]


@pytest.mark.parametrize("which", ["synthetic_archive", "big_archive"])
def test_wrist_archive_accuracy(which: str, request: pytest.FixtureRequest) -> None:
    folder: Path = request.getfixturevalue(which)
    results = [(row, d) for row, d in decisions(folder)]
    assert len(results) > 50
    ours = [d.inverted == (row["photometric"] == "inverted") for row, d in results]
    thesis = [d.thesis_would_invert == (row["photometric"] == "inverted") for row, d in results]
    assert sum(ours) >= 0.98 * len(ours)
    assert sum(ours) >= sum(thesis)
    white = [i for i, (row, _) in enumerate(results) if row["frame"] == "white"]
    assert white, "the archive should hold white-framed wrists"
    assert all(ours[i] for i in white)
    # The thesis rule's documented failure (Figure 6.5b): white frames read as background.
    assert sum(thesis[i] for i in white) <= 0.5 * len(white)
    for row, d in results:
        if row["frame"]:
            assert d.collimation.bands, row["path"]


def arm_image(
    rng: np.random.Generator, shape: tuple[int, int] = (400, 300), bg: float = 0.05
) -> np.ndarray:
    """Dark background, a soft-tissue forearm leaving at the bottom edge, bright bones."""
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    image = np.full(shape, bg, np.float32)
    arm = (np.abs(xx - cols / 2) < cols * 0.22) & (yy > rows * 0.15)
    image[arm] = 0.45
    bone = (np.abs(xx - cols / 2) < cols * 0.07) & (yy > rows * 0.25)
    image[bone] = 0.9
    image += rng.normal(0.0, 0.01, shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def white_corners(image: np.ndarray, frac: float = 0.12) -> np.ndarray:
    rows, cols = image.shape
    out = image.copy()
    b, c = int(frac * rows), int(frac * cols)
    out[:b], out[-b:], out[:, :c], out[:, -c:] = 1.0, 1.0, 1.0, 1.0
    return out


def test_white_framed_normal_image_is_not_inverted_and_its_inverse_is() -> None:
    framed = white_corners(arm_image(np.random.default_rng(0)))
    out, d = correct_inversion(framed)
    assert not d.inverted and out is framed
    assert d.thesis_would_invert and d.thesis_corner_mean > 200
    assert d.rule == "background-border"
    assert set(d.collimation.bands) == {"left", "top", "right", "bottom"}
    assert d.background_level < 0.15 < 0.4 < d.foreground_level
    flipped = (1.0 - framed).astype(np.float32)
    out, d = correct_inversion(flipped)
    assert d.inverted and d.rule == "background-border"
    assert not d.thesis_would_invert
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, framed, atol=1e-6)
    assert d.background_level > 0.85 > 0.6 > d.foreground_level


def test_noisy_grey_background() -> None:
    rng = np.random.default_rng(1)
    image = arm_image(rng, bg=0.42)
    image = np.clip(image + rng.normal(0.0, 0.06, image.shape), 0, 1).astype(np.float32)
    _, d = correct_inversion(image)
    assert not d.inverted
    assert d.thesis_would_invert  # grey background >= 100/255: the thesis flips it wrongly
    _, d = correct_inversion((1.0 - image).astype(np.float32))
    assert d.inverted


def test_corner_marker_does_not_fool_the_decision() -> None:
    image = arm_image(np.random.default_rng(2))
    image[5:80, 5:70] = 0.97  # large bright lead marker box in a corner
    _, d = correct_inversion(image)
    assert not d.inverted
    _, d = correct_inversion((1.0 - image).astype(np.float32))
    assert d.inverted


def test_anatomy_filling_the_image_falls_back_to_tails() -> None:
    rng = np.random.default_rng(3)
    image = np.full((300, 300), 0.45, np.float32)
    # Bone along two and a half edges: neither class owns the border ring, and bone is a
    # small bright tail, as in a normal image.
    image[:12], image[:, :12], image[-6:] = 0.9, 0.88, 0.86
    image = np.clip(image + rng.normal(0.0, 0.03, image.shape), 0, 1).astype(np.float32)
    _, d = correct_inversion(image)
    assert d.rule == "tails-no-background" and not d.inverted
    _, d = correct_inversion((1.0 - image).astype(np.float32))
    assert d.rule == "tails-no-background" and d.inverted


def test_flat_image_is_left_alone() -> None:
    flat = np.full((64, 64), 0.7, np.float32)
    out, d = correct_inversion(flat)
    assert out is flat and not d.inverted and d.rule == "flat-image"


def test_full_size_decision_does_not_copy() -> None:
    """Speed is measured in bench/preprocess.py; here: a normal image is returned uncopied."""
    image = arm_image(np.random.default_rng(4), shape=(3000, 2500))
    framed = white_corners(image, 0.05)
    out, d = correct_inversion(framed)
    assert out is framed and not d.inverted
