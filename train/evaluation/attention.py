"""Where a heat map's mass falls on a model-input view: bone, bone edges, soft tissue, skin edge,
background, the frame's border and the strongest edges.

Used to ask what a model keyed on when it called an intact wrist fractured (issue 18): bone
texture (mass inside the bone), edges or processing halos (mass on the bands either side of the
bone's or the skin's outline, and on the pixels of steepest grey-level change), or the frame
(collimation borders, burnt-in frames, the padding at the view's edge). The share of mass is
read against the share of area: a region holding 40% of the mass on 10% of the view is where
the model looked.

The segmentation is the one the preprocessing already trusts (`pipeline.preprocess.analysis`):
three-class Otsu on a lightly smoothed copy of the view (bone is bright in every view the
preprocessing makes), with background < soft tissue < bone. It is approximate: a dense cast can
pass for bone and heavy edge enhancement can split a cortex, so the figures compare groups of
views segmented alike, not single views.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from skimage.filters import sobel, threshold_multiotsu

REGIONS = ("bone", "bone edge", "soft tissue", "skin edge", "background")
"""Exclusive regions, in the order they claim pixels: a bone-edge pixel is not also bone."""
OVERLAYS = ("frame border", "strongest edges")
"""Overlapping regions reported beside them: the outer band of the view, and the pixels of
steepest grey-level change (`STRONG_EDGE_SHARE` of the view)."""
STRONG_EDGE_SHARE = 0.10

BoolArray = npt.NDArray[np.bool_]


def _band(mask: BoolArray, width: int) -> BoolArray:
    """Pixels within `width` pixels of the outline of `mask`, on either side."""
    if not mask.any() or mask.all():
        return np.zeros_like(mask)
    grown = ndimage.binary_dilation(mask, iterations=width)
    shrunk = ndimage.binary_erosion(mask, iterations=width, border_value=1)
    band: BoolArray = grown & ~shrunk
    return band


def region_masks(
    pixels: npt.ArrayLike, *, band_px: int = 6, border_px: int = 16
) -> dict[str, BoolArray]:
    """Masks of `REGIONS` (exclusive, covering the view) and `OVERLAYS` for a (H, W) view in
    [0, 1]; `band_px` is the half-width of the edge bands, `border_px` that of the frame border."""
    image = np.asarray(pixels, dtype=np.float64)
    if image.ndim != 2:
        raise ValueError(f"a view is (H, W), got shape {image.shape}")
    smooth = ndimage.gaussian_filter(image, 1.0)
    try:
        low, high = threshold_multiotsu(smooth, classes=3, nbins=128)
    except ValueError:  # a flat view: no tissue to speak of
        low = high = float(smooth.max()) + 1.0
    bone = ndimage.binary_opening(smooth >= high, iterations=1)
    body = ndimage.binary_opening(smooth >= low, iterations=1) | bone
    bone_edge = _band(bone, band_px)
    skin_edge = _band(body, band_px) & ~bone_edge
    masks: dict[str, BoolArray] = {
        "bone": bone & ~bone_edge,
        "bone edge": bone_edge,
        "soft tissue": body & ~bone & ~bone_edge & ~skin_edge,
        "skin edge": skin_edge,
    }
    taken = np.logical_or.reduce(list(masks.values()))
    masks["background"] = ~taken
    border = np.ones_like(bone)
    border[border_px:-border_px, border_px:-border_px] = False
    masks["frame border"] = border
    gradient = sobel(smooth)
    masks["strongest edges"] = gradient >= np.quantile(gradient, 1.0 - STRONG_EDGE_SHARE)
    return masks


def mass_by_region(heatmap: npt.ArrayLike, masks: Mapping[str, BoolArray]) -> dict[str, float]:
    """Share of the heat map's total mass in each mask (all zeros for an empty map)."""
    cam = np.clip(np.asarray(heatmap, dtype=np.float64), 0.0, None)
    total = float(cam.sum())
    for name, mask in masks.items():
        if mask.shape != cam.shape:
            raise ValueError(f"mask {name!r} is {mask.shape}, the heat map {cam.shape}")
    if total <= 0.0:
        return {name: 0.0 for name in masks}
    return {name: float(cam[mask].sum()) / total for name, mask in masks.items()}


def spread(heatmap: npt.ArrayLike, level: float = 0.5) -> float:
    """Share of the view where the heat map is at least `level` of its peak: small for a map
    that points at one place, large for one spread over the whole image."""
    cam = np.asarray(heatmap, dtype=np.float64)
    peak = float(cam.max()) if cam.size else 0.0
    if peak <= 0.0:
        return 0.0
    return float((cam >= level * peak).mean())


def area_by_region(masks: Mapping[str, BoolArray]) -> dict[str, float]:
    """Share of the view's pixels in each mask."""
    return {name: float(mask.mean()) for name, mask in masks.items()}


def summarise_shares(shares: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Per region: the mean, and the 25th and 75th percentiles, of a group of views' shares."""
    if not shares:
        return {}
    summary = {}
    for name in shares[0]:
        values = np.array([s[name] for s in shares])
        q25, q75 = np.quantile(values, [0.25, 0.75])
        summary[name] = {"mean": float(values.mean()), "q25": float(q25), "q75": float(q75)}
    return summary
