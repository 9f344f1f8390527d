"""Render one view in the projection world: anatomy -> collimated exposure -> detector -> overlays.

The output honours the archive writer's contract (`image` in display space, float32 in [0, 1],
dark background; `parts` with boxes, angles and fracture lines in output pixels), plus this
renderer's extras: anatomical landmarks per part and every appearance parameter that was drawn,
so failures can be grouped by cause.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from train.phantoms.anatomy import PartTruth
from train.projection import detector, overlays
from train.projection.decoys import DECOY_PARTS, render_decoy
from train.projection.solids import Grid
from train.projection.spec import AGES, FRACTURE_KINDS, VIEWS, ProjectionSpec
from train.projection.wrist import Maps, arm_pose, draw_arm

BODY_PARTS = ("wrist", *DECOY_PARTS)
_WORK_LONG = 1024  # anatomy is projected at most at this long side, then resampled
Pt2 = tuple[float, float]


@dataclass(frozen=True)
class ProjectedView:
    """A rendered image, its per-part truth, landmarks per part and the appearance drawn."""

    image: np.ndarray
    parts: tuple[PartTruth, ...]
    landmarks: tuple[dict[str, Pt2], ...] = ()
    appearance: dict[str, Any] = field(default_factory=dict)


def validate(spec: ProjectionSpec) -> None:
    """Refuse a spec this renderer cannot draw, naming the field."""
    if spec.body_part not in BODY_PARTS:
        raise ValueError(f"unknown body_part {spec.body_part!r}")
    if spec.body_part == "wrist" and spec.view not in VIEWS:
        raise ValueError(f"unknown view {spec.view!r}")
    if spec.fracture is not None and spec.fracture.kind not in FRACTURE_KINDS:
        raise ValueError(f"unknown fracture kind {spec.fracture.kind!r}")
    if spec.age not in AGES:
        raise ValueError(f"unknown age {spec.age!r}")
    if spec.frame_shape not in overlays.FRAME_SHAPES:
        raise ValueError(f"unknown frame_shape {spec.frame_shape!r}")
    if spec.frame not in (None, "white", "black") or spec.marker not in (None, "L", "R"):
        raise ValueError("bad frame or marker")
    if spec.parts not in (1, 2) or not (16 <= spec.height <= 8192 and 16 <= spec.width <= 8192):
        raise ValueError(f"bad parts or size: {spec.parts}, {spec.height}x{spec.width}")


def render_view(spec: ProjectionSpec, rng: np.random.Generator) -> ProjectedView:
    """Render the view described by spec; all randomness comes from rng (bitwise reproducible)."""
    validate(spec)
    h, w = spec.height, spec.width
    f = min(1.0, _WORK_LONG / max(h, w))
    wh, ww = max(round(h * f), 16), max(round(w * f), 16)
    anatomy_rng, chain_rng, overlay_rng = (_child(rng) for _ in range(3))
    parts: list[PartTruth] = []
    landmarks: list[dict[str, Pt2]] = []
    if spec.body_part == "wrist":
        grid = Grid(wh, ww, spec.field_mm * (1.6 if spec.parts == 2 else 1.0) / max(wh, ww))
        attenuation, parts, landmarks = _wrists(spec, grid, anatomy_rng, (h / wh, w / ww))
        mm_per_px = grid.mm_per_px * max(wh, ww) / max(h, w)
    else:
        decoy = render_decoy(spec.body_part, wh, ww, anatomy_rng)
        attenuation = decoy.attenuation
        mm_per_px = decoy.mm_per_px * max(wh, ww) / max(h, w)
    if (wh, ww) != (h, w):
        attenuation = ndimage.zoom(
            attenuation, (h / wh, w / ww), order=1, grid_mode=True, mode="nearest"
        )
    keep = _wrist_region(landmarks, 40.0 / mm_per_px, w, h) if landmarks else None
    shape = spec.frame_shape if spec.frame else "none"
    exposed = overlays.collimation_field(h, w, overlay_rng, shape=shape, keep=keep)
    chain = detector.sample_chain(chain_rng, strength=spec.chain_strength)
    image = detector.expose(
        attenuation, None if shape == "none" else exposed, chain, chain_rng, mm_per_px=mm_per_px
    )
    if spec.frame == "black":
        overlays.electronic_shutter(image, exposed, overlay_rng)
    if spec.marker:
        overlays.burn_marker(image, overlay_rng, spec.marker)
    if spec.text:
        overlays.burn_text(image, overlay_rng)
    if spec.ruler:
        overlays.burn_ruler(image, overlay_rng)
    np.clip(image, 0.0, 1.0, out=image)
    appearance: dict[str, Any] = {"renderer": "projection", **detector.chain_params(chain)}
    appearance |= {
        "age": spec.age,
        "view": spec.view,
        "frame_shape": shape,
        "field_mm": round(spec.field_mm, 1),
        "mimics": list(spec.mimics),
    }
    return ProjectedView(
        image.astype(np.float32, copy=False), tuple(parts), tuple(landmarks), appearance
    )


def _wrists(
    spec: ProjectionSpec, grid: Grid, rng: np.random.Generator, zoom: tuple[float, float]
) -> tuple[np.ndarray, list[PartTruth], list[dict[str, Pt2]]]:
    maps = Maps.empty(grid)
    mm = grid.mm_per_px
    fy, fx = zoom
    parts, marks = [], []
    arms = [(spec.angle_deg, spec.mirror, 0.5)]
    if spec.parts == 2:
        angle = float(np.clip(spec.angle_deg, -20.0, 20.0))
        arms = [
            (angle, spec.mirror, 0.27),
            (-angle + float(rng.uniform(-5, 5)), not spec.mirror, 0.73),
        ]
    which = int(rng.integers(len(arms)))
    for i, (angle, mirror, x_share) in enumerate(arms):
        t = math.radians(angle)
        d = np.array([-math.sin(t), -math.cos(t)]) * (-1.0 if spec.fingers_down else 1.0)
        centre = np.array([x_share * (grid.width - 1) * mm, 0.5 * (grid.height - 1) * mm])
        centre += rng.uniform(-0.08, 0.08, 2) * spec.field_mm * (0.4 if spec.parts == 2 else 1.0)
        origin = centre - d * spec.size_factor * rng.uniform(10.0, 60.0)
        pose = arm_pose(
            angle,
            fingers_down=spec.fingers_down,
            mirror=mirror,
            roll_deg=spec.roll_deg + {"PA": 0.0, "OBL": 45.0, "LAT": 90.0}[spec.view],
            origin=(float(origin[0]), float(origin[1])),
        )
        before = maps.soft + maps.fat
        fracture = spec.fracture if i == which else None
        truth = draw_arm(maps, grid, pose, spec, fracture, _child(rng))
        body = (maps.soft + maps.fat - before) > 2.0
        parts.append(
            PartTruth(
                bbox=_box(body, fx, fy, spec.width, spec.height),
                angle_deg=angle,
                fingers_down=spec.fingers_down,
                fracture_line=None
                if truth.fracture_line is None
                else (
                    _px(truth.fracture_line[0], mm, fx, fy),
                    _px(truth.fracture_line[1], mm, fx, fy),
                ),
            )
        )
        marks.append({k: _px(v, mm, fx, fy) for k, v in truth.landmarks.items()})
    trabecular = _trabecular(rng, grid)
    density = {"child": 0.9, "adult": 1.0, "elderly": 0.7}[spec.age] * rng.uniform(0.85, 1.15)
    return maps.attenuation(trabecular, float(density)), parts, marks


def _trabecular(rng: np.random.Generator, grid: Grid) -> np.ndarray:
    """Cancellous bone's projected texture: band-passed noise at the trabecular scale (~1 mm)."""
    noise = rng.standard_normal((grid.height, grid.width)).astype(np.float32)
    fine = max(0.45 / grid.mm_per_px, 0.5)
    band = ndimage.gaussian_filter(noise, fine) - ndimage.gaussian_filter(noise, 3 * fine)
    band /= float(band.std()) + 1e-6
    out: np.ndarray = np.clip(1.0 + 0.18 * band, 0.4, 1.6).astype(np.float32)
    return out


def _px(p: Pt2, mm: float, fx: float, fy: float) -> Pt2:
    """Work-grid mm -> output pixel-centre coordinates."""
    return ((p[0] / mm + 0.5) * fx - 0.5, (p[1] / mm + 0.5) * fy - 0.5)


def _box(mask: np.ndarray, fx: float, fy: float, w: int, h: int) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return (0, 0, 0, 0)
    x0, y0 = math.floor(xs.min() * fx), math.floor(ys.min() * fy)
    x1, y1 = min(math.ceil((xs.max() + 1) * fx), w), min(math.ceil((ys.max() + 1) * fy), h)
    return (int(x0), int(y0), int(x1), int(y1))


def _wrist_region(
    landmarks: list[dict[str, Pt2]], margin: float, w: int, h: int
) -> tuple[int, int, int, int]:
    """The box around every part's wrist landmarks, widened by `margin` pixels, in the image."""
    pts = np.array([p for marks in landmarks for p in marks.values()])
    x0, y0 = np.maximum(pts.min(axis=0) - margin, 0)
    x1, y1 = np.minimum(pts.max(axis=0) + margin, (w, h))
    return (int(x0), int(y0), int(x1), int(y1))


def _child(rng: np.random.Generator) -> np.random.Generator:
    return np.random.default_rng(int(rng.integers(2**63)))
