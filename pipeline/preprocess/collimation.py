"""Collimation and border bands: uniform frames a workstation or the collimator leaves on 1-4
sides of a radiograph.

A band is a run of lines (rows or columns) starting at an image edge whose samples nearly all
sit at one grey level. Real anatomy and detector background are never that flat: the detector
adds noise, a painted or shuttered band does not. The search runs on a strided view (long side
about `work_long` pixels) and refines each band edge on full-resolution lines near it, so it
costs a few milliseconds on a 2500x3000 image and never copies the full image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Box = tuple[int, int, int, int]  # x0, y0, x1, y1; x = column, y = row; x1/y1 exclusive
SIDES = ("left", "top", "right", "bottom")


@dataclass(frozen=True)
class CollimationParams:
    """Parameters of the band search (grey levels on the display scale [0, 1]).

    work_long: long side of the strided working view, in pixels.
    max_fraction: widest band accepted, as a fraction of the side; a longer flat run is uniform
        content (or an empty image), not a frame.
    min_fraction: narrowest band reported; thinner flat edges are ignored.
    edge_max_std: the outermost line must be this flat (std) to start a band; detector noise on
        an exposed background is larger, a painted band is flat up to compression ringing.
    noise_free_std: an outermost line flatter than this is noise-free, hence painted: a band
        whatever lies inside it. Between this and edge_max_std the line may also be a smooth
        (e.g. sigmoid-windowed or lossy-compressed) background, so the band must also end in a
        step of at least min_step from its level to the median of the lines just inside it.
    level_tolerance: a sample belongs to the band when within this of the band level.
    uniform_fraction: fraction of a line's samples that must belong to the band.
    """

    work_long: int = 256
    max_fraction: float = 0.2
    min_fraction: float = 0.01
    edge_max_std: float = 0.006
    noise_free_std: float = 0.001
    min_step: float = 0.04
    level_tolerance: float = 0.02
    uniform_fraction: float = 0.97


@dataclass(frozen=True)
class Collimation:
    """The bands found and the region of the image inside them."""

    inner: Box
    bands: tuple[str, ...]
    band_level: float | None


def stride_for(shape: tuple[int, ...], work_long: int) -> int:
    """The stride that brings the long side of `shape` down to about `work_long` pixels."""
    return max(1, math.ceil(max(shape) / work_long))


def _lines(pixels: np.ndarray, side: str) -> np.ndarray:
    """A view whose first axis runs from the given edge inwards, one line per index."""
    if side == "top":
        return pixels
    if side == "bottom":
        return pixels[::-1]
    if side == "left":
        return pixels.T
    return pixels.T[::-1]


def _band_run(lines: np.ndarray, level: float, limit: int, params: CollimationParams) -> int:
    """Number of leading lines (at most limit + 1) that sit at `level`."""
    head = lines[: limit + 1]
    near = np.abs(head - np.float32(level)) <= params.level_tolerance
    ok = near.mean(axis=1) >= params.uniform_fraction
    bad = np.flatnonzero(~ok)
    return int(bad[0]) if bad.size else int(ok.size)


def _side_band(
    pixels: np.ndarray, side: str, span: slice, k: int, params: CollimationParams
) -> tuple[int, float] | None:
    """Width in full-resolution lines and level of the band on one side, or None."""
    full = _lines(pixels, side)
    n_full = full.shape[0]
    small = full[::k, span][:, ::k] if k > 1 else full[:, span]
    edge = small[0]
    if float(edge.std()) > params.edge_max_std:
        return None
    level = float(np.median(edge))
    limit = max(1, int(params.max_fraction * n_full) // k)
    run = _band_run(small, level, limit, params)
    if run > limit:
        return None  # flat far beyond any frame: uniform content, not a band
    if float(edge.std()) > params.noise_free_std:
        inside = small[run : run + 4]
        if inside.size == 0 or abs(float(np.median(inside)) - level) < params.min_step:
            return None
    # Refine on the full-resolution lines between the last band sample and the first non-band.
    lo, hi = max(run - 1, 0) * k, min(run * k, n_full - 1)
    window = full[lo : hi + 1, span][:, ::k]
    width = lo + _band_run(window, level, window.shape[0] - 1, params)
    if width < max(1, round(params.min_fraction * n_full)):
        return None
    return width, level


def find_collimation(
    pixels: np.ndarray, params: CollimationParams = CollimationParams()
) -> Collimation:
    """Find uniform bands along the edges of a display-space image and the box inside them."""
    if pixels.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {pixels.shape}")
    rows, cols = pixels.shape
    k = stride_for(pixels.shape, params.work_long)
    widths = dict.fromkeys(SIDES, 0)
    levels: dict[str, float] = {}
    # Two passes: the second scans each side only between the bands found on the sides across
    # it, so a band of another level in the corner does not hide this side's band.
    for _ in range(2):
        for side in SIDES:
            if side in ("top", "bottom"):
                span = slice(widths["left"], cols - widths["right"])
            else:
                span = slice(widths["top"], rows - widths["bottom"])
            if span.stop - span.start < 2:
                continue
            found = _side_band(pixels, side, span, k, params)
            if found is not None:
                widths[side], levels[side] = found
    bands = tuple(s for s in SIDES if widths[s] > 0)
    inner = (widths["left"], widths["top"], cols - widths["right"], rows - widths["bottom"])
    if inner[2] - inner[0] < 2 or inner[3] - inner[1] < 2:
        return Collimation((0, 0, cols, rows), (), None)  # all flat: no image to frame
    level = float(np.mean([levels[s] for s in bands])) if bands else None
    return Collimation(inner, bands, level)
