"""Does a radiograph look like an extremity (forearm, wrist, hand) rather than a chest, pelvis or
skull? The check that lets the wrist filter distrust a free-text Body Part Examined.

A forearm/hand is one elongated object on a uniform background that leaves the field at one end;
a chest, pelvis or skull is wide, mirror-symmetric about the vertical axis and fills the frame with
textured tissue. Five cues, each mapped by a linear ramp to [0, 1] (1 = extremity-like), are
combined into a weighted mean: the extremity score. Everything runs on a block-mean copy whose
longest side is about `work_side` pixels, so a 512 px image costs a few milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import sobel, threshold_otsu


@dataclass(frozen=True)
class ExtremityParams:
    """Thresholds of the extremity check; each (a, b) pair is a ramp: score 0 at a, 1 at b.

    Defaults were set on rendered phantoms (train.phantoms): wrists vs chests, pelves and skulls,
    either polarity, with frames, rulers and markers.
    """

    work_side: int = 128
    """Longest side of the reduced copy the features are computed on."""
    frame_level: float = 0.03
    """An edge row/column whose median is within this of 0 or 1 and is flat is a shutter band."""
    frame_max_share: float = 0.15
    """Most of a side that frame stripping may remove (real shutter bands are 3-12%)."""
    fill: tuple[float, float] = (0.50, 0.30)
    """Foreground share of the frame: forearms occupy 0.2-0.4, chests and skulls 0.45-0.8."""
    elongation: tuple[float, float] = (1.5, 2.5)
    """sqrt of the PCA eigenvalue ratio of the largest foreground component (forearm 2-6)."""
    symmetry: tuple[float, float] = (0.75, 0.45)
    """Best correlation of the gradient image with its mirror over axis shifts of +-1/8 width;
    trunks and skulls are symmetric (0.6-1.0), single and paired forearms less (< 0.75)."""
    background_spread: tuple[float, float] = (0.30, 0.20)
    """Std of the background class over the foreground-background contrast: the air around a
    limb is uniform (0.1-0.23); a mis-segmented trunk leaves textured tissue there (> 0.2)."""
    border_contact: tuple[float, float] = (0.0, 0.03)
    """Share of the frame's outer ring that the largest component covers: a forearm leaves the
    field; lungs or a whole skull do not."""
    weights: tuple[float, float, float, float, float] = (1.0, 1.0, 2.0, 1.0, 1.0)
    """Weights of fill, elongation, symmetry, background spread and border contact."""


@dataclass(frozen=True)
class ExtremityEvidence:
    """The features measured on one image and the score they combine into."""

    score: float
    """Weighted mean of the cue ramps, in [0, 1]; 1 looks like an extremity."""
    inverted: bool
    """True when the background was judged bright (an image inverted by a workstation)."""
    fill: float
    elongation: float
    symmetry: float
    background_spread: float
    border_contact: float


def extremity_evidence(
    pixels: np.ndarray, params: ExtremityParams | None = None
) -> ExtremityEvidence:
    """Measure how much a display-space image (float, [0, 1]) looks like an extremity."""
    p = params or ExtremityParams()
    small = _strip_frame(_block_mean(np.asarray(pixels, dtype=np.float32), p.work_side), p)
    level = float(small.mean())
    if np.ptp(small) > 1e-6:
        level = float(threshold_otsu(small))
    bright = small > level
    # The background is what the outer ring mostly shows; this is what makes the check work on
    # images that a workstation inverted (white background), whatever Photometric says.
    inverted = bool(_ring(bright).mean() > 0.5)
    fg = ~bright if inverted else bright
    fill = float(fg.mean())
    elongation, contact = _largest_component_shape(fg)
    symmetry = _mirror_symmetry(small)
    spread = _background_spread(small, fg)
    cues = (
        _ramp(fill, p.fill),
        _ramp(elongation, p.elongation),
        _ramp(symmetry, p.symmetry),
        _ramp(spread, p.background_spread),
        _ramp(contact, p.border_contact),
    )
    score = float(np.dot(cues, p.weights) / sum(p.weights))
    return ExtremityEvidence(score, inverted, fill, elongation, symmetry, spread, contact)


def _ramp(x: float, bounds: tuple[float, float]) -> float:
    a, b = bounds
    return float(np.clip((x - a) / (b - a), 0.0, 1.0))


def _block_mean(img: np.ndarray, side: int) -> np.ndarray:
    f = max(1, -(-max(img.shape) // side))
    h, w = (img.shape[0] // f) * f, (img.shape[1] // f) * f
    if h == 0 or w == 0:
        return img
    out: np.ndarray = img[:h, :w].reshape(h // f, f, w // f, f).mean(axis=(1, 3))
    return out


def _is_frame_line(line: np.ndarray, p: ExtremityParams) -> bool:
    m = float(np.median(line))
    extreme = m <= p.frame_level or m >= 1.0 - p.frame_level
    return extreme and float(np.mean(np.abs(line - m) <= p.frame_level / 2)) >= 0.9


def _strip_frame(img: np.ndarray, p: ExtremityParams) -> np.ndarray:
    """Remove flat black or white shutter bands: they would decide the polarity and the fill."""
    h, w = img.shape
    top, bottom, left, right = 0, h, 0, w
    cap_h, cap_w = p.frame_max_share * h, p.frame_max_share * w
    changed = True
    while changed and bottom - top > 8 and right - left > 8:
        changed = False
        if top < cap_h and _is_frame_line(img[top, left:right], p):
            top, changed = top + 1, True
        if h - bottom < cap_h and _is_frame_line(img[bottom - 1, left:right], p):
            bottom, changed = bottom - 1, True
        if left < cap_w and _is_frame_line(img[top:bottom, left], p):
            left, changed = left + 1, True
        if w - right < cap_w and _is_frame_line(img[top:bottom, right - 1], p):
            right, changed = right - 1, True
    # The block straddling a band's inner edge is half band: its edge would break the symmetry.
    top, left = top + (top > 0), left + (left > 0)
    bottom, right = bottom - (bottom < h), right - (right < w)
    return img[top:bottom, left:right]


def _ring(mask: np.ndarray, width: int = 2) -> np.ndarray:
    return np.concatenate(
        [
            mask[:width].ravel(),
            mask[-width:].ravel(),
            mask[:, :width].ravel(),
            mask[:, -width:].ravel(),
        ]
    )


def _largest_component_shape(fg: np.ndarray) -> tuple[float, float]:
    """Elongation (sqrt of the PCA eigenvalue ratio) and border contact of the largest blob."""
    labels, n = ndimage.label(fg)
    if n == 0:
        return 0.0, 0.0
    largest = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    ys, xs = np.nonzero(largest)
    if xs.size < 3:
        return 0.0, 0.0
    low, high = np.linalg.eigvalsh(np.cov(np.stack([xs, ys]).astype(np.float64)))
    elongation = float(np.sqrt(high / max(low, 1e-6)))
    return elongation, float(_ring(largest, 1).mean())


def _mirror_symmetry(img: np.ndarray) -> float:
    """Best correlation of the gradient magnitude with its left-right mirror, axis +-w/16.

    Gradients, not grey levels: a bright band in the middle of a dark frame (any vertical
    forearm) is symmetric in grey level, but its bones are not; ribs, ilia and orbits are.
    """
    g: np.ndarray = sobel(img)
    z = (g - g.mean()) / (g.std() + 1e-6)
    mirror = z[:, ::-1]
    w = z.shape[1]
    best = -1.0
    for shift in range(-(w // 8), w // 8 + 1):
        if shift >= 0:
            a, b = z[:, shift:], mirror[:, : w - shift]
        else:
            a, b = z[:, :shift], mirror[:, -shift:]
        best = max(best, float(np.mean(a * b)))
    return best


def _background_spread(img: np.ndarray, fg: np.ndarray) -> float:
    if fg.all() or not fg.any():
        return 1.0
    bg, obj = img[~fg], img[fg]
    contrast = abs(float(obj.mean()) - float(bg.mean()))
    return float(bg.std()) / max(contrast, 1e-6)
