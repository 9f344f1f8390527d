"""Anatomic part splitter (thesis Section 4.2.2.3, Figures 4.7-4.8).

Otsu binarisation, connected components, removal of components small relative to the image and
to the largest part, re-extraction: each remaining component is an anatomic part with its box in
source pixels. Two wrists exposed side by side and two images joined with a gap both split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import measure, morphology

from pipeline.preprocess.analysis import Reduced, foreground_threshold

Box = tuple[int, int, int, int]
"""x0, y0, x1, y1 in pixels, x = column, y = row, x1 and y1 exclusive."""


@dataclass(frozen=True)
class SplitterParams:
    """Thresholds of the splitter, as fractions so they hold at any image size."""

    min_area_fraction: float = 0.01
    """Components under this share of the (reduced) image are noise, markers or dust."""
    min_relative_area: float = 0.3
    """A second part must be at least this share of the largest one (rulers and letters are
    far smaller; a second arm is comparable)."""
    opening_radius: int = 1
    """Opening (reduced pixels) that cuts thin bridges such as a ruler touching an arm."""
    margin_fraction: float = 0.03
    """Margin added around each part's box, as a share of the box's long side."""
    max_parts: int = 4


@dataclass(frozen=True)
class Part:
    """One anatomic part found in an image."""

    index: int
    """0 for the leftmost part, counting to the right."""
    box: Box
    """Box in source pixels (with margin, clipped to the analysed region)."""
    mask: np.ndarray
    """Boolean mask of the part on the reduced copy (same shape as the reduced pixels)."""
    area_fraction: float


@dataclass(frozen=True)
class Split:
    """The parts of an image and the evidence behind them."""

    parts: tuple[Part, ...]
    threshold: float
    components_before_filtering: int


def split_parts(
    reduced: Reduced,
    region: Box,
    source_shape: tuple[int, int],
    params: SplitterParams = SplitterParams(),
) -> Split:
    """Find the anatomic parts inside `region` (source pixels, e.g. inside collimation bands)."""
    small = reduced.pixels
    inside = _region_mask(small.shape, region, reduced)
    values = small[inside] if inside.any() else small.ravel()
    threshold = foreground_threshold(values)
    binary = (small > threshold) & inside
    if params.opening_radius > 0:
        binary = ndimage.binary_opening(binary, morphology.disk(params.opening_radius))
    binary = ndimage.binary_fill_holes(binary)
    labels = measure.label(binary, connectivity=2)
    regions = measure.regionprops(labels)
    total = float(inside.sum() or small.size)
    kept = [r for r in regions if r.area / total >= params.min_area_fraction]
    if kept:
        largest = max(r.area for r in kept)
        kept = [r for r in kept if r.area >= params.min_relative_area * largest]
    kept = sorted(kept, key=lambda r: r.area, reverse=True)[: params.max_parts]
    kept = sorted(kept, key=lambda r: r.centroid[1])
    parts = tuple(
        Part(
            index=i,
            box=_source_box(r.bbox, reduced, region, source_shape, params.margin_fraction),
            mask=labels == r.label,
            area_fraction=float(r.area / total),
        )
        for i, r in enumerate(kept)
    )
    return Split(parts=parts, threshold=threshold, components_before_filtering=len(regions))


def _region_mask(shape: tuple[int, ...], region: Box, reduced: Reduced) -> np.ndarray:
    x0, y0, x1, y1 = region
    to_reduced = reduced.to_source.inverse()
    (rx0, ry0), (rx1, ry1) = to_reduced.apply(np.array([[x0, y0], [x1 - 1, y1 - 1]]))
    mask = np.zeros(shape, dtype=bool)
    mask[
        max(0, int(np.ceil(ry0))) : int(np.floor(ry1)) + 1,
        max(0, int(np.ceil(rx0))) : int(np.floor(rx1)) + 1,
    ] = True
    return mask


def _source_box(
    bbox: tuple[int, int, int, int],
    reduced: Reduced,
    region: Box,
    source_shape: tuple[int, int],
    margin_fraction: float,
) -> Box:
    """A reduced-grid regionprops bbox (row0, col0, row1, col1) as a source box with margin."""
    r0, c0, r1, c1 = bbox
    (x0, y0), (x1, y1) = reduced.to_source.apply(
        np.array([[c0 - 0.5, r0 - 0.5], [c1 - 0.5, r1 - 0.5]])
    )
    margin = margin_fraction * max(x1 - x0, y1 - y0)
    rx0, ry0, rx1, ry1 = region
    height, width = source_shape
    return (
        int(max(rx0, 0, np.floor(x0 - margin))),
        int(max(ry0, 0, np.floor(y0 - margin))),
        int(min(rx1, width, np.ceil(x1 + margin))),
        int(min(ry1, height, np.ceil(y1 + margin))),
    )
