"""Where in the source image a view's suspicion lies: a region derived from its Grad-CAM map.

The heat map lives in model-input (view) coordinates. The region is the bounding box of the
connected part of the map, above a fraction of its peak, that holds the peak; its corners are
mapped back through the view's preprocessing transform, so the region is a quadrilateral in the
source image's pixel coordinates (a rectangle turned by the view's rotation). The SR carries it
as a SCOORD, the presentation state draws it, and `train` measures how often it holds the
synthetic fracture line.

Coordinates are (x, y) = (column, row) with the pixel-centre convention of the rest of the
pipeline: (0, 0) is the centre of the top-left pixel. DICOM SCOORDs put (0, 0) at the top-left
corner of that pixel, so `dicom_points` adds 0.5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from skimage import measure

from pipeline.preprocess.study import View

if TYPE_CHECKING:
    from pipeline.inference import ViewPrediction

PEAK_FRACTION = 0.5
"""The region holds the map where it reaches this fraction of its peak (half maximum)."""
MIN_PEAK = 1e-3
"""A map whose peak is below this carries no localisation (Grad-CAM found no positive evidence)."""


@dataclass(frozen=True)
class Region:
    """A suspected region, in source pixel coordinates (pixel-centre convention)."""

    corners: npt.NDArray[np.float64]
    """(4, 2) x, y of the box's corners in source pixels, in drawing order."""
    centre: tuple[float, float]
    """x, y of the box's centre in source pixels."""
    peak: tuple[float, float]
    """x, y of the heat map's maximum in source pixels."""
    view_box: tuple[int, int, int, int]
    """x0, y0, x1, y1 (inclusive) of the box in view pixels."""

    def dicom_points(self) -> npt.NDArray[np.float32]:
        """The closed polyline (5, 2) in DICOM image coordinates (column, row; 0 at the corner)."""
        closed = np.vstack([self.corners, self.corners[:1]]) + 0.5
        return closed.astype(np.float32)

    def contains(self, points: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        """Which of the (N, 2) source points lie inside the region (its convex quadrilateral)."""
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        c = self.corners
        # Signed area: the polygon's winding, so "inside" is the same side of every edge.
        winding = np.sign(np.sum(c[:, 0] * np.roll(c[:, 1], -1) - np.roll(c[:, 0], -1) * c[:, 1]))
        inside = np.ones(len(pts), dtype=bool)
        for a, b in zip(c, np.roll(c, -1, axis=0), strict=True):
            cross = (b[0] - a[0]) * (pts[:, 1] - a[1]) - (b[1] - a[1]) * (pts[:, 0] - a[0])
            inside &= cross * winding >= -1e-9
        return inside


def suspected_region(
    view: View, heatmap: npt.NDArray[np.floating] | None, fraction: float = PEAK_FRACTION
) -> Region | None:
    """The region of `view` that its heat map points at, or None when the map is empty."""
    if heatmap is None:
        return None
    heat = np.asarray(heatmap, dtype=np.float32)
    peak_value = float(heat.max()) if heat.size else 0.0
    if not np.isfinite(peak_value) or peak_value < MIN_PEAK:
        return None
    py, px = np.unravel_index(int(np.argmax(heat)), heat.shape)
    labels = measure.label(heat >= fraction * peak_value, connectivity=2)
    ys, xs = np.nonzero(labels == labels[py, px])
    x0, x1, y0, y1 = int(xs.min()), int(xs.max()), int(ys.min()), int(ys.max())
    # The box's outer edges (half a pixel beyond the extreme pixel centres), in view pixels.
    box = np.array(
        [[x0 - 0.5, y0 - 0.5], [x1 + 0.5, y0 - 0.5], [x1 + 0.5, y1 + 0.5], [x0 - 0.5, y1 + 0.5]]
    )
    corners = view.to_source(box)
    centre = view.to_source(np.array([[(x0 + x1) / 2.0, (y0 + y1) / 2.0]]))[0]
    peak = view.to_source(np.array([[float(px), float(py)]]))[0]
    return Region(
        corners=np.asarray(corners, dtype=np.float64),
        centre=(float(centre[0]), float(centre[1])),
        peak=(float(peak[0]), float(peak[1])),
        view_box=(x0, y0, x1, y1),
    )


def marked_region(view: ViewPrediction, possible: float) -> Region | None:
    """The region the results mark for a view: only at or above the "possible" operating point,
    and only when its heat map points somewhere. The node's SR, its presentation state and the
    localisation figures all use this one rule. A view the model abstained on
    (`pipeline.ood`) has no result, so nothing is marked."""
    if view.abstained or view.probability < possible:
        return None
    return suspected_region(view.view, view.heatmap)


def analysed_region(view: View) -> Region:
    """The whole part of the source image that `view` shows the model (its outer edges), for
    results that must name a region where nothing was found there."""
    height, width = view.pixels.shape
    box = np.array(
        [[-0.5, -0.5], [width - 0.5, -0.5], [width - 0.5, height - 0.5], [-0.5, height - 0.5]]
    )
    corners = np.asarray(view.to_source(box), dtype=np.float64)
    centre = view.to_source(np.array([[(width - 1) / 2.0, (height - 1) / 2.0]]))[0]
    point = (float(centre[0]), float(centre[1]))
    return Region(corners=corners, centre=point, peak=point, view_box=(0, 0, width - 1, height - 1))


def distance_to_points(point: tuple[float, float], line: npt.NDArray[np.float64]) -> float:
    """The distance from `point` to the nearest of the (N, 2) points sampled along a line."""
    pts = np.asarray(line, dtype=np.float64).reshape(-1, 2)
    return float(np.min(np.hypot(pts[:, 0] - point[0], pts[:, 1] - point[1])))
