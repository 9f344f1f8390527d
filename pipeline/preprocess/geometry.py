"""Geometry for the model: pad to the model's aspect ratio, resize to its input, once.

The thesis found padding better than stretching (Table 6.4). The part's box is taken in the
aligned (turned) frame, fitted inside the model input keeping its aspect ratio, and the source is
resampled a single time through the composed transform, from a block-averaged copy so that
downscaling by 5-8x does not alias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.preprocess.analysis import Reduced
from pipeline.preprocess.rotation import turned_about
from pipeline.preprocess.transforms import Affine, warp


@dataclass(frozen=True)
class OutputGeometry:
    """The model input: width x height pixels (341 x 512 by default, thesis Section 6.2.1)."""

    width: int = 341
    height: int = 512
    margin_fraction: float = 0.02
    """Margin around the part, as a share of its long side."""

    def __post_init__(self) -> None:
        if self.width < 8 or self.height < 8:
            raise ValueError(f"model input {self.width}x{self.height} is too small")


def fit_part(
    mask: np.ndarray,
    reduced: Reduced,
    rotation_deg: float,
    geometry: OutputGeometry = OutputGeometry(),
) -> Affine:
    """Model-input pixel -> source pixel for the part in `mask` turned by `rotation_deg`."""
    ys, xs = np.nonzero(mask)
    source = reduced.to_source.apply(np.stack([xs, ys], axis=1).astype(np.float64))
    centre = (float(source[:, 0].mean()), float(source[:, 1].mean()))
    frame = turned_about(centre, rotation_deg)
    turned = frame.inverse().apply(source)
    half_cell = reduced.step / 2.0
    x0, y0 = turned.min(axis=0) - half_cell
    x1, y1 = turned.max(axis=0) + half_cell
    margin = geometry.margin_fraction * max(x1 - x0, y1 - y0)
    x0, y0, x1, y1 = x0 - margin, y0 - margin, x1 + margin, y1 + margin
    scale = max((x1 - x0) / geometry.width, (y1 - y0) / geometry.height)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    place = Affine.translation(
        cx - scale * (geometry.width - 1) / 2.0, cy - scale * (geometry.height - 1) / 2.0
    ).then(Affine.scaling(scale, scale))
    return frame.then(place)


def render(
    pixels: np.ndarray,
    to_source: Affine,
    geometry: OutputGeometry,
    *,
    background: float = 0.0,
    valid: tuple[int, int, int, int] | None = None,
    keep: np.ndarray | None = None,
    keep_to_source: Affine | None = None,
) -> np.ndarray:
    """Resample the source once onto the model input grid.

    Pixels that sample outside `valid` (the source box inside collimation bands) become
    `background`, so a white shutter band does not enter the view. `keep` (a boolean mask on
    another grid, mapped to the source by `keep_to_source`) blanks everything outside this part,
    so a neighbouring arm does not leak in.
    """
    shape = (geometry.height, geometry.width)
    factor = max(1, int(to_source.scale))
    corners = to_source.apply(
        np.array(
            [
                [0, 0],
                [geometry.width - 1, 0],
                [0, geometry.height - 1],
                [geometry.width - 1, geometry.height - 1],
            ],
            dtype=np.float64,
        )
    )
    height, width = pixels.shape
    x0 = int(max(0, np.floor(corners[:, 0].min()) - factor))
    y0 = int(max(0, np.floor(corners[:, 1].min()) - factor))
    x1 = int(min(width, np.ceil(corners[:, 0].max()) + factor + 1))
    y1 = int(min(height, np.ceil(corners[:, 1].max()) + factor + 1))
    if x1 - x0 < factor or y1 - y0 < factor:
        return np.full(shape, background, dtype=np.float32)
    crop = pixels[y0:y1, x0:x1]
    rows, cols = (crop.shape[0] // factor) * factor, (crop.shape[1] // factor) * factor
    block = crop[:rows, :cols].reshape(rows // factor, factor, cols // factor, factor)
    small = block.mean(axis=(1, 3), dtype=np.float32) if factor > 1 else crop.astype(np.float32)
    # A block-mean pixel (i, j) is centred on source (x0 + f*j + (f-1)/2, y0 + f*i + (f-1)/2).
    small_to_source = Affine.translation(x0 + (factor - 1) / 2.0, y0 + (factor - 1) / 2.0).then(
        Affine.scaling(factor, factor)
    )
    out = warp(small, small_to_source.inverse().then(to_source), shape, order=1, cval=background)
    if valid is not None:
        vx0, vy0, vx1, vy1 = valid
        grid = np.mgrid[0 : geometry.height, 0 : geometry.width].astype(np.float64)
        points = np.stack([grid[1].ravel(), grid[0].ravel()], axis=1)
        src = to_source.apply(points)
        inside_valid = (
            (src[:, 0] >= vx0 - 0.5) & (src[:, 0] <= vx1 - 0.5)
            & (src[:, 1] >= vy0 - 0.5) & (src[:, 1] <= vy1 - 0.5)
        ).reshape(shape)  # fmt: skip
        out = np.where(inside_valid, out, np.float32(background))
    if keep is not None and keep_to_source is not None:
        grown = ndimage.binary_dilation(keep, iterations=2).astype(np.float32)
        inside = warp(grown, keep_to_source.inverse().then(to_source), shape, order=0) > 0.5
        out = np.where(inside, out, np.float32(background))
    result: np.ndarray = np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)
    return result
