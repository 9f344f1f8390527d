"""Non-wrist decoys: radiographs of other body parts that a wrist filter must refuse.

A decoy is the attenuation map (sum of mu x chord length) of an adult body part built from
analytic solids, at a field of view that suits the part, with random size, position, in-plane
rotation, left/right mirroring and sometimes only part of it on the detector. Many decoys are
long bones, joints and hand-like rays, so that telling them from a wrist takes anatomy rather
than image statistics. The detector chain is applied elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from train.projection import decoys_limbs, decoys_trunk
from train.projection.decoys_scene import Scene
from train.projection.solids import Grid

DECOY_PARTS: tuple[str, ...] = (
    "chest",
    "pelvis",
    "skull",
    "foot",
    "ankle",
    "knee",
    "lower_leg",
    "elbow",
    "shoulder",
    "spine",
)

# Larger images are drawn at most this many pixels on the long side and upsampled (at most
# ~1.5x for a 3000-pixel detector, less blur than the detector's own): it halves the time of a
# full-size render, which otherwise nears the 3 s budget on a busy core.
MAX_DRAW_PX = 2048


@dataclass(frozen=True)
class DecoyRender:
    """A decoy's attenuation map (dimensionless, >= 0, 0 = air), pitch and description."""

    attenuation: np.ndarray
    mm_per_px: float
    description: str


@dataclass(frozen=True)
class _Part:
    build: Callable[[Scene, np.random.Generator], str]
    field_mm: tuple[float, float]  # field of view along the image's long side
    max_turn_deg: float  # in-plane rotation; chests and pelves are rarely turned much
    elongated: bool  # laid along the image's long side
    # Shift of the part's centre, in fields: usual, and when only part of it is on the detector
    # (a quarter of the time). A PA chest is centred by the radiographer, only its edges cut.
    shift: tuple[float, float] = (0.1, 0.3)


_PARTS: dict[str, _Part] = {
    "chest": _Part(decoys_trunk.chest, (350.0, 430.0), 8.0, False, (0.06, 0.06)),
    "pelvis": _Part(decoys_trunk.pelvis, (350.0, 420.0), 10.0, False, (0.08, 0.15)),
    "skull": _Part(decoys_trunk.skull, (240.0, 300.0), 20.0, False),
    "spine": _Part(decoys_trunk.spine, (300.0, 430.0), 12.0, True),
    "shoulder": _Part(decoys_trunk.shoulder, (240.0, 300.0), 25.0, False),
    "foot": _Part(decoys_limbs.foot, (240.0, 300.0), 30.0, True),
    "ankle": _Part(decoys_limbs.ankle, (180.0, 300.0), 30.0, True),
    "knee": _Part(decoys_limbs.knee, (200.0, 300.0), 30.0, True),
    "lower_leg": _Part(decoys_limbs.lower_leg, (350.0, 450.0), 20.0, True),
    "elbow": _Part(decoys_limbs.elbow, (180.0, 300.0), 30.0, True),
}


def render_decoy(body_part: str, height: int, width: int, rng: np.random.Generator) -> DecoyRender:
    """Draw one random radiograph of `body_part` (one of DECOY_PARTS) on a height x width
    detector: its attenuation map, pixel pitch and a description such as "knee, lateral"."""
    part = _PARTS.get(body_part)
    if part is None:
        raise ValueError(f"unknown decoy body part {body_part!r}; expected one of {DECOY_PARTS}")
    if height < 8 or width < 8:
        raise ValueError(f"decoy image must be at least 8x8 pixels, got {height}x{width}")
    field = float(rng.uniform(*part.field_mm))
    mm_per_px = field / max(height, width)
    shrink = min(1.0, MAX_DRAW_PX / max(height, width))
    h, w = max(round(height * shrink), 8), max(round(width * shrink), 8)
    grid = Grid(h, w, field / max(h, w))

    turn = float(rng.uniform(-part.max_turn_deg, part.max_turn_deg))
    if part.elongated and width > 1.15 * height:
        turn += 90.0  # a long part lies along a landscape detector
    mirror = bool(rng.random() < 0.5)
    scale = float(rng.uniform(0.88, 1.12))
    reach = part.shift[1] if rng.random() < 0.25 else part.shift[0]
    cx = (w - 1) * grid.mm_per_px / 2 + float(rng.uniform(-reach, reach)) * field
    cy = (h - 1) * grid.mm_per_px / 2 + float(rng.uniform(-reach, reach)) * field
    out = grid.zeros()
    view = part.build(Scene(grid, out, (cx, cy), turn, mirror, scale), rng)

    np.maximum(out, 0.0, out=out)
    if (h, w) != (height, width):
        out = ndimage.zoom(out, (height / h, width / w), order=1, grid_mode=True, mode="nearest")
        pad = ((0, max(height - out.shape[0], 0)), (0, max(width - out.shape[1], 0)))
        out = np.maximum(np.pad(out, pad, mode="edge")[:height, :width], 0.0)
    return DecoyRender(out.astype(np.float32), mm_per_px, f"{body_part}, {view}")
