"""Tests of the non-wrist decoys of the projection renderer (train.projection.decoys)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import label, regionprops

from train.projection.decoys import DECOY_PARTS, DecoyRender, render_decoy
from train.projection.decoys_scene import Scene, layered_ellipsoid, layered_tube, mitre
from train.projection.decoys_trunk import chest
from train.projection.materials import MU_SOFT
from train.projection.solids import Grid, ellipsoid, rotation, tube

SIZE = 256
AIR = 0.05  # attenuation below which a pixel is background
FULL_FIELD = {"chest", "pelvis", "spine"}  # the body may fill the whole detector


def render(part: str, seed: int = 0, height: int = SIZE, width: int = SIZE) -> DecoyRender:
    return render_decoy(part, height, width, np.random.default_rng(seed))


def field_mm(r: DecoyRender, height: int = SIZE, width: int = SIZE) -> float:
    return r.mm_per_px * max(height, width)


@pytest.mark.parametrize("part", DECOY_PARTS)
def test_every_part_renders_a_plausible_attenuation_map(part: str) -> None:
    for seed in range(3):
        r = render(part, seed)
        a = r.attenuation
        assert a.shape == (SIZE, SIZE) and a.dtype == np.float32
        assert np.isfinite(a).all() and a.min() >= 0.0
        assert r.description.startswith(f"{part}, ")
        body = a > AIR
        # Soft tissue alone (smooth ellipsoids and cylinders) peaks at ~1.15x its median over
        # the body; bone on top of it drives the maximum far higher.
        assert a.max() > 1.6 * float(np.median(a[body])), (part, seed)
        if part not in FULL_FIELD:
            assert 0.1 < 1.0 - body.mean() < 0.95, (part, seed)  # air around a body part


def test_same_generator_state_gives_the_same_decoy() -> None:
    for part in ("chest", "knee", "foot"):
        a, b = render(part, 7), render(part, 7)
        assert np.array_equal(a.attenuation, b.attenuation)
        assert (a.mm_per_px, a.description) == (b.mm_per_px, b.description)
        assert not np.array_equal(a.attenuation, render(part, 8).attenuation)


def test_unknown_part_or_tiny_image_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'wrist'"):
        render_decoy("wrist", SIZE, SIZE, np.random.default_rng(0))
    with pytest.raises(ValueError, match="4x64"):
        render_decoy("knee", 4, 64, np.random.default_rng(0))


def test_field_of_view_suits_the_part() -> None:
    for seed in range(5):
        assert field_mm(render("chest", seed)) > 300.0
        assert field_mm(render("lower_leg", seed)) > 300.0
        assert field_mm(render("knee", seed)) < 320.0
        assert field_mm(render("elbow", seed)) < 320.0
        tall = render("spine", seed, 300, 120)
        assert 300.0 <= field_mm(tall, 300, 120) <= 430.0
        assert tall.mm_per_px == pytest.approx(field_mm(tall, 300, 120) / 300)


def test_large_images_keep_their_shape_and_pitch() -> None:
    r = render("elbow", 3, 2100, 1500)  # drawn reduced, then upsampled
    assert r.attenuation.shape == (2100, 1500)
    assert np.isfinite(r.attenuation).all() and r.attenuation.min() >= 0.0
    assert 180.0 <= field_mm(r, 2100, 1500) <= 300.0


def test_chest_lungs_are_darker_than_the_mediastinum() -> None:
    for seed in range(6):
        row = render("chest", seed).attenuation[SIZE // 2]
        left = np.median(row[int(0.2 * SIZE) : int(0.35 * SIZE)])
        right = np.median(row[int(0.65 * SIZE) : int(0.8 * SIZE)])
        middle = row[int(0.45 * SIZE) : int(0.55 * SIZE)].max()
        assert max(left, right) < 0.8 * middle, seed


def test_chest_anatomy_in_its_own_frame() -> None:
    grid = Grid(400, 400, 1.0)
    out = grid.zeros()
    chest(Scene(grid, out, (200.0, 200.0), 0.0, False, 1.0), np.random.default_rng(0))
    mediastinum = out[200, 195:206].max()
    for x in (110, 290):  # lung fields, either side
        assert out[200, x] < 0.7 * mediastinum
        assert out[200, x] < 0.7 * out[320, x]  # below the diaphragm: liver, no lung


def test_lower_leg_has_a_long_bone() -> None:
    for seed in range(4):
        r = render("lower_leg", seed)
        a = r.attenuation
        body = a > AIR
        bone = a > 1.3 * float(np.median(a[body]))
        largest = max(regionprops(label(bone)), key=lambda p: p.area)
        assert largest.axis_major_length > 3.0 * largest.axis_minor_length, seed
        assert largest.axis_major_length * r.mm_per_px > 200.0, seed
        assert largest.area < 0.6 * body.sum(), seed  # the bone, not the whole leg


def test_layered_primitives_match_the_solids_they_fuse() -> None:
    grid = Grid(160, 180, 0.5)
    side = (0.3, -1.0, 40.0)
    geometry = {"depth_ratio": 0.5, "roll_deg": 30.0, "tilt_deg": 20.0}
    for s, r in (
        (np.array([0.0, 0.4, 1.0]), np.array([9.0, 6.0, 12.0])),
        (np.array([0.0, 1.0]), np.array([9.0, 5.0])),  # a straight taper takes a short cut
    ):
        expected = grid.zeros()
        for radii, w in ((r, 0.7), (r - 2.0, -0.3)):
            tube(expected, grid, (15.0, 20.0), (70.0, 60.0), s, radii, w, keep_side=side,
                 **geometry)  # type: ignore[arg-type]  # fmt: skip
        got = grid.zeros()
        layers = [(s, r, 0.7), (s, r - 2.0, -0.3)]
        layered_tube(got, grid, (15.0, 20.0), (70.0, 60.0), layers, keep=[side], **geometry)
        np.testing.assert_allclose(got, expected, atol=1e-4)

    rot = rotation(-70.0, 10.0, 80.0) @ np.diag([-1.0, 1.0, 1.0])  # mirrored frames too
    expected = grid.zeros()
    ellipsoid(expected, grid, (40.0, 35.0, -5.0), (25.0, 10.0, 18.0), rot, 0.7)
    ellipsoid(expected, grid, (40.0, 35.0, -5.0), (23.0, 8.0, 16.0), rot, -0.3)
    got = grid.zeros()
    layered_ellipsoid(
        got, grid, (40.0, 35.0, -5.0), rot, [((25.0, 10.0, 18.0), 0.7), ((23.0, 8.0, 16.0), -0.3)]
    )
    np.testing.assert_allclose(got, expected, atol=1e-3)


def test_a_bent_limb_meets_at_its_mitre_without_gap_or_overlap() -> None:
    grid = Grid(200, 200, 0.5)
    straight = grid.zeros()
    Scene(grid, straight, (50.0, 20.0), 0.0, False, 1.0).rod(MU_SOFT, (0.0, 0.0), (0.0, 70.0), 15.0)
    for angle in (25.0, -60.0):
        bent = grid.zeros()
        sc = Scene(grid, bent, (50.0, 20.0), 0.0, True, 1.0)
        upper, lower = mitre((0.0, 40.0), angle, 100.0)
        sc.rod(MU_SOFT, (0.0, 0.0), (0.0, 80.0), 15.0, keep=upper)
        sc.sub(0.0, 40.0, angle).rod(MU_SOFT, (0.0, -40.0), (0.0, 30.0), 15.0, keep=lower)
        assert bent.max() <= straight.max() * 1.01  # no double soft tissue where they meet
        centre = bent[int(60 / 0.5), int(50 / 0.5)]  # the joint, on both axes
        assert centre == pytest.approx(straight.max(), rel=0.02)  # and no gap there
        ys, xs = np.mgrid[0:200, 0:200] * 0.5
        near_joint = np.hypot(xs - 50.0, ys - 60.0) < 13.0
        assert (bent[near_joint] > 0.1 * straight.max()).all()  # no slit along the mitre
