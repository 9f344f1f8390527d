"""Transforms, part splitter, rotation alignment and model geometry, against rendered truth."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from pipeline.preprocess.analysis import reduce
from pipeline.preprocess.geometry import OutputGeometry, fit_part, render
from pipeline.preprocess.part_splitter import split_parts
from pipeline.preprocess.rotation import align
from pipeline.preprocess.transforms import Affine, warp
from train.phantoms.anatomy import RenderedView, ViewSpec, random_view_spec, render_view


def _finger_direction(angle_deg: float, fingers_down: bool) -> np.ndarray:
    """Truth: the fingers point 'up' turned counter-clockwise on screen by the arm's angle."""
    a = math.radians(angle_deg)
    direction = np.array([-math.sin(a), -math.cos(a)])
    return -direction if fingers_down else direction


def _angle_between(u: np.ndarray, v: np.ndarray) -> float:
    cos = float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
    return math.degrees(math.acos(max(-1.0, min(1.0, cos))))


def _wrist(seed: int, **changes: object) -> tuple[ViewSpec, RenderedView]:
    rng = np.random.default_rng(seed)
    spec = random_view_spec(rng, size="small")
    spec = replace(spec, frame=None, **changes)  # type: ignore[arg-type]
    return spec, render_view(spec, rng)


# -- transforms ------------------------------------------------------------------------------


def test_affine_compose_inverse_and_points() -> None:
    a = Affine.translation(10, 5).then(Affine.scaling(2, 3))
    pts = np.array([[0.0, 0.0], [1.0, 2.0]])
    np.testing.assert_allclose(a.apply(pts), [[10, 5], [12, 11]])
    np.testing.assert_allclose(a.inverse().apply(a.apply(pts)), pts)
    assert a.scale == pytest.approx(math.sqrt(6))
    with pytest.raises(ValueError):
        Affine(np.zeros((2, 3)))


def test_rotation_turns_content_counter_clockwise_on_screen() -> None:
    image = np.zeros((21, 21), dtype=np.float32)
    image[10, 18] = 1.0  # a dot to the right of the centre
    turn = Affine.translation(10, 10).then(Affine.rotation(90)).then(Affine.translation(-10, -10))
    out = warp(image, turn, (21, 21), order=0)
    assert np.argwhere(out == 1.0).tolist() == [[2, 10]]  # now above the centre


# -- splitter --------------------------------------------------------------------------------


def _iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    x0, y0 = max(a[0], b[0]), max(a[1], b[1])
    x1, y1 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x1 - x0) * max(0, y1 - y0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@pytest.mark.parametrize("layout", ["side_by_side", "joined"])
def test_two_parts_split_with_their_boxes(layout: str) -> None:
    hits = 0
    for seed in range(12):
        spec, rendered = _wrist(seed, parts=2, layout=layout, angle_deg=0.0)
        image = rendered.image
        split = split_parts(reduce(image), (0, 0, spec.width, spec.height), image.shape)
        truth = [p.bbox for p in rendered.parts]
        if len(split.parts) == 2 and all(
            _iou(found.box, true) > 0.6 for found, true in zip(split.parts, truth, strict=True)
        ):
            hits += 1
    assert hits >= 11


def test_markers_rulers_and_specks_are_not_parts() -> None:
    wrong = 0
    for seed in range(40):
        spec, rendered = _wrist(seed, parts=1, layout="single", marker="R", ruler=True, specks=6)
        image = rendered.image
        split = split_parts(reduce(image), (0, 0, spec.width, spec.height), image.shape)
        wrong += len(split.parts) != 1
    assert wrong <= 2


# -- rotation ---------------------------------------------------------------------------------


def test_alignment_makes_the_arm_vertical_with_fingers_up() -> None:
    rng = np.random.default_rng(0)
    errors = []
    for seed in range(60):
        angle = float(rng.uniform(-90, 90))
        down = bool(rng.random() < 0.3)
        view = "LAT" if seed % 3 == 0 else "PA"
        spec, rendered = _wrist(
            seed, parts=1, layout="single", angle_deg=angle, fingers_down=down, view=view
        )
        image = rendered.image
        reduced = reduce(image)
        split = split_parts(reduced, (0, 0, spec.width, spec.height), image.shape)
        assert len(split.parts) == 1
        alignment = align(split.parts[0].mask)
        to_source = fit_part(split.parts[0].mask, reduced, alignment.rotation_deg)
        up_in_source = to_source.matrix[:2, :2] @ np.array([0.0, -1.0])
        errors.append(_angle_between(up_in_source, _finger_direction(angle, down)))
    errors_arr = np.array(errors)
    assert (errors_arr <= 10).mean() >= 0.95, sorted(errors)[-5:]


def test_alignment_fails_the_test_without_the_fingers_rule() -> None:
    """The fingers rule matters: PCA alone leaves about half the arms upside down."""
    flipped = 0
    for seed in range(30):
        _, rendered = _wrist(seed, parts=1, layout="single", angle_deg=0.0, fingers_down=True)
        reduced = reduce(rendered.image)
        split = split_parts(reduced, (0, 0, *rendered.image.shape[::-1]), rendered.image.shape)
        flipped += align(split.parts[0].mask).fingers_flipped
    assert flipped >= 27


# -- geometry --------------------------------------------------------------------------------


def test_render_pads_to_aspect_and_maps_points_back() -> None:
    spec, rendered = _wrist(3, parts=1, layout="single", angle_deg=25.0, fingers_down=False)
    image = rendered.image
    reduced = reduce(image)
    split = split_parts(reduced, (0, 0, spec.width, spec.height), image.shape)
    geometry = OutputGeometry()
    alignment = align(split.parts[0].mask)
    to_source = fit_part(split.parts[0].mask, reduced, alignment.rotation_deg, geometry)
    view = render(image, to_source, geometry)
    assert view.shape == (512, 341) and view.dtype == np.float32
    # Every view pixel samples the source pixel its transform names (bilinear, smooth image).
    rng = np.random.default_rng(1)
    pts = np.stack([rng.uniform(20, 320, 50), rng.uniform(20, 490, 50)], axis=1)
    src = to_source.apply(pts)
    inside = (
        (src[:, 0] > 2)
        & (src[:, 1] > 2)
        & (src[:, 0] < spec.width - 3)
        & (src[:, 1] < spec.height - 3)
    )
    sampled = view[np.rint(pts[inside, 1]).astype(int), np.rint(pts[inside, 0]).astype(int)]
    expected = image[np.rint(src[inside, 1]).astype(int), np.rint(src[inside, 0]).astype(int)]
    assert np.abs(sampled - expected).mean() < 0.05
    # The round trip source -> view -> source is exact.
    np.testing.assert_allclose(to_source.apply(to_source.inverse().apply(src)), src, atol=1e-9)
