"""The reduced copy every analysis step works on, and the foreground mask they share.

Otsu, connected components, morphology and PCA run on a copy whose long side is about 256 px:
the decisions do not need more, and the geometry is applied once, at full resolution, at the end
(thesis Section 4.2.1 spent several CPU-seconds per image doing all of it at full size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu, threshold_otsu

from pipeline.preprocess.transforms import Affine


@dataclass(frozen=True)
class AnalysisParams:
    """How the reduced copy is made."""

    long_side: int = 256
    """Target long side of the reduced copy, in pixels."""
    smoothing_sigma: float = 1.0
    """Gaussian sigma (reduced pixels) against quantum noise before thresholding."""


@dataclass(frozen=True)
class Reduced:
    """A reduced copy of a display-space image and how its pixels map to the source."""

    pixels: np.ndarray
    """float32, smoothed."""
    to_source: Affine
    """Reduced pixel -> source pixel."""
    step: int


def reduce(pixels: np.ndarray, params: AnalysisParams = AnalysisParams()) -> Reduced:
    """A strided, smoothed copy with long side about `params.long_side` (no full-size copy)."""
    step = max(1, int(np.ceil(max(pixels.shape) / params.long_side)))
    # Sampling the middle of each step x step cell keeps the map to the source exact.
    offset = (step - 1) // 2
    small = np.asarray(pixels[offset::step, offset::step], dtype=np.float32)
    if params.smoothing_sigma > 0:
        small = ndimage.gaussian_filter(small, params.smoothing_sigma)
    to_source = Affine.translation(offset, offset).then(Affine.scaling(step, step))
    return Reduced(pixels=small, to_source=to_source, step=step)


def foreground_threshold(pixels: np.ndarray) -> float:
    """The grey level between background and tissue.

    Plain Otsu (the thesis) splits a radiograph wherever its histogram has the widest gap, which
    is often bone against soft tissue; three-class Otsu separates background, soft tissue and
    bone, and its lower threshold is the one that delineates the body part.
    """
    values = pixels.ravel()
    try:
        low, _ = threshold_multiotsu(values, classes=3, nbins=128)
        return float(low)
    except ValueError:  # too few distinct grey levels for three classes
        return float(threshold_otsu(values))
