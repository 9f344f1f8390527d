"""Analytic line integrals of 3-D solids along parallel rays, on a detector pixel grid.

This is the projection renderer's only way of making anatomy: every structure is a solid in
3-D (millimetres), and a detector pixel at (x, y) receives the length of the ray (x, y, z),
z in (-inf, inf), inside the solid. Chord lengths are closed-form (a quadric per ray), so a
bone's projection has the soft, thickness-dependent edges of a real radiograph rather than a
painted outline, and overlapping bones add as they do on film.

Coordinates: x to the right and y down on the detector, in mm from the image's top-left pixel
centre; z towards the source. A `Grid` maps mm to pixels. Every primitive touches only the
pixel window that covers its own projected extent, which keeps full-size images affordable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Vec3 = tuple[float, float, float]


@dataclass(frozen=True)
class Grid:
    """The detector: shape in pixels and pixel pitch in mm."""

    height: int
    width: int
    mm_per_px: float

    def window(
        self, x0: float, y0: float, x1: float, y1: float
    ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Pixel window covering the mm box, with the mm coordinates of its pixel centres."""
        s = self.mm_per_px
        c0, c1 = max(math.floor(x0 / s), 0), min(math.ceil(x1 / s) + 1, self.width)
        r0, r1 = max(math.floor(y0 / s), 0), min(math.ceil(y1 / s) + 1, self.height)
        if c0 >= c1 or r0 >= r1:
            return None
        xs = (np.arange(c0, c1, dtype=np.float32) * s)[None, :]
        ys = (np.arange(r0, r1, dtype=np.float32) * s)[:, None]
        return (slice(r0, r1), slice(c0, c1)), xs, ys

    def zeros(self) -> np.ndarray:
        """An empty line-integral map (mm of material per pixel)."""
        return np.zeros((self.height, self.width), np.float32)


def rotation(yaw_deg: float = 0.0, pitch_deg: float = 0.0, roll_deg: float = 0.0) -> np.ndarray:
    """Rotation matrix: roll about y (the long axis), then pitch about x, then yaw about z."""
    a, b, c = (math.radians(v) for v in (yaw_deg, pitch_deg, roll_deg))
    rz = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, math.cos(b), -math.sin(b)], [0, math.sin(b), math.cos(b)]])
    ry = np.array([[math.cos(c), 0, math.sin(c)], [0, 1, 0], [-math.sin(c), 0, math.cos(c)]])
    out: np.ndarray = rz @ rx @ ry
    return out


def ellipsoid(
    out: np.ndarray,
    grid: Grid,
    center: Vec3,
    semi_axes: Vec3,
    rot: np.ndarray,
    weight: float = 1.0,
    *,
    keep_side: tuple[float, float, float] | None = None,
) -> None:
    """Add `weight` x the chord length through an ellipsoid to `out`, in place.

    `rot` maps the ellipsoid's own axes to detector axes. `keep_side` (a, b, c) keeps only the
    pixels where a*x + b*y + c >= 0 (x, y in mm): how a fragment of a cut bone is drawn.
    """
    s = np.asarray(semi_axes, np.float64)
    r = np.asarray(rot, np.float64)
    half = np.sqrt(((r[:2, :] * s[None, :]) ** 2).sum(axis=1))  # projected half extents x, y
    cx, cy, cz = center
    win = grid.window(cx - half[0], cy - half[1], cx + half[0], cy + half[1])
    if win is None:
        return
    sl, xs, ys = win
    m = r.T / s[:, None]  # detector -> unit-sphere coordinates
    e = m[:, 2]
    ee = float(e @ e)
    q0 = [m[i, 0] * (xs - cx) + m[i, 1] * (ys - cy) + m[i, 2] * (-cz) for i in range(3)]
    qe = q0[0] * e[0] + q0[1] * e[1] + q0[2] * e[2]
    qq = q0[0] ** 2 + q0[1] ** 2 + q0[2] ** 2
    disc = qe * qe - ee * (qq - 1.0)
    chord = (2.0 / ee) * np.sqrt(np.maximum(disc, 0.0))
    if keep_side is not None:
        a, b, c = keep_side
        chord = chord * _side_weight(a * xs + b * ys + c, grid.mm_per_px)
    out[sl] += (weight * chord).astype(np.float32)


def tube(
    out: np.ndarray,
    grid: Grid,
    p0: tuple[float, float],
    p1: tuple[float, float],
    profile_s: np.ndarray,
    profile_r: np.ndarray,
    weight: float = 1.0,
    *,
    depth_ratio: float = 1.0,
    roll_deg: float = 0.0,
    tilt_deg: float = 0.0,
    keep_side: tuple[float, float, float] | None = None,
    shift: tuple[float, float] = (0.0, 0.0),
) -> None:
    """Add the chord length through a tapered elliptic cylinder lying along p0 -> p1 (mm).

    The radius across the axis is `np.interp(s, profile_s, profile_r)` at fraction s of the
    length (outside [0, 1] the tube is absent); the depth semi-axis is radius x depth_ratio and
    the section is turned by roll_deg about the axis (a pronated forearm). tilt_deg is the axis's
    angle out of the detector plane: the chord lengthens by 1/cos. `shift` moves the whole
    tube by (dx, dy) mm, which with `keep_side` draws a displaced fragment.
    """
    (x0, y0), (x1, y1) = (p0[0] + shift[0], p0[1] + shift[1]), (p1[0] + shift[0], p1[1] + shift[1])
    length = math.hypot(x1 - x0, y1 - y0)
    if length < 1e-6:
        return
    rmax = float(np.max(profile_r)) * max(1.0, depth_ratio)
    win = grid.window(
        min(x0, x1) - rmax, min(y0, y1) - rmax, max(x0, x1) + rmax, max(y0, y1) + rmax
    )
    if win is None:
        return
    sl, xs, ys = win
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    along = (xs - x0) * ux + (ys - y0) * uy
    across = (xs - x0) * -uy + (ys - y0) * ux
    s = along / length
    a = np.interp(s, profile_s, profile_r).astype(np.float32)
    b = a * depth_ratio
    t = math.radians(roll_deg)
    w2 = (a * math.cos(t)) ** 2 + (b * math.sin(t)) ** 2
    inside = (s >= 0.0) & (s <= 1.0) & (w2 > across * across)
    chord = np.where(
        inside, 2.0 * a * b / np.maximum(w2, 1e-6) * np.sqrt(np.maximum(w2 - across**2, 0.0)), 0.0
    )
    chord = chord / max(math.cos(math.radians(tilt_deg)), 0.2)
    if keep_side is not None:
        ka, kb, kc = keep_side
        chord = chord * _side_weight(ka * xs + kb * ys + kc, grid.mm_per_px)
    out[sl] += (weight * chord).astype(np.float32)


def shelled_tube(
    cortex: np.ndarray,
    marrow: np.ndarray,
    grid: Grid,
    p0: tuple[float, float],
    p1: tuple[float, float],
    profile_s: np.ndarray,
    profile_r: np.ndarray,
    thickness: np.ndarray,
    **kwargs: object,
) -> None:
    """A long bone: the cortical shell (outer minus inner chord) into `cortex`, the medullary
    cavity into `marrow`. `thickness` is the cortical thickness (mm) along the same profile."""
    inner_r = np.maximum(profile_r - thickness, 0.05)
    outer = np.zeros_like(cortex)
    inner = np.zeros_like(marrow)
    tube(outer, grid, p0, p1, profile_s, profile_r, **kwargs)  # type: ignore[arg-type]
    tube(inner, grid, p0, p1, profile_s, inner_r, **kwargs)  # type: ignore[arg-type]
    cortex += np.maximum(outer - inner, 0.0)
    marrow += inner


def shelled_ellipsoid(
    cortex: np.ndarray,
    marrow: np.ndarray,
    grid: Grid,
    center: Vec3,
    semi_axes: Vec3,
    rot: np.ndarray,
    thickness: float,
    **kwargs: object,
) -> None:
    """A short bone (carpal, epiphysis): a thin cortical shell around cancellous bone."""
    inner_axes = tuple(max(v - thickness, 0.1) for v in semi_axes)
    outer = np.zeros_like(cortex)
    inner = np.zeros_like(marrow)
    ellipsoid(outer, grid, center, semi_axes, rot, **kwargs)  # type: ignore[arg-type]
    ellipsoid(inner, grid, center, inner_axes, rot, **kwargs)  # type: ignore[arg-type]
    cortex += np.maximum(outer - inner, 0.0)
    marrow += inner


def slab_gap(
    maps: tuple[np.ndarray, ...],
    grid: Grid,
    p0: tuple[float, float],
    p1: tuple[float, float],
    width_mm: float,
    depth: float,
) -> None:
    """Remove a fraction `depth` of material within a band of `width_mm` around the segment
    p0 -> p1 (a fracture gap or a physis seen edge-on), with partial-volume edges, in place."""
    pad = width_mm + 2 * grid.mm_per_px
    win = grid.window(
        min(p0[0], p1[0]) - pad,
        min(p0[1], p1[1]) - pad,
        max(p0[0], p1[0]) + pad,
        max(p0[1], p1[1]) + pad,
    )
    if win is None:
        return
    sl, xs, ys = win
    length = max(math.hypot(p1[0] - p0[0], p1[1] - p0[1]), 1e-6)
    ux, uy = (p1[0] - p0[0]) / length, (p1[1] - p0[1]) / length
    along = (xs - p0[0]) * ux + (ys - p0[1]) * uy
    dist = np.abs((xs - p0[0]) * -uy + (ys - p0[1]) * ux)
    px = grid.mm_per_px
    # Coverage of each pixel by the band (a box filter of the pixel's width): sub-pixel gaps
    # darken a pixel in proportion to the share of it that they cover, as a detector would.
    cover = np.clip((width_mm / 2 + px / 2 - dist) / px, 0.0, 1.0) * min(width_mm / px, 1.0)
    ends = np.clip(np.minimum(along + px / 2, length - along + px / 2) / px, 0.0, 1.0)
    keep = 1.0 - depth * cover * ends
    for m in maps:
        m[sl] *= keep.astype(np.float32)


def _side_weight(signed: np.ndarray, px: float) -> np.ndarray:
    """Soft half-plane indicator: 1 on the kept side, 0 beyond, a one-pixel ramp between."""
    return np.clip(signed / px + 0.5, 0.0, 1.0)
