"""One labelled view-reader sample, drawn straight from a world's renderer (no DICOM round trip).

The mix is each world's archive mix, bent towards what the reader must learn: more decoys (every
decoy kind of the world), more wrists at unusual angles and in two parts, and a share of images
inverted as a workstation would. A sample depends only on (world, seed, index).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.models.view_net import angle_to_direction, thumbnail
from train.phantoms import anatomy, appearance
from train.phantoms.plan import WORLDS as ARCHIVE_WORLDS
from train.projection import render as projection

WORLDS = ("phantom", "projection")
_WORLD_KEYS = {"phantom": 1, "projection": 2}
DECOY_SHARE = 0.3
FULL_TURN_SHARE = 0.3
"""Wrists whose angle is redrawn uniformly over 360 degrees (the samplers stop near 100)."""
EXTRA_TWO_PART_SHARE = 0.08
FRACTURE_SHARE = 0.3
IMPLANT_SHARE = 0.05
APPEARANCE_SHARE = 0.7
"""Phantom images whose look is redrawn by `appearance.randomise`."""
INVERTED_SHARE = 0.2
VIEWS = ("PA", "LAT")


@dataclass(frozen=True)
class Sample:
    """A thumbnail (uint8, display space, possibly inverted) and its labels."""

    image: np.ndarray
    wrist: bool
    inverted: bool
    direction: tuple[float, float] | None
    """Unit vector (x right, y down) towards the fingers; only for wrists with one part."""
    body_part: str
    parts: int
    angle_deg: float
    """The single part's arm angle (NaN otherwise)."""


def body_parts(worlds: tuple[str, ...]) -> tuple[str, ...]:
    """The body-part classes a reader trained on `worlds` learns: the sorted union of their
    decoy kinds, and "wrist". Taken from the worlds' definitions, not from the drawn images, so
    the class list does not depend on which decoys a small set happened to draw."""
    parts = {"wrist"}
    for world in worlds:
        parts.update(ARCHIVE_WORLDS[check_world(world)].decoys)
    return tuple(sorted(parts))


def check_world(world: str) -> str:
    """`world` itself, or a ValueError naming the known worlds."""
    if world not in WORLDS:
        raise ValueError(f"unknown world {world!r}; expected one of {', '.join(WORLDS)}")
    return world


def draw_sample(world: str, seed: int, index: int, size: str = "small") -> Sample:
    """Sample `index` of the set drawn from `world` with `seed` (pure and deterministic)."""
    archive_world = ARCHIVE_WORLDS[check_world(world)]
    streams = np.random.SeedSequence([seed, _WORLD_KEYS[world], index]).spawn(3)
    rng, render_rng, look_rng = (np.random.default_rng(s) for s in streams)
    body_part = "wrist"
    if rng.random() < DECOY_SHARE:
        body_part = str(rng.choice(list(archive_world.decoys)))
    fracture = None
    if body_part == "wrist" and rng.random() < FRACTURE_SHARE:
        kinds = [kind for kind, _ in archive_world.fracture_kinds]
        fracture = anatomy.Fracture(str(rng.choice(kinds)), bool(rng.random() < 0.3))
    view = VIEWS[int(rng.integers(len(VIEWS)))]
    spec: Any = archive_world.sample_spec(
        rng, body_part=body_part, view=view, fracture=fracture, size=size
    )
    if body_part == "wrist":
        spec = _bend_wrist(spec, world, rng)
    if world == "projection":
        rendered: anatomy.RenderedView | projection.ProjectedView = projection.render_view(
            spec, render_rng
        )
        image = rendered.image
    else:
        rendered = anatomy.render_view(spec, render_rng)
        image = rendered.image
        if look_rng.random() < APPEARANCE_SHARE:
            image, _ = appearance.randomise(image, look_rng)
    inverted = bool(rng.random() < INVERTED_SHARE)
    if inverted:
        image = 1.0 - image
    small = np.round(thumbnail(image) * 255.0).astype(np.uint8)
    direction, angle = None, math.nan
    if body_part == "wrist" and len(rendered.parts) == 1:
        part = rendered.parts[0]
        direction = angle_to_direction(part.angle_deg, part.fingers_down)
        angle = float(part.angle_deg)
    return Sample(
        image=small,
        wrist=body_part == "wrist",
        inverted=inverted,
        direction=direction,
        body_part=body_part,
        parts=len(rendered.parts),
        angle_deg=angle,
    )


def _bend_wrist(spec: Any, world: str, rng: np.random.Generator) -> Any:
    """More full turns, two-part views and implants than the archive samplers draw."""
    if rng.random() < FULL_TURN_SHARE:
        spec = replace(spec, angle_deg=float(rng.uniform(-180.0, 180.0)))
    if spec.parts == 1 and rng.random() < EXTRA_TWO_PART_SHARE:
        joined = world == "phantom" and rng.random() < 0.5
        spec = replace(spec, parts=2, layout="joined" if joined else "side_by_side")
    return replace(spec, implant=bool(rng.random() < IMPLANT_SHARE))
