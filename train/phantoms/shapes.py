"""Vectorised rasterisation primitives for the synthetic radiograph phantoms.

Shapes accumulate into float32 *density* maps (line integrals of attenuation) so that overlapping
structures add up as on a projection radiograph; the renderer maps density to display intensity
at the very end. Every primitive only touches the pixel window covering its own extent, which is
what keeps full-size renders fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Point = tuple[float, float]
Window = tuple[tuple[slice, slice], np.ndarray, np.ndarray]


@dataclass(frozen=True)
class Placement:
    """Affine map from a local frame (u across, v along the axis, phantom units) to pixels."""

    cx: float
    cy: float
    dx: float  # pixel direction of +v
    dy: float
    nx: float  # pixel direction of +u
    ny: float
    scale: float  # pixels per phantom unit

    @classmethod
    def make(
        cls, cx: float, cy: float, angle_deg: float, *, flip: bool, mirror: bool, scale: float
    ) -> Placement:
        """+v points up rotated counter-clockwise (on screen) by angle_deg, reversed if flip."""
        t = math.radians(angle_deg)
        dx, dy = -math.sin(t), -math.cos(t)
        if flip:
            dx, dy = -dx, -dy
        nx, ny = -dy, dx
        if mirror:
            nx, ny = -nx, -ny
        return cls(cx, cy, dx, dy, nx, ny, scale)

    def to_pixel(self, u: float, v: float) -> Point:
        """Local point -> (x, y) in pixel-centre coordinates."""
        s = self.scale
        return self.cx + s * (u * self.nx + v * self.dx), self.cy + s * (u * self.ny + v * self.dy)

    def window(
        self, shape: tuple[int, int], box: tuple[float, float, float, float]
    ) -> Window | None:
        """Pixel window covering the local box (u0, v0, u1, v1) plus local coords of its pixels."""
        u0, v0, u1, v1 = box
        pts = [self.to_pixel(u, v) for u in (u0, u1) for v in (v0, v1)]
        xs = [p[0] for p in pts]
        ys = [p[1] for p in pts]
        x0, x1 = max(math.floor(min(xs)), 0), min(math.ceil(max(xs)) + 1, shape[1])
        y0, y1 = max(math.floor(min(ys)), 0), min(math.ceil(max(ys)) + 1, shape[0])
        if x0 >= x1 or y0 >= y1:
            return None
        inv = 1.0 / self.scale
        rx = (np.arange(x0, x1, dtype=np.float32) - np.float32(self.cx))[None, :]
        ry = (np.arange(y0, y1, dtype=np.float32) - np.float32(self.cy))[:, None]
        u = (rx * self.nx + ry * self.ny) * inv
        v = (rx * self.dx + ry * self.dy) * inv
        return (slice(y0, y1), slice(x0, x1)), u, v


@dataclass(frozen=True)
class Cut:
    """A fracture line: a lucent band plus a step-off of the fragment on the normal's side."""

    p0: Point
    p1: Point
    width: float  # gaussian half-width of the lucent band, phantom units
    depth: float  # fraction of bone density removed on the line
    shift: Point  # (du, dv) displacement of the fragment on the positive side

    def _frame(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        (u0, v0), (u1, v1) = self.p0, self.p1
        length = math.hypot(u1 - u0, v1 - v0)
        eu, ev = (u1 - u0) / length, (v1 - v0) / length
        du, dv = u - u0, v - v0
        return du * eu + dv * ev, dv * eu - du * ev, length

    def displace(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Coordinates at which to sample the bone so the fragment appears shifted."""
        _, side, _ = self._frame(u, v)
        pos = (side > 0).astype(np.float32)
        return u - self.shift[0] * pos, v - self.shift[1] * pos

    def lucency(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """Multiplicative factor (<= 1) darkening bone along the line."""
        along, side, length = self._frame(u, v)
        ends = np.clip(np.minimum(along, length - along) / (2 * self.width) + 0.5, 0, 1)
        out: np.ndarray = 1 - self.depth * ends * np.exp(-((side / self.width) ** 2))
        return out


@dataclass(frozen=True)
class Bulge:
    """Torus (buckle) deformity: outward cortical bulge and a faint dense band across the bone."""

    at: float  # distance along the bone from p0
    amplitude: float
    extent: float
    sides: int  # -1, +1: one side; 0: both
    band: float  # extra density of the sclerotic band


def bone_profile(rho2: np.ndarray, cortex: float, wc: float, wm: float) -> np.ndarray:
    """Projected density of a hollow tube/shell: brightest where rays graze the cortex."""
    outer = np.sqrt(np.maximum(1 - rho2, 0))
    ri = 1 - cortex
    inner = np.sqrt(np.maximum(ri * ri - rho2, 0))
    out: np.ndarray = wc * (outer - inner) + wm * inner
    return out


def tube(
    dens: np.ndarray,
    pl: Placement,
    p0: Point,
    p1: Point,
    r0: float,
    r1: float,
    *,
    knobs: Point = (0.0, 0.0),
    knob_len: float | None = None,
    slant: float = 0.0,
    cortex: float = 0.25,
    wc: float = 2.7,
    wm: float = 0.3,
    cut: Cut | None = None,
    bulge: Bulge | None = None,
) -> None:
    """Long bone from p0 to p1 with linearly varying radius, epiphyseal knobs and rounded ends.

    slant tilts the p1 end plate (the end moves by slant * signed distance from the axis).
    """
    (u0, v0), (u1, v1) = p0, p1
    length = math.hypot(u1 - u0, v1 - v0)
    eu, ev = (u1 - u0) / length, (v1 - v0) / length
    pad = (
        max(r0, r1)
        + max(knobs)
        + (bulge.amplitude if bulge else 0)
        + abs(slant) * 20
        + 2 / pl.scale
    )
    box = (min(u0, u1) - pad, min(v0, v1) - pad, max(u0, u1) + pad, max(v0, v1) + pad)
    win = pl.window(dens.shape, box)
    if win is None:
        return
    sl, u, v = win
    uu, vv = cut.displace(u, v) if cut else (u, v)
    du, dv = uu - u0, vv - v0
    a = du * eu + dv * ev
    t = dv * eu - du * ev
    s = np.clip(a / length, 0, 1)
    kl = knob_len or 2.2 * max(r0, r1)
    ac = s * length
    r = r0 + (r1 - r0) * s
    if knobs[0]:
        r = r + knobs[0] * np.exp(-((ac / kl) ** 2))
    if knobs[1]:
        r = r + knobs[1] * np.exp(-(((length - ac) / kl) ** 2))
    if bulge:
        side = 1.0 if bulge.sides == 0 else (t * bulge.sides > 0)
        r = r + bulge.amplitude * side * np.exp(-(((ac - bulge.at) / bulge.extent) ** 2))
    end = length + slant * t
    beyond = np.maximum(-a, 0) + np.maximum(a - end, 0)
    rho2 = (t * t + beyond * beyond) / (r * r)
    d = bone_profile(rho2, cortex, wc, wm)
    if bulge:
        inside = np.sqrt(np.maximum(1 - rho2, 0))
        d = d + bulge.band * inside * np.exp(-(((ac - bulge.at) / (0.35 * bulge.extent)) ** 2))
    if cut:
        d = d * cut.lucency(u, v)
    dens[sl] += d


def _ellipse_rho2(
    u: np.ndarray, v: np.ndarray, c: Point, a: float, b: float, ang_deg: float
) -> np.ndarray:
    ca, sa = math.cos(math.radians(ang_deg)), math.sin(math.radians(ang_deg))
    du, dv = u - c[0], v - c[1]
    x = du * ca + dv * sa
    y = dv * ca - du * sa
    return (x / a) ** 2 + (y / b) ** 2


def ellipse_bone(
    dens: np.ndarray,
    pl: Placement,
    c: Point,
    a: float,
    b: float,
    ang_deg: float = 0.0,
    *,
    cortex: float = 0.22,
    wc: float = 2.4,
    wm: float = 0.35,
    cut: Cut | None = None,
) -> None:
    """Rounded (carpal-like) bone: an elliptical shell, semi-axis a along ang_deg."""
    m = max(a, b) + 2 / pl.scale
    win = pl.window(dens.shape, (c[0] - m, c[1] - m, c[0] + m, c[1] + m))
    if win is None:
        return
    sl, u, v = win
    uu, vv = cut.displace(u, v) if cut else (u, v)
    d = bone_profile(_ellipse_rho2(uu, vv, c, a, b, ang_deg), cortex, wc, wm)
    if cut:
        d = d * cut.lucency(u, v)
    dens[sl] += d


def blob(
    dens: np.ndarray, pl: Placement, c: Point, a: float, b: float, ang_deg: float, weight: float
) -> None:
    """Solid ellipsoid (sqrt profile) added with weight (negative for air spaces)."""
    m = max(a, b) + 2 / pl.scale
    win = pl.window(dens.shape, (c[0] - m, c[1] - m, c[0] + m, c[1] + m))
    if win is None:
        return
    sl, u, v = win
    dens[sl] += weight * np.sqrt(np.maximum(1 - _ellipse_rho2(u, v, c, a, b, ang_deg), 0))


def soft_tube(
    tis: np.ndarray, pl: Placement, p0: Point, p1: Point, r0: float, r1: float, weight: float
) -> None:
    """Soft-tissue capsule merged into tis by maximum (a union of limb segments)."""
    (u0, v0), (u1, v1) = p0, p1
    length = math.hypot(u1 - u0, v1 - v0)
    eu, ev = (u1 - u0) / length, (v1 - v0) / length
    pad = max(r0, r1) + 2 / pl.scale
    box = (min(u0, u1) - pad, min(v0, v1) - pad, max(u0, u1) + pad, max(v0, v1) + pad)
    win = pl.window(tis.shape, box)
    if win is None:
        return
    sl, u, v = win
    du, dv = u - u0, v - v0
    a = du * eu + dv * ev
    t = dv * eu - du * ev
    s = np.clip(a / length, 0, 1)
    r = r0 + (r1 - r0) * s
    beyond = np.maximum(-a, 0) + np.maximum(a - length, 0)
    prof = np.sqrt(np.maximum(1 - (t * t + beyond * beyond) / (r * r), 0))
    np.maximum(tis[sl], weight * prof, out=tis[sl])


def plate(
    dens: np.ndarray,
    pl: Placement,
    c: Point,
    half_u: float,
    half_v: float,
    value: float,
    *,
    disc: bool = False,
) -> None:
    """Flat-density rectangle (or ellipse if disc), anti-aliased over about one pixel: metal."""
    m = max(half_u, half_v) + 2 / pl.scale
    win = pl.window(dens.shape, (c[0] - m, c[1] - m, c[0] + m, c[1] + m))
    if win is None:
        return
    sl, u, v = win
    x, y = np.abs(u - c[0]) / half_u, np.abs(v - c[1]) / half_v
    rho = np.sqrt(x * x + y * y) if disc else np.maximum(x, y)
    edge_px = min(half_u, half_v) * pl.scale
    dens[sl] += value * np.clip((1 - rho) * edge_px + 0.5, 0, 1)


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Unit-variance gaussian random field with correlation length ~sigma pixels."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    out: np.ndarray = f / max(float(f.std()), 1e-6)
    return out
