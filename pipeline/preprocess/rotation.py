"""Rotation alignment (thesis Section 4.2.2.4, Equation 4.2), with the fingers put at the top.

Binarise, close and open, PCA of the foreground coordinates: the first principal component is the
arm's axis, and turning the image by its angle makes the arm vertical. The thesis stopped there,
leaving half the arms upside down; here the end with the fingers is found (a cross-section
through the fingers crosses several separate bands, one through the forearm crosses one) and put
at the top. (Whether an end touches the image border was tried as a second cue and rejected:
fingertips leave the image about as often as the forearm does.)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import morphology

from pipeline.preprocess.transforms import Affine, warp


@dataclass(frozen=True)
class RotationParams:
    """Morphology sizes (reduced pixels) and the share of the arm's length each end covers."""

    closing_radius: int = 2
    opening_radius: int = 2
    end_fraction: float = 0.3
    proximal_fraction: float = 0.6
    """Share of the arm, from the forearm end, on which the axis is refined."""
    min_proximal_elongation: float = 2.0
    """The refined axis is used only when that end is clearly elongated."""


@dataclass(frozen=True)
class Alignment:
    """How to turn a part so the arm is vertical with the fingers up."""

    rotation_deg: float
    """Counter-clockwise turn on screen applied to the image (includes any 180-degree flip)."""
    axis_angle_deg: float
    """The arm axis found by PCA, as a counter-clockwise angle from vertical, in (-90, 90]."""
    fingers_flipped: bool
    """True when the PCA alignment alone would have left the fingers at the bottom."""
    elongation: float
    """Ratio of the principal variances (1 = round, large = elongated): confidence in the axis."""
    finger_score: float
    """Positive: fingers at the top after the PCA turn alone."""


def align(mask: np.ndarray, params: RotationParams = RotationParams()) -> Alignment:
    """The alignment of the part in `mask` (reduced grid, True on the part)."""
    clean = ndimage.binary_closing(mask, morphology.disk(params.closing_radius))
    clean = ndimage.binary_opening(clean, morphology.disk(params.opening_radius))
    if clean.sum() < 10:
        clean = mask
    ys, xs = np.nonzero(clean)
    coords = np.stack([xs, ys], axis=1).astype(np.float64)
    centre = coords.mean(axis=0)
    phi, elongation, axis = _principal_axis(coords)
    score = _finger_score(clean, centre, -phi, params)
    flipped = score < 0
    # The spread fingers and the thumb pull the whole-arm axis off by several degrees; the
    # forearm and wrist end is a straight band, so refine the axis on that end alone.
    along = (coords - centre) @ axis * (1.0 if flipped else -1.0)  # grows towards the forearm
    proximal = coords[along >= np.quantile(along, 1.0 - params.proximal_fraction)]
    if len(proximal) >= 50:
        refined, proximal_elongation, _ = _principal_axis(proximal)
        if proximal_elongation >= params.min_proximal_elongation:
            phi = refined
    rotation = -phi + (180.0 if flipped else 0.0)
    rotation = (rotation + 180.0) % 360.0 - 180.0
    return Alignment(
        rotation_deg=rotation,
        axis_angle_deg=phi,
        fingers_flipped=flipped,
        elongation=elongation,
        finger_score=score,
    )


def _principal_axis(coords: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Thesis Eq. 4.2 as an angle: the first principal component as a counter-clockwise angle
    from vertical in [-90, 90), the ratio of the variances, and the unit axis (x, y)."""
    centred = coords - coords.mean(axis=0)
    values, vectors = np.linalg.eigh(np.cov(centred.T))
    ex, ey = vectors[:, 1]  # the largest eigenvalue's vector
    # e = (-sin(phi), -cos(phi)) is "up" turned counter-clockwise by phi on screen.
    phi = math.degrees(math.atan2(-ex, -ey))
    phi = (phi + 90.0) % 180.0 - 90.0  # an axis, not a direction
    axis = np.array([-math.sin(math.radians(phi)), -math.cos(math.radians(phi))])
    return phi, float(values[1] / max(values[0], 1e-9)), axis


def turned_about(centre: tuple[float, float], degrees: float) -> Affine:
    """Output frame = input turned `degrees` CCW on screen about `centre`, origin at `centre`."""
    return Affine.translation(*centre).then(Affine.rotation(degrees))


def _finger_score(
    mask: np.ndarray, centre: np.ndarray, turn_deg: float, params: RotationParams
) -> float:
    """Fingers-at-top evidence after turning `mask` by `turn_deg` (positive: fingers up)."""
    side = math.ceil(math.hypot(*mask.shape)) + 2
    half = (side - 1) / 2.0
    to_mask = turned_about((float(centre[0]), float(centre[1])), turn_deg).then(
        Affine.translation(-half, -half)
    )
    upright = warp(mask.astype(np.float32), to_mask, (side, side), order=0) > 0.5
    rows = np.nonzero(upright.any(axis=1))[0]
    if rows.size < 4:
        return 0.0
    top, bottom = rows[0], rows[-1]
    span = max(1, int((bottom - top + 1) * params.end_fraction))
    runs = np.count_nonzero(np.diff(upright.astype(np.int8), axis=1) == 1, axis=1)
    top_runs = float(runs[top : top + span].mean())
    bottom_runs = float(runs[bottom - span + 1 : bottom + 1].mean())
    return top_runs - bottom_runs
