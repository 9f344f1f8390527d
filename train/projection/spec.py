"""What the projection renderer draws: one frozen spec per view, and its random sampler.

The fields the archive writer reads (body part, view, size, angle, fingers, fracture, implant,
cast, marker, ruler, frame, parts) have the same names as the phantom renderer's spec, so one
archive writer serves both worlds; everything else here is this renderer's own variation: age,
proportions, pose, the image chain's strength, collimation shapes and burned-in text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

VIEWS = ("PA", "LAT", "OBL")
AGES = ("child", "adult", "elderly")
FRACTURE_KINDS = (
    "transverse",
    "oblique",
    "comminuted",
    "buckle",
    "ulnar_styloid",
    "scaphoid",
)
# Lines that are not fractures and must not be called fractures (besides implants and casts).
MIMICS = ("nutrient_canal", "skin_fold", "overlap")
FRAME_SHAPES = ("none", "full", "partial", "L", "tilted")
_SIZES = ((2500, 3000), (2048, 2500), (1760, 2140), (2800, 2300), (1200, 1500))  # (cols, rows)


@dataclass(frozen=True)
class Fracture:
    """A fracture visible in the view; `hairline` ones are 0.1-0.3 mm wide with tiny step-offs."""

    kind: str
    subtle: bool


@dataclass(frozen=True)
class Pose:
    """Hand and wrist posture (degrees)."""

    wrist_deviation: float
    """Radial (-) or ulnar (+) deviation of the hand in the forearm's plane."""
    wrist_flexion: float
    """Palmar (+) or dorsal (-) flexion, seen in the lateral view."""
    finger_flexion: float
    finger_spread: float
    thumb_abduction: float


@dataclass(frozen=True)
class ProjectionSpec:
    """Everything that determines a rendered view, apart from the random generator."""

    body_part: str
    view: str
    height: int
    width: int
    angle_deg: float
    fingers_down: bool
    fracture: Fracture | None
    implant: bool
    cast: bool
    marker: str | None
    ruler: bool
    frame: str | None
    """Colour of the collimation border: None, "white" (unexposed) or "black" (shutter)."""
    frame_shape: str
    parts: int
    layout: str
    age: str
    size_factor: float
    """Body size relative to an average adult (children are smaller)."""
    pose: Pose
    roll_deg: float
    """Forearm rotation about its axis away from the nominal view (an imperfect position)."""
    field_mm: float
    """Long side of the detector field in mm: small values crop the hand or the forearm."""
    mimics: tuple[str, ...]
    text: bool
    chain_strength: float
    """1.0 samples the image chain over its full randomisation ranges, 0.0 a mild plain one."""
    mirror: bool = False
    """The other hand (mirror image across the arm's axis)."""


def random_spec(
    rng: np.random.Generator,
    *,
    body_part: str = "wrist",
    view: str = "PA",
    fracture: Fracture | None = None,
    size: str = "small",
) -> ProjectionSpec:
    """A random spec drawn over wide ranges (this renderer's domain randomisation)."""
    if size == "small":
        long_side, aspect = 512, rng.uniform(0.6, 1.0)
        short = round(long_side * aspect)
        height, width = (long_side, short) if rng.random() < 0.65 else (short, long_side)
    elif size == "full":
        width, height = _SIZES[int(rng.integers(len(_SIZES)))]
        if rng.random() < 0.3:
            width, height = height, width
    else:
        raise ValueError(f"unknown size {size!r}")
    if view == "LAT" and rng.random() < 0.25:
        view = "OBL"  # the third view many hospitals add
    age = str(rng.choice(AGES, p=[0.2, 0.6, 0.2]))
    size_factor = {"child": rng.uniform(0.6, 0.85), "adult": rng.uniform(0.88, 1.15)}.get(
        age, rng.uniform(0.85, 1.05)
    )
    band = rng.random()
    if band < 0.55:
        angle = rng.uniform(-15, 15)
    elif band < 0.8:
        angle = rng.choice([-1, 1]) * rng.uniform(15, 60)
    else:
        angle = rng.choice([-1, 1]) * rng.uniform(60, 100)
    frame_shape = str(rng.choice(FRAME_SHAPES, p=[0.45, 0.25, 0.1, 0.1, 0.1]))
    frame = None if frame_shape == "none" else ("white" if rng.random() < 0.6 else "black")
    two = rng.random() < 0.05
    mimics = tuple(m for m in MIMICS if rng.random() < 0.25)
    return ProjectionSpec(
        body_part=body_part,
        view=view,
        height=int(height),
        width=int(width),
        angle_deg=float(angle),
        fingers_down=bool(rng.random() < 0.12),
        fracture=fracture,
        implant=False,
        cast=bool(rng.random() < 0.06),
        marker=("L" if rng.random() < 0.5 else "R") if rng.random() < 0.75 else None,
        ruler=bool(rng.random() < 0.08),
        frame=frame,
        frame_shape=frame_shape,
        parts=2 if two else 1,
        layout="side_by_side" if two else "single",
        age=age,
        size_factor=float(size_factor),
        pose=Pose(
            wrist_deviation=float(rng.uniform(-15, 15)),
            wrist_flexion=float(rng.uniform(-20, 25)),
            finger_flexion=float(rng.uniform(0, 1) ** 2 * 70),
            finger_spread=float(rng.uniform(-4, 12)),
            thumb_abduction=float(rng.uniform(-10, 25)),
        ),
        roll_deg=float(rng.normal(0.0, 7.0)),
        field_mm=float(math.exp(rng.uniform(math.log(150), math.log(330)))),
        mimics=mimics,
        text=bool(rng.random() < 0.35),
        chain_strength=1.0,
        mirror=bool(rng.random() < 0.5),
    )
