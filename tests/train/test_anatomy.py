"""Tests of the synthetic radiograph renderer (train.phantoms.anatomy)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
from skimage.filters import threshold_otsu

from tests.phantom_specs import PLAIN
from train.phantoms.anatomy import (
    Fracture,
    RenderedView,
    ViewSpec,
    random_view_spec,
    render_view,
)


def render(spec: ViewSpec, seed: int = 0) -> RenderedView:
    return render_view(spec, np.random.default_rng(seed))


def foreground(image: np.ndarray) -> np.ndarray:
    level = float(threshold_otsu(image))  # type: ignore[no-untyped-call]
    mask: np.ndarray = image > level
    return mask


def axis_angle(mask: np.ndarray) -> float:
    """Principal-axis angle of a mask in the spec's convention (CCW from vertical, mod 180)."""
    ys, xs = np.nonzero(mask)
    cov = np.cov(np.stack([xs - xs.mean(), ys - ys.mean()]))
    vals, vecs = np.linalg.eigh(cov)
    dx, dy = vecs[:, np.argmax(vals)]
    return math.degrees(math.atan2(-dx, -dy))


def angle_error(a: float, b: float) -> float:
    d = (a - b) % 180.0
    return min(d, 180.0 - d)


def line_samples(
    line: tuple[tuple[float, float], tuple[float, float]], n: int = 40
) -> tuple[np.ndarray, np.ndarray]:
    (x0, y0), (x1, y1) = line
    t = np.linspace(0.15, 0.85, n)  # the middle of the line, where it crosses bone
    return np.round(y0 + t * (y1 - y0)).astype(int), np.round(x0 + t * (x1 - x0)).astype(int)


def test_deterministic_and_seed_dependent() -> None:
    spec = replace(PLAIN, marker="L", ruler=True, specks=4, cast=True, heel=0.2, noise=0.02)
    a, b, c = render(spec, 7), render(spec, 7), render(spec, 8)
    assert np.array_equal(a.image, b.image)
    assert a.parts == b.parts
    assert not np.array_equal(a.image, c.image)


@pytest.mark.parametrize("seed", range(12))
def test_random_specs_shape_dtype_range(seed: int) -> None:
    rng = np.random.default_rng(seed)
    part = ("wrist", "wrist", "chest", "pelvis", "skull")[seed % 5]
    fracture = Fracture(("transverse", "oblique", "buckle", "scaphoid")[seed % 4], seed % 3 == 0)
    spec = random_view_spec(
        rng,
        body_part=part,
        view="LAT" if seed % 2 else "PA",
        fracture=fracture if part == "wrist" else None,
    )
    spec = replace(spec, implant=seed % 4 == 1)
    out = render_view(spec, rng)
    assert out.image.dtype == np.float32
    assert out.image.shape == (spec.height, spec.width)
    assert float(out.image.min()) >= 0.0 and float(out.image.max()) <= 1.0
    if part == "wrist":
        assert len(out.parts) == spec.parts
        for p in out.parts:
            x0, y0, x1, y1 = p.bbox
            assert 0 <= x0 < x1 <= spec.width and 0 <= y0 < y1 <= spec.height
    else:
        assert out.parts == ()


def test_intensity_layers_background_tissue_bone() -> None:
    out = render(PLAIN, 3)
    img = out.image
    x0, y0, x1, y1 = out.parts[0].bbox
    corners = np.concatenate([img[:20, :20].ravel(), img[:20, -20:].ravel()])
    inside = img[y0:y1, x0:x1]
    fg = inside[inside > 0.2]
    assert 0.02 <= corners.mean() <= 0.14
    tissue = np.median(fg)
    assert corners.mean() + 0.15 < tissue
    assert np.percentile(fg, 99) > tissue + 0.2  # bone well above soft tissue
    assert np.percentile(fg, 99) < 0.97  # no metal without an implant


def test_pa_shows_two_forearm_bones_lat_superimposes_them() -> None:
    def bone_runs(view: str) -> int:
        out = render(replace(PLAIN, view=view, noise=0.0), 5)
        row = out.image[PLAIN.height - 10]  # forearm, fingers are up
        bright = row > 0.55
        return int(np.count_nonzero(bright[1:] & ~bright[:-1]))

    assert bone_runs("PA") == 2
    assert bone_runs("LAT") == 1


@pytest.mark.parametrize("seed", range(6))
def test_pca_recovers_axis_angle(seed: int) -> None:
    angle = float(np.random.default_rng(100 + seed).uniform(-80, 80))
    size = (512, 400) if seed % 2 else (400, 512)
    spec = replace(PLAIN, angle_deg=angle, height=size[0], width=size[1], view="PA")
    out = render(spec, seed)
    assert out.parts[0].angle_deg == pytest.approx(angle)
    assert angle_error(axis_angle(foreground(out.image)), angle) < 10.0


@pytest.mark.parametrize("down", [False, True])
def test_fingers_direction(down: bool) -> None:
    out = render(replace(PLAIN, fingers_down=down, noise=0.0), 2)
    fg = foreground(out.image)

    def span(rows: np.ndarray) -> int:
        cols = np.nonzero(rows.any(axis=0))[0]
        return int(cols.max() - cols.min())

    top, bottom = span(fg[: PLAIN.height // 4]), span(fg[-PLAIN.height // 4 :])
    assert out.parts[0].fingers_down is down
    assert (bottom > top) if down else (top > bottom)  # the spread hand is wider than the forearm


@pytest.mark.parametrize("seed", range(4))
def test_bbox_is_tight(seed: int) -> None:
    angle = (15.0, -10.0, 5.0, 0.0)[seed]
    out = render(replace(PLAIN, noise=0.0, angle_deg=angle, height=384, width=512), seed)
    x0, y0, x1, y1 = out.parts[0].bbox
    img = out.image
    outside = np.ones_like(img, dtype=bool)
    outside[max(y0 - 3, 0) : y1 + 3, max(x0 - 3, 0) : x1 + 3] = False
    assert outside.sum() > 0.2 * img.size
    background = float(np.median(img[outside]))
    assert img[outside].max() < background + 0.05
    inside = img[y0:y1, x0:x1] > background + 0.02
    # every edge of the box touches the arm
    assert inside[:3].any() and inside[-3:].any() and inside[:, :3].any() and inside[:, -3:].any()


@pytest.mark.parametrize("layout", ["side_by_side", "joined"])
def test_two_parts_are_separated(layout: str) -> None:
    spec = replace(PLAIN, parts=2, layout=layout, width=640, height=480, noise=0.0, angle_deg=10)
    out = render(spec, 11)
    assert len(out.parts) == 2
    left, right = sorted(out.parts, key=lambda p: p.bbox[0])
    assert left.bbox[2] < right.bbox[0]
    gap = out.image[:, left.bbox[2] : right.bbox[0]]
    assert gap.shape[1] >= 3
    assert gap.max(axis=0).min() < 0.15  # at least one empty background column
    assert angle_error(left.angle_deg, -right.angle_deg) <= 5.0  # mirrored pair
    if layout == "joined":
        assert (out.image.max(axis=0) < 0.03).sum() >= 0.02 * spec.width  # black paste seam


@pytest.mark.parametrize(
    ("kind", "subtle", "view"),
    [
        ("transverse", False, "PA"),
        ("oblique", False, "PA"),
        ("scaphoid", False, "PA"),
        ("transverse", False, "LAT"),
        ("transverse", True, "PA"),
        ("oblique", True, "LAT"),
    ],
)
def test_fracture_line_is_a_dark_line_in_bone(kind: str, subtle: bool, view: str) -> None:
    spec = replace(PLAIN, view=view, angle_deg=25.0, noise=0.0)
    broken = render(replace(spec, fracture=Fracture(kind, subtle)), 9)
    whole = render(spec, 9)
    assert whole.parts[0].fracture_line is None
    line = broken.parts[0].fracture_line
    assert line is not None
    x0, y0, x1, y1 = broken.parts[0].bbox
    for x, y in line:
        assert x0 <= x <= x1 and y0 <= y <= y1
    ys, xs = line_samples(line)
    drop = float(np.mean(whole.image[ys, xs] - broken.image[ys, xs]))
    assert drop > (0.01 if subtle else 0.05)
    # Away from the fracture the images are identical: the fracture has its own random stream.
    far = np.ones(spec.height, dtype=bool)
    far[int(min(y for _, y in line)) - 60 : int(max(y for _, y in line)) + 60] = False
    assert np.array_equal(broken.image[far], whole.image[far])


def test_fracture_line_visible_at_classifier_resolution() -> None:
    from skimage.transform import resize

    spec = replace(PLAIN, fracture=Fracture("transverse", False), noise=0.0)
    broken, whole = render(spec, 1), render(replace(spec, fracture=None), 1)
    small_b = resize(broken.image, (512, 341), anti_aliasing=True)  # type: ignore[no-untyped-call]
    small_w = resize(whole.image, (512, 341), anti_aliasing=True)  # type: ignore[no-untyped-call]
    sx = 341 / spec.width
    line = tuple((x * sx, y) for x, y in broken.parts[0].fracture_line)  # type: ignore[union-attr]
    ys, xs = line_samples(line)  # type: ignore[arg-type]
    assert float(np.mean(small_w[ys, xs] - small_b[ys, xs])) > 0.05


def test_buckle_bulges_the_cortex() -> None:
    spec = replace(PLAIN, noise=0.0)
    broken = render(replace(spec, fracture=Fracture("buckle", False)), 6)
    whole = render(spec, 6)
    (_, ya), (_, yb) = broken.parts[0].fracture_line  # type: ignore[misc]
    assert abs(ya - yb) < 2  # the bulge's extent is across the (vertical) radius
    y = round((ya + yb) / 2)
    band = slice(y - 6, y + 7)
    diff = np.abs(broken.image[band] - whole.image[band])
    assert diff.max() > 0.1


def test_implant_is_bright_metal_and_cast_brightens() -> None:
    base = replace(PLAIN, noise=0.0)
    metal = render(replace(base, implant=True), 2)
    plain = render(base, 2)
    x0, y0, x1, y1 = plain.parts[0].bbox
    assert (metal.image[y0:y1, x0:x1] > 0.97).sum() > 200
    assert (plain.image[y0:y1, x0:x1] > 0.97).sum() < 20  # at most where carpals overlap
    cast = render(replace(base, cast=True), 2)
    lower = slice(int(PLAIN.height * 0.75), PLAIN.height)
    gain = cast.image[lower, x0:x1].mean() - plain.image[lower, x0:x1].mean()
    assert 0.03 < gain < 0.3


def test_white_frame_makes_edges_bright() -> None:
    out = render(replace(PLAIN, frame="white"), 3)
    img = out.image
    edges = [img[0].mean(), img[-1].mean(), img[:, 0].mean(), img[:, -1].mean()]
    assert sum(e > 0.95 for e in edges) >= 2
    black = render(replace(PLAIN, frame="black"), 3).image
    edges = [black[0].mean(), black[-1].mean(), black[:, 0].mean(), black[:, -1].mean()]
    assert sum(e < 0.025 for e in edges) >= 2


def test_marker_and_ruler_add_bright_content_outside_the_arm() -> None:
    base = replace(PLAIN, noise=0.0, height=400, width=512)
    for spec in (replace(base, marker="R"), replace(base, ruler=True)):
        out = render(spec, 4)
        x0, y0, x1, y1 = out.parts[0].bbox
        outside = out.image.copy()
        outside[y0:y1, x0:x1] = 0
        assert outside.max() > 0.7, spec


def test_specks_are_tiny_and_leave_the_rest_unchanged() -> None:
    spec = replace(PLAIN, noise=0.0)
    clean, dusty = render(spec, 4), render(replace(spec, specks=6), 4)
    changed = np.abs(clean.image - dusty.image) > 0.05
    assert 6 <= changed.sum() < 6 * 40


@pytest.mark.parametrize("part", ["chest", "pelvis", "skull"])
def test_non_wrist_bodies_are_wide_and_symmetric(part: str) -> None:
    spec = replace(PLAIN, body_part=part, height=480, width=440)
    out = render(spec, 0)
    assert out.parts == ()
    fg = foreground(out.image)
    cols = np.nonzero(fg.mean(axis=0) > 0.1)[0]
    assert cols.max() - cols.min() > 0.6 * spec.width
    mirrored = fg[:, ::-1]
    iou = (fg & mirrored).sum() / (fg | mirrored).sum()
    assert iou > 0.8


def test_random_view_spec_sizes_and_frequencies() -> None:
    rng = np.random.default_rng(0)
    full = [random_view_spec(rng, size="full") for _ in range(300)]
    assert all(250 <= s.height <= 4000 and 250 <= s.width <= 4000 for s in full)
    assert any((s.width, s.height) == (2500, 3000) for s in full)
    small = [random_view_spec(rng) for _ in range(300)]
    assert all(max(s.height, s.width) == 512 for s in small)
    assert all(0.59 <= min(s.height, s.width) / 512 <= 1.0 for s in small)
    specs = full + small
    wide = np.mean([abs(s.angle_deg) > 20 for s in specs])
    assert 0.1 < wide < 0.35
    assert 0.6 < np.mean([s.marker is not None for s in specs]) < 0.8
    assert np.mean([s.parts == 2 for s in specs]) < 0.15
    assert all((s.parts == 2) == (s.layout != "single") for s in specs)
    assert not any(s.implant for s in specs)
    assert all(0 <= s.specks <= 6 for s in specs)


def test_invalid_spec_rejected() -> None:
    with pytest.raises(ValueError):
        render(replace(PLAIN, body_part="knee"))
    with pytest.raises(ValueError):
        render(replace(PLAIN, parts=2))
    with pytest.raises(ValueError):
        render(replace(PLAIN, fracture=Fracture("spiral", False)))


def test_full_size_render() -> None:
    spec = replace(
        PLAIN,
        height=3000,
        width=2500,
        fracture=Fracture("oblique", False),
        implant=True,
        marker="L",
        noise=0.02,
        blur=1.0,
    )
    out = render(spec, 5)
    assert out.image.shape == (3000, 2500)
    x0, y0, x1, y1 = out.parts[0].bbox
    assert x1 - x0 > 0.25 * spec.width
    line = out.parts[0].fracture_line
    assert line is not None
    assert all(x0 <= x <= x1 and y0 <= y <= y1 for x, y in line)
