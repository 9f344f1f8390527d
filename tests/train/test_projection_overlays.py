"""Burned-in overlays of the projection renderer: collimation, shutter, marker, text, ruler."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from train.projection.overlays import (
    FRAME_SHAPES,
    burn_marker,
    burn_ruler,
    burn_text,
    collimation_field,
    electronic_shutter,
)

H, W = 128, 160
SEEDS = range(25)


def field(shape: str, seed: int, keep: tuple[int, int, int, int] | None = None) -> np.ndarray:
    return collimation_field(H, W, np.random.default_rng(seed), shape=shape, keep=keep)


def collimated_sides(mask: np.ndarray) -> set[str]:
    """The image borders the field leaves (mostly) unexposed."""
    borders = {"left": mask[:, 0], "top": mask[0, :], "right": mask[:, -1], "bottom": mask[-1, :]}
    return {side for side, line in borders.items() if line.mean() < 0.5}


def test_masks_are_float32_in_unit_range_and_deterministic() -> None:
    for shape in FRAME_SHAPES:
        mask = field(shape, 3)
        assert mask.dtype == np.float32 and mask.shape == (H, W)
        assert mask.min() >= 0.0 and mask.max() <= 1.0
        assert mask[H // 2, W // 2] == 1.0  # the centre is always exposed
        assert np.array_equal(mask, field(shape, 3))
    assert (field("none", 0) == 1.0).all()
    with pytest.raises(ValueError, match="frame shape"):
        field("round", 0)


def test_full_field_leaves_all_four_borders_unexposed() -> None:
    for seed in SEEDS:
        mask = field("full", seed)
        assert mask[0].max() == mask[-1].max() == mask[:, 0].max() == mask[:, -1].max() == 0.0
        inset_rows = np.flatnonzero(mask[:, W // 2] == 0.0)
        assert inset_rows.size <= 0.3 * H + 2  # each side 3-15 % in
        assert 0.45 < mask.mean() < 0.9


def test_l_field_collimates_exactly_two_adjacent_sides() -> None:
    adjacent = [{"left", "top"}, {"top", "right"}, {"right", "bottom"}, {"bottom", "left"}]
    seen = set()
    for seed in SEEDS:
        sides = collimated_sides(field("L", seed))
        assert sides in adjacent, sides
        seen.add(frozenset(sides))
    assert len(seen) >= 3  # every corner occurs


def test_partial_field_collimates_one_side_or_two_opposite_ones() -> None:
    counts = set()
    for seed in SEEDS:
        sides = collimated_sides(field("partial", seed))
        assert len(sides) in (1, 2), sides
        if len(sides) == 2:
            assert sides in ({"left", "right"}, {"top", "bottom"})
        counts.add(len(sides))
    assert counts == {1, 2}


def test_tilted_field_has_slanted_edges() -> None:
    for seed in SEEDS:
        mask = field("tilted", seed)
        rows = [r for r in range(H // 4, 3 * H // 4) if 0 < (mask[r] > 0.5).sum() < W]
        assert rows, seed
        lefts = np.array([np.argmax(mask[r] > 0.5) for r in rows])
        rights = np.array([W - np.argmax(mask[r, ::-1] > 0.5) for r in rows])
        # One of the two side edges crosses the middle half of the rows at 5-20 degrees.
        assert max(np.ptp(lefts), np.ptp(rights)) >= 3, seed
        assert ((mask > 0) & (mask < 1)).any()  # anti-aliased edges, not stair steps
    assert collimated_sides(field("full", 0)) == {"left", "top", "right", "bottom"}


def test_keep_box_stays_exposed() -> None:
    keep = (30, 20, 110, 115)
    for shape in FRAME_SHAPES:
        for seed in SEEDS:
            mask = field(shape, seed, keep)
            assert (mask[20:115, 30:110] == 1.0).all(), (shape, seed)
    whole = field("full", 0, (0, 0, W, H))  # a box touching every border: no side can close in
    assert (whole == 1.0).all()
    tight = field("full", 0, (40, 40, 120, 88))
    assert collimated_sides(tight) == {"left", "top", "right", "bottom"}


def test_electronic_shutter_blacks_out_only_outside_the_field() -> None:
    img = np.random.default_rng(0).uniform(0.2, 1.0, (H, W)).astype(np.float32)
    before = img.copy()
    mask = field("full", 4)
    electronic_shutter(img, mask, np.random.default_rng(1))
    assert img[mask == 0].max() <= 0.05
    assert np.array_equal(img[mask == 1], before[mask == 1])
    assert img.dtype == np.float32


Burn = Callable[[np.ndarray, np.random.Generator], tuple[int, int, int, int]]
BURNS: dict[str, Burn] = {
    "marker_L": lambda img, rng: burn_marker(img, rng, "L"),
    "marker_R": lambda img, rng: burn_marker(img, rng, "R"),
    "text": burn_text,
    "ruler": burn_ruler,
}


@pytest.mark.parametrize("name", sorted(BURNS))
def test_burns_change_pixels_only_inside_the_returned_box(name: str) -> None:
    for seed in range(12):
        size = (H, W) if seed % 2 else (W + 40, H)
        img = np.random.default_rng(seed).uniform(0.3, 0.5, size).astype(np.float32)
        before = img.copy()
        x0, y0, x1, y1 = BURNS[name](img, np.random.default_rng(seed))
        assert 0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]
        changed = img != before
        assert changed[y0:y1, x0:x1].any()
        changed[y0:y1, x0:x1] = False
        assert not changed.any(), (name, seed)
        assert img.dtype == np.float32 and img.min() >= 0.0 and img.max() <= 1.0
        assert (x1 - x0) * (y1 - y0) < 0.35 * img.size  # small next to the image


@pytest.mark.parametrize("name", sorted(BURNS))
def test_burns_are_deterministic(name: str) -> None:
    images = [np.full((H, W), 0.4, np.float32) for _ in range(2)]
    boxes = [BURNS[name](img, np.random.default_rng(5)) for img in images]
    assert boxes[0] == boxes[1] and np.array_equal(images[0], images[1])


def test_marker_is_bright_and_near_a_border() -> None:
    for seed in range(12):
        img = np.full((H, W), 0.2, np.float32)
        x0, y0, x1, y1 = burn_marker(img, np.random.default_rng(seed), "R")
        assert img[y0:y1, x0:x1].max() > 0.85  # lead is radiopaque
        near = min(x0, y0, W - x1, H - y1) < 0.15 * min(H, W)
        centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
        assert near or abs(centre_x - W / 2) > 0.3 * W or abs(centre_y - H / 2) > 0.3 * H


def test_ruler_has_many_bright_ticks() -> None:
    for seed in range(8):
        img = np.zeros((H, W), np.float32)
        x0, y0, x1, y1 = burn_ruler(img, np.random.default_rng(seed))
        patch = img[y0:y1, x0:x1]
        along = patch if x1 - x0 > y1 - y0 else patch.T  # ticks cross the ruler's long axis
        bright = (along > 0.6).any(axis=0).astype(int)
        assert np.count_nonzero(np.diff(bright) == 1) >= 4  # separate tick marks
