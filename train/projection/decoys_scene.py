"""The drawing frame of the decoy renderer: body-part anatomy in its own millimetre frame.

A decoy is drawn in an anatomical frame (origin at the part's centre, x right, y down, z towards
the source) and placed on the detector by a similarity transform (shift, in-plane rotation,
left/right mirror, size). Every solid goes straight into one attenuation map with weight
mu - mu_soft where it displaces soft tissue, so a bone inside a limb replaces the tissue it
occupies instead of adding to it.

Shelled bones are written as outer x mu_cortex + inner x (mu_marrow - mu_cortex): the same
sum as `solids.shelled_tube` / `solids.shelled_ellipsoid` followed by weighting (the inner solid
lies inside the outer one, so their cortex = outer - inner), with the same inner-size rule, but
without their two full-image scratch maps per bone, which would dominate large renders.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

from train.projection.materials import MU_CANCELLOUS, MU_CORTEX, MU_FAT, MU_SOFT
from train.projection.solids import Grid, Vec3, rotation

Profile = tuple[np.ndarray, np.ndarray]  # knots along the length (0..1) and values there
Radii = float | Sequence[float] | Profile
Side = tuple[float, float, float]  # (a, b, c): keep the local points where a x + b y + c >= 0


def _profile(values: Radii) -> Profile:
    """Profile knots over a tube's length: a `Profile`, or one value, or evenly spaced values."""
    if isinstance(values, tuple) and len(values) == 2 and isinstance(values[0], np.ndarray):
        return values[0], np.asarray(values[1], np.float64)
    v = np.atleast_1d(np.asarray(values, np.float64))
    if v.size == 1:
        v = np.repeat(v, 2)
    return np.linspace(0.0, 1.0, v.size), v


def layered_tube(
    out: np.ndarray,
    grid: Grid,
    p0: tuple[float, float],
    p1: tuple[float, float],
    layers: Sequence[tuple[np.ndarray, np.ndarray, float]],
    *,
    depth_ratio: float = 1.0,
    roll_deg: float = 0.0,
    tilt_deg: float = 0.0,
    keep: Sequence[Side] = (),
) -> None:
    """`solids.tube` for several coaxial layers at once: each (knots, radii, weight) adds
    weight x its chord, as separate `tube` calls would, but over one shared pixel window.
    (A shelled bone or a limb under its fat is two tubes; the window set-up dominates small
    tubes, and ribs and phalanges are many small tubes.)"""
    (x0, y0), (x1, y1) = p0, p1
    length = math.hypot(x1 - x0, y1 - y0)
    if length < 1e-6:
        return
    rmax = max(float(np.max(r)) for _, r, _ in layers) * max(1.0, depth_ratio)
    win = grid.window(
        min(x0, x1) - rmax, min(y0, y1) - rmax, max(x0, x1) + rmax, max(y0, y1) + rmax
    )
    if win is None:
        return
    sl, xs, ys = win
    ux, uy = (x1 - x0) / length, (y1 - y0) / length
    dx, dy = xs - x0, ys - y0
    s = (dx * ux + dy * uy) / length
    across2 = (dx * -uy + dy * ux) ** 2
    t = math.radians(roll_deg)
    # The section is an ellipse (a, a x depth) turned by roll: its half width across the axis
    # is a sqrt(q) and its chord along z is k sqrt(q a^2 - across^2), as in `solids.tube`.
    q = math.cos(t) ** 2 + (depth_ratio * math.sin(t)) ** 2
    k = 2.0 * depth_ratio / q / max(math.cos(math.radians(tilt_deg)), 0.2)
    on = (s >= 0.0) & (s <= 1.0)
    acc = np.zeros(np.broadcast_shapes(s.shape), np.float32)
    for knots, radii, weight in layers:
        if len(knots) == 2 and knots[0] == 0.0 and knots[1] == 1.0:  # a straight taper: no lookup
            r0, r1 = float(radii[0]), float(radii[-1])
            a = (r0 + (r1 - r0) * np.clip(s, 0.0, 1.0)).astype(np.float32)
        else:
            a = np.interp(s, knots, radii).astype(np.float32)
        acc += (weight * k) * np.sqrt(np.maximum(q * a * a - across2, 0.0))
    acc *= on
    for ka, kb, kc in keep:  # `solids`' keep_side, any number of half-planes
        acc *= np.clip((ka * xs + kb * ys + kc) / grid.mm_per_px + 0.5, 0.0, 1.0)
    out[sl] += acc


def _cross(u: Vec3, v: Vec3) -> Vec3:
    return (u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0])


def _dot(u: Vec3, v: Vec3) -> float:
    return u[0] * v[0] + u[1] * v[1] + u[2] * v[2]


def layered_ellipsoid(
    out: np.ndarray,
    grid: Grid,
    center: Vec3,
    rot: np.ndarray,
    layers: Sequence[tuple[Vec3, float]],
    *,
    keep: Sequence[Side] = (),
) -> None:
    """`solids.ellipsoid` for concentric layers: each (semi_axes, weight) adds weight x its
    chord. The chord is evaluated as a quadratic polynomial of the pixel offset in float32
    (|q x e|^2 = |q|^2 |e|^2 - (q.e)^2), several times cheaper per pixel on large solids."""
    r = np.asarray(rot, np.float64)
    big = max(layers, key=lambda layer: max(layer[0]))[0]
    half = np.sqrt(((r[:2, :] * np.asarray(big, np.float64)[None, :]) ** 2).sum(axis=1))
    cx, cy, cz = center
    win = grid.window(cx - half[0], cy - half[1], cx + half[0], cy + half[1])
    if win is None:
        return
    sl, xs, ys = win
    dx, dy = xs - np.float32(cx), ys - np.float32(cy)
    acc = np.zeros((dy.shape[0], dx.shape[1]), np.float32)
    for semi, weight in layers:
        m = (r.T / np.asarray(semi, np.float64)[:, None]).tolist()  # detector -> unit sphere
        e = (m[0][2], m[1][2], m[2][2])
        ee = e[0] ** 2 + e[1] ** 2 + e[2] ** 2
        # q0 = a dx + b dy + c; the ray meets the sphere where ee - |q0 x e|^2 >= 0.
        a = _cross((m[0][0], m[1][0], m[2][0]), e)
        b = _cross((m[0][1], m[1][1], m[2][1]), e)
        c = _cross((-cz * e[0], -cz * e[1], -cz * e[2]), e)
        p_xx, p_yy, p_xy = _dot(a, a), _dot(b, b), 2.0 * _dot(a, b)
        p_x, p_y, p_0 = 2.0 * _dot(a, c), 2.0 * _dot(b, c), _dot(c, c) - ee
        row = np.float32(p_xx) * dx * dx + np.float32(p_x) * dx
        col = np.float32(p_yy) * dy * dy + np.float32(p_y) * dy + np.float32(p_0)
        poly = row + col + np.float32(p_xy) * dx * dy
        acc += np.float32(2.0 * weight / ee) * np.sqrt(np.maximum(-poly, 0.0))
    for ka, kb, kc in keep:  # `solids`' keep_side, any number of half-planes
        acc *= np.clip((ka * xs + kb * ys + kc) / grid.mm_per_px + 0.5, 0.0, 1.0)
    out[sl] += acc


class Scene:
    """One anatomical frame placed on the detector, drawing into a shared attenuation map."""

    def __init__(
        self,
        grid: Grid,
        out: np.ndarray,
        origin: tuple[float, float],
        angle_deg: float,
        mirror: bool,
        scale: float,
        bone_gain: float = 1.0,
    ) -> None:
        self.grid, self.out = grid, out
        # Bone's excess over soft tissue shrinks at high tube voltage (a 120 kV chest film).
        self.bone_gain = bone_gain
        self._origin, self._angle, self._mirror, self._k = origin, angle_deg, mirror, scale
        t = math.radians(angle_deg)
        self._cos, self._sin = math.cos(t), math.sin(t)
        self._m = -1.0 if mirror else 1.0
        self._rot3 = rotation(angle_deg) @ np.diag([self._m, 1.0, 1.0])

    def sub(self, x: float, y: float, angle_deg: float) -> Scene:
        """A child frame with its origin at local (x, y), turned by angle_deg (a joint)."""
        return Scene(
            self.grid,
            self.out,
            self.xy(x, y),
            self._angle + self._m * angle_deg,
            self._mirror,
            self._k,
            self.bone_gain,
        )

    def xy(self, x: float, y: float) -> tuple[float, float]:
        """Detector mm of a local point."""
        mx = self._m * x
        ox, oy = self._origin
        k = self._k
        return ox + k * (self._cos * mx - self._sin * y), oy + k * (self._sin * mx + self._cos * y)

    def _sides(self, keep: Sequence[Side]) -> list[Side]:
        return [self._side(k) for k in keep]

    def _side(self, keep: Side) -> Side:
        """A local half-plane in detector mm, with a unit normal (the ramp is one pixel)."""
        a, b, c = keep
        n = math.hypot(a, b)
        a, b, c = a / n, b / n, c / n
        # local p = M R^T (q - O) / k, so n.p = (R M n).(q - O) / k
        ma = self._m * a
        da, db = self._cos * ma - self._sin * b, self._sin * ma + self._cos * b
        ox, oy = self._origin
        return da, db, c * self._k - da * ox - db * oy

    def blob(
        self,
        mu: float,
        c: Vec3,
        axes: Vec3,
        yaw: float = 0.0,
        pitch: float = 0.0,
        roll: float = 0.0,
        *,
        keep: Sequence[Side] = (),
    ) -> None:
        """An ellipsoid adding mu per mm of chord (negative mu carves air or lung out)."""
        self._ellipsoids(c, [(axes, mu)], yaw, pitch, roll, keep)

    def _ellipsoids(
        self,
        c: Vec3,
        layers: Sequence[tuple[Vec3, float]],
        yaw: float,
        pitch: float,
        roll: float,
        keep: Sequence[Side] = (),
    ) -> None:
        k = self._k
        x, y = self.xy(c[0], c[1])
        rot = self._rot3 @ rotation(yaw, pitch, roll)
        scaled = [((a[0] * k, a[1] * k, a[2] * k), w) for a, w in layers]
        layered_ellipsoid(
            self.out, self.grid, (x, y, c[2] * k), rot, scaled, keep=self._sides(keep)
        )

    def bone(
        self,
        c: Vec3,
        axes: Vec3,
        shell: float = 1.5,
        yaw: float = 0.0,
        pitch: float = 0.0,
        roll: float = 0.0,
        *,
        cortex: float = MU_CORTEX,
        marrow: float = MU_CANCELLOUS,
    ) -> None:
        """A short bone or epiphysis: a cortical shell of `shell` mm around its marrow."""
        inner = (max(axes[0] - shell, 0.1), max(axes[1] - shell, 0.1), max(axes[2] - shell, 0.1))
        g = self.bone_gain
        self._ellipsoids(
            c, [(axes, (cortex - MU_SOFT) * g), (inner, (marrow - cortex) * g)], yaw, pitch, roll
        )

    def rod(
        self,
        mu: float,
        p0: tuple[float, float],
        p1: tuple[float, float],
        radii: Radii,
        *,
        depth: float = 1.0,
        roll: float = 0.0,
        tilt: float = 0.0,
        keep: Sequence[Side] = (),
    ) -> None:
        """A tapered elliptic cylinder from p0 to p1; `radii` evenly spaced along it."""
        s, r = _profile(radii)
        layered_tube(
            self.out,
            self.grid,
            self.xy(*p0),
            self.xy(*p1),
            [(s, r * self._k, mu)],
            depth_ratio=depth,
            roll_deg=self._m * roll,
            tilt_deg=tilt,
            keep=self._sides(keep),
        )

    def long_bone(
        self,
        p0: tuple[float, float],
        p1: tuple[float, float],
        radii: Radii,
        shell: Radii = 2.0,
        *,
        depth: float = 1.0,
        roll: float = 0.0,
        tilt: float = 0.0,
        cortex: float = MU_CORTEX,
        marrow: float = MU_CANCELLOUS,
        keep: Sequence[Side] = (),
    ) -> None:
        """A shaft: cortical tube of thickness `shell` (mm, profile) around its marrow."""
        s, r = _profile(radii)
        t = np.interp(s, *_profile(shell))
        inner = np.maximum(r - t, 0.05)
        g, k = self.bone_gain, self._k
        layered_tube(
            self.out,
            self.grid,
            self.xy(*p0),
            self.xy(*p1),
            [(s, r * k, (cortex - MU_SOFT) * g), (s, inner * k, (marrow - cortex) * g)],
            depth_ratio=depth,
            roll_deg=self._m * roll,
            tilt_deg=tilt,
            keep=self._sides(keep),
        )

    def limb(
        self,
        p0: tuple[float, float],
        p1: tuple[float, float],
        radii: Radii,
        *,
        fat: float = 5.0,
        depth: float = 1.0,
        keep: Sequence[Side] = (),
    ) -> None:
        """Soft tissue of a limb segment under a subcutaneous fat layer `fat` mm thick;
        `keep` cuts it along lines (a joint's mitre, see `mitre`)."""
        s, r = _profile(radii)
        k = self._k
        inner = np.maximum(r - fat, 0.5) * k
        layered_tube(
            self.out,
            self.grid,
            self.xy(*p0),
            self.xy(*p1),
            [(s, r * k, MU_FAT), (s, inner, MU_SOFT - MU_FAT)],
            depth_ratio=depth,
            keep=self._sides(keep),
        )

    def body(self, c: Vec3, axes: Vec3, *, fat: float = 8.0) -> None:
        """A trunk or head: soft tissue ellipsoid under a fat layer."""
        inner = (axes[0] - fat, axes[1] - fat, axes[2] - fat)
        self._ellipsoids(c, [(axes, MU_FAT), (inner, MU_SOFT - MU_FAT)], 0.0, 0.0, 0.0)

    def chain(
        self,
        points: Sequence[Vec3],
        radii: Radii,
        shell: float = 1.5,
        *,
        depth: float = 1.0,
    ) -> None:
        """A curved bone (rib, clavicle, mandible) as shelled tubes through 3-D points, mitred
        at each bend so that they meet without gap or overlap; each segment's tilt out of the
        detector plane lengthens its chord as in 3-D (to at most 2x: a segment seen end-on would
        be a dense stub, where a real bone spreads that density over its curve)."""
        n = len(points) - 1
        rs = np.interp(np.linspace(0.0, 1.0, n + 1), *_profile(radii))
        dirs = []
        for (x0, y0, _), (x1, y1, _) in itertools.pairwise(points):
            length = max(math.hypot(x1 - x0, y1 - y0), 1e-6)
            dirs.append(((x1 - x0) / length, (y1 - y0) / length))
        bisectors: list[tuple[float, float] | None] = [None]
        for (ax, ay), (bx, by) in itertools.pairwise(dirs):
            norm = math.hypot(ax + bx, ay + by)
            bisectors.append(((ax + bx) / norm, (ay + by) / norm) if norm > 1e-3 else None)
        bisectors.append(None)
        for i in range(n):
            (x0, y0, z0), (x1, y1, z1) = points[i], points[i + 1]
            (ux, uy), reach = dirs[i], float(max(rs[i], rs[i + 1]))
            tilt = min(math.degrees(math.atan2(abs(z1 - z0), math.hypot(x1 - x0, y1 - y0))), 60.0)
            keep: list[Side] = []
            b = bisectors[i]
            if b is not None:
                keep.append((b[0], b[1], -(b[0] * x0 + b[1] * y0)))
                x0, y0 = x0 - ux * reach, y0 - uy * reach
            b = bisectors[i + 1]
            if b is not None:
                keep.append((-b[0], -b[1], b[0] * x1 + b[1] * y1))
                x1, y1 = x1 + ux * reach, y1 + uy * reach
            self.long_bone(
                (x0, y0), (x1, y1), (rs[i], rs[i + 1]), shell, depth=depth, tilt=tilt, keep=keep
            )


def shaft(
    end0: float,
    mid: float,
    end1: float,
    p0: float = 6.0,
    p1: float = 6.0,
    *,
    round0: float = 0.0,
    round1: float = 0.0,
) -> Profile:
    """A long bone's radius (or cortical thickness) profile: `mid` along the shaft, curving to
    `end0` / `end1` at the ends (a metaphysis's flare: the higher the power, the shorter);
    `round0` / `round1` (fractions of the length) close an end in a rounded cap."""
    caps = [np.linspace(0.0, 1.0, 9) ** 2 * c for c in (round0, round1) if c > 0]
    s = np.linspace(0.0, 1.0, 25)
    if round0 > 0:
        s = np.concatenate([s, caps[0]])
    if round1 > 0:
        s = np.concatenate([s, 1.0 - caps[-1]])
    s = np.unique(s)
    r = mid + (end0 - mid) * (1.0 - s) ** p0 + (end1 - mid) * s**p1
    for c, u in ((round0, s), (round1, 1.0 - s)):
        if c > 0:
            r = r * np.sqrt(np.clip(1.0 - ((c - np.minimum(u, c)) / c) ** 2, 0.0, 1.0))
    return s, r


def mitre(
    joint: tuple[float, float], angle_deg: float, radius: float
) -> tuple[tuple[Side, Side], tuple[Side, Side]]:
    """The half-planes that join a limb running down (+y) into `joint` with the next segment,
    drawn in `Scene.sub(*joint, angle_deg)`: one keeps the upper side of the bisector, the
    other (in the child's own frame) the lower, so their soft tissue meets without gap or seam;
    a second cut trims the outer corner of the bend to `radius` from the joint."""
    a = math.radians(angle_deg)
    bx, by = -math.sin(a), 1.0 + math.cos(a)  # sum of the two axis directions
    n = math.hypot(bx, by)
    bx, by = bx / n, by / n
    # The outer corner of the bend lies along the mitre line, away from the two axes.
    ox, oy = by, -bx
    if ox * -math.sin(a) + oy * (math.cos(a) - 1.0) > 0.0:
        ox, oy = -ox, -oy
    jx, jy = joint
    upper = (-bx, -by, bx * jx + by * jy), (-ox, -oy, ox * jx + oy * jy + radius)
    c, s = math.cos(a), math.sin(a)
    lower = (
        (c * bx + s * by, -s * bx + c * by, 0.0),
        (-(c * ox + s * oy), -(-s * ox + c * oy), radius),
    )
    return upper, lower
