"""Colour inversion: detect display-space radiographs a workstation inverted (white background,
dark bone) and flip them back.

The thesis (Section 4.2.2.2, Eq. 4.1) inverts when the mean of the four corners is >= 100 on a
0-255 scale. It fails on framed images (white collimation bands in the corners of a normal
image, Figure 6.5b), on corner markers and on grey backgrounds (Figure 6.5a). Here the bands are
found and ignored first; then the image inside them is split into two grey classes (Otsu) and
the background is the class that owns the ring of pixels along the inner border: the background
touches the border, the arm mostly does not. When no class owns the ring (the anatomy fills the
image) the histogram tails decide: bone is the long bright tail of a normal image and the long
dark tail of an inverted one. The thesis decision is computed alongside, as evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from skimage.filters import threshold_otsu

from pipeline.preprocess.collimation import (
    Collimation,
    CollimationParams,
    find_collimation,
    stride_for,
)


@dataclass(frozen=True)
class InversionParams:
    """Parameters of the inversion decision (grey levels on the display scale [0, 1]).

    work_long: long side of the strided working view, in pixels.
    ring_fraction: width of the inner border ring, as a fraction of the inner box's short side.
    ring_majority: fraction of the ring one Otsu class must hold to be called the background;
        below it the image has no clear background and the tails rule decides.
    tail_percentiles: low, middle and high percentiles compared by the tails rule.
    thesis_corner_fraction: corner side as a fraction of the image side for Eq. 4.1 (the
        thesis does not state its corner size).
    thesis_threshold: Eq. 4.1b threshold T on the 0-255 scale (the thesis uses 100).
    collimation: parameters of the band search run first.
    """

    work_long: int = 256
    ring_fraction: float = 0.04
    ring_majority: float = 0.65
    tail_percentiles: tuple[float, float, float] = (1.0, 50.0, 99.0)
    thesis_corner_fraction: float = 0.1
    thesis_threshold: float = 100.0
    collimation: CollimationParams = field(default_factory=CollimationParams)


@dataclass(frozen=True)
class InversionDecision:
    """The decision and the evidence behind it."""

    inverted: bool
    rule: str
    background_level: float
    foreground_level: float
    thesis_corner_mean: float
    thesis_would_invert: bool
    collimation: Collimation
    border_bright_fraction: float | None = None
    """Share of the inner border ring in the bright Otsu class (the background-border cue)."""
    tail_lengths: tuple[float, float] | None = None
    """(dark, bright) tail: median minus low percentile, high percentile minus median."""


def thesis_corner_mean(pixels: np.ndarray, corner_fraction: float = 0.1) -> float:
    """Eq. 4.1a: the mean of the four corner means, on the 0-255 scale (strided estimate)."""
    rows, cols = pixels.shape
    ch, cw = max(1, round(rows * corner_fraction)), max(1, round(cols * corner_fraction))
    k = max(1, stride_for((ch, cw), 64))
    corners = (
        pixels[:ch:k, :cw:k],
        pixels[:ch:k, cols - cw :: k],
        pixels[rows - ch :: k, :cw:k],
        pixels[rows - ch :: k, cols - cw :: k],
    )
    return 255.0 * float(np.mean([float(c.mean()) for c in corners]))


def _ring(small: np.ndarray, fraction: float) -> np.ndarray:
    """The samples of a border ring of the given relative width."""
    r = max(1, round(fraction * min(small.shape)))
    if 2 * r >= min(small.shape):
        return small.ravel()
    parts = (small[:r], small[-r:], small[r:-r, :r], small[r:-r, -r:])
    return np.concatenate([p.ravel() for p in parts])


def _median(values: np.ndarray, fallback: float) -> float:
    return float(np.median(values)) if values.size else fallback


def correct_inversion(
    pixels: np.ndarray, params: InversionParams = InversionParams()
) -> tuple[np.ndarray, InversionDecision]:
    """Return the image with bone bright (flipped when it was inverted) and the decision."""
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
    collimation = find_collimation(pixels, params.collimation)
    x0, y0, x1, y1 = collimation.inner
    k = stride_for((y1 - y0, x1 - x0), params.work_long)
    small = pixels[y0:y1:k, x0:x1:k]
    corner = thesis_corner_mean(pixels, params.thesis_corner_fraction)
    thesis = corner >= params.thesis_threshold

    lo, mid, hi = (float(v) for v in np.percentile(small, params.tail_percentiles))
    flat = hi - lo < 1e-6
    threshold = mid if flat else float(threshold_otsu(small))
    ring = _ring(small, params.ring_fraction)
    bright_ring = float(np.mean(ring > threshold))
    if flat:
        inverted, rule = False, "flat-image"  # nothing to decide on: leave it as it is
    elif bright_ring >= params.ring_majority:
        inverted, rule = True, "background-border"
    elif bright_ring <= 1.0 - params.ring_majority:
        inverted, rule = False, "background-border"
    else:
        # No class owns the border: the anatomy fills the image. The longer tail is bone.
        inverted, rule = (hi - mid) < (mid - lo), "tails-no-background"

    if rule == "background-border":
        background = _median(ring[(ring > threshold) == inverted], mid)
    else:
        background = lo if not inverted else hi
    objects = small[small <= threshold] if inverted else small[small > threshold]
    decision = InversionDecision(
        inverted=inverted,
        rule=rule,
        background_level=background,
        foreground_level=_median(objects, mid),
        thesis_corner_mean=corner,
        thesis_would_invert=thesis,
        collimation=collimation,
        border_bright_fraction=bright_ring,
        tail_lengths=(mid - lo, hi - mid),
    )
    if not inverted:
        return pixels, decision
    out: np.ndarray = np.subtract(np.float32(1.0), pixels, dtype=np.float32)
    return out, decision
