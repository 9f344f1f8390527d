"""Deterministic renderer of plausible synthetic radiographs: wrists plus non-wrist decoys.

The wrist phantom lives in an arm-local frame measured in millimetre-like units: u runs across
the arm (negative = radial/thumb side before mirroring), v along it with the radiocarpal joint at
v = 0 and the fingers towards +v. Every output pixel is mapped back into that frame, so rotation,
flipping and mirroring cost nothing and the ground truth (boxes, fracture lines) is transformed
with exactly the same affine map as the image. Anatomy accumulates as attenuation density and is
converted to display intensity once: overlapping bones brighten as on a real projection.

Output images are float32 in [0, 1], display space (dark background, bright bone). No I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from train.phantoms import confounders as cf
from train.phantoms.shapes import (
    Bulge,
    Cut,
    Placement,
    ellipse_bone,
    plate,
    smooth_field,
    soft_tube,
    tube,
)

BODY_PARTS = ("wrist", "chest", "pelvis", "skull")
VIEWS = ("PA", "LAT")
FRACTURE_KINDS = ("transverse", "oblique", "buckle", "scaphoid")
LAYOUTS = ("single", "side_by_side", "joined")

_WORK_LONG = 640  # anatomy is rasterised at most at this long side, then upscaled
_HAND_LEN = 205.0  # radiocarpal joint to fingertip skin, phantom units
Pt = tuple[float, float]
Line = tuple[Pt, Pt]
Box = tuple[int, int, int, int]
_Ray = tuple[Pt, Pt, float]  # metacarpal base, head, radius

_COMMON_SIZES = ((2500, 3000), (2048, 2500), (1800, 2400), (500, 500))  # (cols, rows)


@dataclass(frozen=True)
class Fracture:
    """A fracture visible in the view."""

    kind: str  # "transverse" | "oblique" | "buckle" | "scaphoid"
    subtle: bool  # a faint one


@dataclass(frozen=True)
class ViewSpec:
    """Everything that determines a rendered view, apart from the random generator."""

    body_part: str
    view: str
    height: int
    width: int
    angle_deg: float
    fingers_down: bool
    fracture: Fracture | None
    implant: bool
    cast: bool
    marker: str | None
    ruler: bool
    frame: str | None
    parts: int
    layout: str
    specks: int
    exposure: float
    noise: float
    blur: float
    heel: float
    mirror: bool = False  # render the other hand (mirror image across the arm axis)


@dataclass(frozen=True)
class PartTruth:
    """Ground truth of one rendered arm, in output pixel coordinates."""

    bbox: tuple[int, int, int, int]
    angle_deg: float
    fingers_down: bool
    fracture_line: tuple[tuple[float, float], tuple[float, float]] | None


@dataclass(frozen=True)
class RenderedView:
    """A rendered image plus its per-part ground truth (empty for non-wrist body parts)."""

    image: np.ndarray
    parts: tuple[PartTruth, ...]


@dataclass(frozen=True)
class _Arm:
    angle: float
    flip: bool
    mirror: bool
    fracture: Fracture | None


@dataclass(frozen=True)
class _ArmLayer:
    dens: np.ndarray  # bone, metal and plaster density
    tissue: np.ndarray  # soft-tissue density (its support is the arm's foreground)
    line: tuple[tuple[float, float], tuple[float, float]] | None  # work-pixel coordinates


# ---------------------------------------------------------------------------------------------
# Wrist geometry. Carpals: (u, v, semi-axis a, semi-axis b, angle of a in degrees).
_PA_CARPALS = {
    "scaphoid": (-15.0, 9.0, 10.0, 5.5, 55.0),
    "lunate": (-2.5, 7.0, 7.0, 6.5, 0.0),
    "triquetrum": (8.5, 9.0, 6.0, 5.5, -20.0),
    "pisiform": (12.0, 11.0, 4.5, 4.5, 0.0),
    "trapezium": (-20.0, 24.0, 6.5, 6.0, 30.0),
    "trapezoid": (-10.5, 27.0, 5.0, 5.5, 0.0),
    "capitate": (-1.5, 25.0, 6.0, 9.0, 0.0),
    "hamate": (9.0, 24.0, 6.5, 8.0, -10.0),
}
_LAT_CARPALS = {
    "scaphoid": (-5.0, 10.0, 9.0, 5.0, 70.0),
    "lunate": (0.5, 7.0, 6.5, 6.0, 0.0),
    "triquetrum": (3.5, 10.0, 5.5, 5.0, 10.0),
    "pisiform": (-8.5, 13.0, 4.0, 4.0, 0.0),
    "trapezium": (-8.0, 23.0, 6.0, 5.5, 40.0),
    "trapezoid": (-3.0, 26.0, 5.0, 5.0, 0.0),
    "capitate": (1.0, 25.0, 5.5, 9.0, 0.0),
    "hamate": (4.0, 24.0, 5.5, 7.5, 0.0),
}
# Metacarpals 1-5: base, head, radius. Then phalanx lengths per finger (thumb has two).
_PA_METACARPALS = (
    ((-20.0, 30.0), (-37.0, 66.0), 4.4),
    ((-11.0, 34.0), (-16.0, 95.0), 3.9),
    ((-1.5, 35.0), (-2.0, 98.0), 3.9),
    ((8.0, 33.0), (11.0, 93.0), 3.5),
    ((15.0, 31.0), (22.0, 85.0), 3.4),
)
_LAT_METACARPALS = (
    ((-8.0, 28.0), (-24.0, 64.0), 4.4),
    ((-2.0, 34.0), (-3.5, 95.0), 3.9),
    ((0.0, 35.0), (-0.5, 98.0), 3.9),
    ((2.0, 33.0), (2.5, 93.0), 3.5),
    ((4.0, 31.0), (5.0, 86.0), 3.4),
)
_PHALANGES = (
    (31.0, 25.0),
    (40.0, 24.0, 17.0),
    (44.0, 28.0, 19.0),
    (41.0, 26.0, 18.0),
    (33.0, 19.0, 16.0),
)
_FINGER_SPREAD_PA = (12.0, 4.0, 0.0, -4.0, -9.0)  # extra bend (deg, + = towards -u) per ray
_FINGER_SPREAD_LAT = (8.0, 3.0, 2.0, 1.0, 0.0)


def _rot(vec: tuple[float, float], deg: float) -> tuple[float, float]:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return vec[0] * c - vec[1] * s, vec[0] * s + vec[1] * c


def _child(rng: np.random.Generator) -> np.random.Generator:
    return np.random.default_rng(int(rng.integers(2**63)))


def _cut(
    center: tuple[float, float],
    normal_deg: float,
    half_len: float,
    subtle: bool,
    shift: tuple[float, float],
) -> Cut:
    """Fracture line through center whose positive (shifted) side lies along normal_deg."""
    mu, mv = math.cos(math.radians(normal_deg)), math.sin(math.radians(normal_deg))
    eu, ev = mv, -mu
    p0 = (center[0] - eu * half_len, center[1] - ev * half_len)
    p1 = (center[0] + eu * half_len, center[1] + ev * half_len)
    width, depth = (0.6, 0.3) if subtle else (1.0, 0.85)
    return Cut(p0, p1, width, depth, shift)


def _radius_geometry(view: str) -> tuple[tuple[float, float], tuple[float, float], float, float]:
    """Radius shaft start, distal end, shaft radius and distal flare (in phantom units)."""
    if view == "PA":
        return (-11.0, -330.0), (-13.5, -4.0), 8.0, 6.5
    return (-3.0, -330.0), (-2.0, -3.0), 8.0, 3.5


def _radius_halfwidth(view: str, v: float) -> tuple[float, float]:
    """(axis u, half width) of the radius at level v, matching the tube() flare profile."""
    (u0, v0), (u1, v1), r, flare = _radius_geometry(view)
    s = (v - v0) / (v1 - v0)
    kl = 2.2 * (r + flare) if view == "LAT" else 35.0
    return u0 + (u1 - u0) * s, r + flare * math.exp(-(((v1 - v) / kl) ** 2))


def _place(h: int, w: int, arm: _Arm, rng: np.random.Generator) -> Placement:
    """Choose scale and position so the arm is large and the wrist region stays in frame."""
    probe = Placement.make(0, 0, arm.angle, flip=arm.flip, mirror=arm.mirror, scale=1.0)
    big = 1e9
    chord = min(
        h / abs(probe.dy) if abs(probe.dy) > 1e-6 else big,
        w / abs(probe.dx) if abs(probe.dx) > 1e-6 else big,
    )
    across = min(
        h / abs(probe.ny) if abs(probe.ny) > 1e-6 else big,
        w / abs(probe.nx) if abs(probe.nx) > 1e-6 else big,
    )
    scale_len = rng.uniform(0.6, 0.75) * chord / _HAND_LEN
    scale_wid = rng.uniform(0.38, 0.52) * across / 60.0
    scale = scale_len**0.35 * scale_wid**0.65  # favour a wide arm: fingers may be cut off
    back = rng.uniform(0.0, 0.12) * chord  # slide towards the forearm: fingers may leave frame
    side = rng.uniform(-0.05, 0.05) * across
    ccx, ccy = (w - 1) / 2, (h - 1) / 2
    margin = 0.04 * min(h, w)
    for _ in range(30):
        cx = ccx - back * probe.dx + side * probe.nx
        cy = ccy - back * probe.dy + side * probe.ny
        pl = Placement.make(
            cx - 12 * scale * probe.dx,
            cy - 12 * scale * probe.dy,
            arm.angle,
            flip=arm.flip,
            mirror=arm.mirror,
            scale=scale,
        )
        pts = [pl.to_pixel(u, v) for u in (-34.0, 34.0) for v in (-45.0, 45.0)]
        if all(margin <= x <= w - 1 - margin and margin <= y <= h - 1 - margin for x, y in pts):
            return pl
        scale *= 0.93
        back *= 0.8
        side *= 0.8
    return pl


def _soft_tissue(
    tis: np.ndarray, pl: Placement, view: str, mcs: list[_Ray], tips: list[Pt]
) -> None:
    if view == "PA":
        soft_tube(tis, pl, (0.0, -420.0), (0.0, 25.0), 31.0, 27.5, 0.5)
        soft_tube(tis, pl, (-1.0, -15.0), (1.5, 90.0), 28.0, 31.0, 0.45)
    else:
        soft_tube(tis, pl, (0.0, -420.0), (0.0, 25.0), 29.0, 25.0, 0.52)
        soft_tube(tis, pl, (-1.0, -15.0), (0.0, 92.0), 25.0, 17.0, 0.55)
    for i, ((_, head, _), tip) in enumerate(zip(mcs, tips, strict=True)):
        if i == 0:  # thumb: thenar eminence plus the digit
            soft_tube(
                tis, pl, (-12.0, 15.0) if view == "PA" else (-4.0, 15.0), head, 13.0, 10.0, 0.42
            )
        soft_tube(tis, pl, head, tip, 8.5 if view == "PA" else 10.0, 6.5, 0.35)


def _hand_bones(
    dens: np.ndarray, pl: Placement, view: str, jitter: np.ndarray, scaphoid_cut: Cut | None
) -> tuple[list[_Ray], list[Pt]]:
    """Carpals, metacarpals and phalanges. Returns metacarpals and fingertip skin points."""
    carpals = _PA_CARPALS if view == "PA" else _LAT_CARPALS
    for k, (name, (u, v, a, b, ang)) in enumerate(carpals.items()):
        ju, jv = jitter[k]
        ellipse_bone(
            dens, pl, (u + ju, v + jv), a, b, ang, cut=scaphoid_cut if name == "scaphoid" else None
        )
    mcs = list(_PA_METACARPALS if view == "PA" else _LAT_METACARPALS)
    spread = _FINGER_SPREAD_PA if view == "PA" else _FINGER_SPREAD_LAT
    tips: list[Pt] = []
    for i, (base, head, r) in enumerate(mcs):
        tube(dens, pl, base, head, r * 0.95, r * 0.8, knobs=(1.0, 1.5), knob_len=2.5 * r)
        d = (head[0] - base[0], head[1] - base[1])
        n = math.hypot(*d)
        d = _rot((d[0] / n, d[1] / n), spread[i] + float(jitter[8 + i, 0]) * 2)
        p = head
        pr = r * 0.85
        for length in _PHALANGES[i]:
            start = (p[0] + d[0] * 2.5, p[1] + d[1] * 2.5)
            end = (start[0] + d[0] * length, start[1] + d[1] * length)
            tube(dens, pl, start, end, pr, pr * 0.75, knobs=(0.9, 0.6), knob_len=2.2 * pr)
            p, pr = end, pr * 0.8
        tips.append((p[0] + d[0] * 4.0, p[1] + d[1] * 4.0))
    return mcs, tips


def _render_arm(h: int, w: int, arm: _Arm, spec: ViewSpec, rng: np.random.Generator) -> _ArmLayer:
    """One forearm + hand rasterised into (h, w) work-resolution density maps."""
    pl = _place(h, w, arm, rng)
    view = spec.view
    dens = np.zeros((h, w), np.float32)
    tis = np.zeros((h, w), np.float32)
    jitter = rng.normal(0.0, 0.6, size=(13, 2))
    frac = arm.fracture
    subtle = bool(frac and frac.subtle)
    # Optional content draws from its own child streams, so toggling a fracture, implant or cast
    # leaves every other pixel of the render unchanged (tests compare such pairs).
    frng, implant_rng, cast_rng = (_child(rng) for _ in range(3))
    sign = 1.0 if frng.random() < 0.5 else -1.0
    radius_cut: Cut | None = None
    scaphoid_cut: Cut | None = None
    bulge: Bulge | None = None
    line: tuple[tuple[float, float], tuple[float, float]] | None = None
    (r_start, r_end, r_rad, r_flare) = _radius_geometry(view)
    level = -frng.uniform(15.0, 30.0)
    uc, half = _radius_halfwidth(view, level)
    if frac is not None and frac.kind in ("transverse", "oblique"):
        tilt = frng.uniform(-8, 8) if frac.kind == "transverse" else sign * frng.uniform(30, 60)
        step = frng.uniform(0.4, 1.0) if subtle else frng.uniform(1.5, 3.0)
        half_len = (half + 1.0) / math.cos(math.radians(tilt))
        radius_cut = _cut((uc, level), 90.0 + tilt, half_len, subtle, (sign * step, -0.3 * step))
        line = (radius_cut.p0, radius_cut.p1)
    elif frac is not None and frac.kind == "buckle":
        along = math.hypot(r_end[0] - r_start[0], r_end[1] - r_start[1]) + level - r_end[1]
        amp = frng.uniform(0.5, 0.9) if subtle else frng.uniform(1.3, 2.2)
        sides = int(frng.integers(-1, 2))
        bulge = Bulge(along, amp, 4.0, sides, 0.15 if subtle else 0.4)
        line = ((uc - half - amp, level), (uc + half + amp, level))
    elif frac is not None and frac.kind == "scaphoid":
        carpals = _PA_CARPALS if view == "PA" else _LAT_CARPALS
        su, sv, _, sb, sang = carpals["scaphoid"]
        c = (su + jitter[0, 0], sv + jitter[0, 1])
        step = frng.uniform(0.3, 0.6) if subtle else frng.uniform(0.8, 1.5)
        normal = sang + frng.uniform(-10, 10)
        e = _rot((1.0, 0.0), normal)  # distal pole pulls away: the gap is what makes it visible
        scaphoid_cut = _cut(c, normal, sb + 1.0, subtle, (step * e[0], step * e[1]))
        line = (scaphoid_cut.p0, scaphoid_cut.p1)

    tube(
        dens,
        pl,
        r_start,
        r_end,
        r_rad,
        r_rad,
        knobs=(0.0, r_flare),
        knob_len=35.0 if view == "PA" else None,
        slant=-0.25 if view == "PA" else 0.1,
        cortex=0.18,
        wc=2.7,
        wm=0.02,
        cut=radius_cut,
        bulge=bulge,
    )
    if view == "PA":
        tube(
            dens,
            pl,
            (14.5, -330.0),
            (14.0, -12.0),
            6.5,
            6.0,
            knobs=(0.0, 2.0),
            cortex=0.18,
            wc=2.7,
            wm=0.02,
        )
        ellipse_bone(dens, pl, (18.5, -9.0), 2.0, 4.0, 10.0)  # ulnar styloid
        ellipse_bone(dens, pl, (-24.0, -2.0), 3.5, 5.0, -20.0)  # radial styloid
    else:
        tube(
            dens,
            pl,
            (3.5, -330.0),
            (2.5, -11.0),
            6.5,
            6.0,
            knobs=(0.0, 1.5),
            cortex=0.18,
            wc=2.7,
            wm=0.02,
        )
    mcs, tips = _hand_bones(dens, pl, view, jitter, scaphoid_cut)
    _soft_tissue(tis, pl, view, mcs, tips)
    if spec.implant:
        _implant(dens, pl, view, implant_rng)
    if spec.cast:
        _cast(dens, pl, view, cast_rng)
    px_line = None
    if line is not None:
        px_line = (pl.to_pixel(*line[0]), pl.to_pixel(*line[1]))
    return _ArmLayer(dens, tis, px_line)


def _implant(dens: np.ndarray, pl: Placement, view: str, rng: np.random.Generator) -> None:
    """Volar locking plate with screws on the distal radius: metal saturates to ~1.0."""
    metal = 5.0
    n_screws = int(rng.integers(3, 7))
    u_shaft, _ = _radius_halfwidth(view, -45.0)
    u_dist, half_dist = _radius_halfwidth(view, -12.0)
    if view == "PA":
        plate(dens, pl, (u_shaft, -44.0), 4.2, 28.0, metal)
        plate(dens, pl, (u_dist, -12.0), half_dist * 0.85, 3.8, metal)
        spots = [(u_dist + du, -12.0) for du in (-7.0, 0.0, 7.0)]
        spots += [(u_shaft, v) for v in (-64.0, -50.0, -36.0)]
        for c in spots[:n_screws]:
            plate(dens, pl, c, 2.3, 2.3, 2.0, disc=True)
    else:
        u_volar = u_shaft - 9.5
        plate(dens, pl, (u_volar, -44.0), 1.3, 30.0, metal)
        for v in (-12.0, -18.0, -36.0, -50.0, -64.0, -24.0)[:n_screws]:
            plate(dens, pl, (u_volar + 8.0, v), 8.0, 1.0, metal)


def _cast(dens: np.ndarray, pl: Placement, view: str, rng: np.random.Generator) -> None:
    """Plaster: a hollow shell around forearm and wrist, with uneven texture."""
    layer = np.zeros_like(dens)
    radius = (31.0 if view == "PA" else 29.0) + rng.uniform(5.0, 10.0)
    v_top = rng.uniform(35.0, 60.0)
    tube(
        layer,
        pl,
        (0.0, -rng.uniform(150.0, 260.0)),
        (0.0, v_top),
        radius,
        radius - 2.0,
        cortex=0.22,
        wc=0.55,
        wm=0.12,
    )
    sigma = max(2.0, 1.5 * pl.scale)
    layer *= np.clip(1.0 + 0.25 * smooth_field(rng, layer.shape, sigma), 0.3, 2.0)
    dens += layer


# ---------------------------------------------------------------------------------------------
# Assembly.


def _to_display(dens: np.ndarray, background: float) -> np.ndarray:
    out: np.ndarray = (background + (1.0 - background) * -np.expm1(-dens)).astype(np.float32)
    return out


def _work_shape(h: int, w: int) -> tuple[int, int, float]:
    f = min(1.0, _WORK_LONG / max(h, w))
    return max(round(h * f), 8), max(round(w * f), 8), f


def _bbox_of(mask: np.ndarray, x_off: int, fy: float, fx: float, h: int, w: int) -> Box:
    """Tight box of a work-resolution mask (placed at column x_off) in output pixels."""
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        x = math.floor(x_off * fx)
        return (x, 0, x, 0)
    x0 = math.floor((xs.min() + x_off) * fx)
    y0 = math.floor(ys.min() * fy)
    x1 = min(math.ceil((xs.max() + x_off + 1) * fx), w)
    y1 = min(math.ceil((ys.max() + 1) * fy), h)
    return (int(x0), int(y0), int(x1), int(y1))


def _exposure(
    spec: ViewSpec, rng: np.random.Generator, h: int, w: int, arms: list[_Arm], gap: float
) -> tuple[np.ndarray, list[PartTruth]]:
    """One exposure (one detector image) of h x w output pixels holding the given arms."""
    wh, ww, _ = _work_shape(h, w)
    fy, fx = h / wh, w / ww
    background = float(rng.uniform(0.03, 0.1))
    truths: list[PartTruth] = []
    if spec.body_part != "wrist":
        dens = cf.decoy_density(spec.body_part, wh, ww)
    else:
        dens = np.zeros((wh, ww), np.float32)
        gap_px = round(gap * ww)
        slot = (ww - gap_px * (len(arms) - 1)) // len(arms)
        for i, arm in enumerate(arms):
            x_off = 0 if i == 0 else ww - slot
            layer = _render_arm(wh, slot, arm, spec, rng)
            dens[:, x_off : x_off + slot] += layer.dens + layer.tissue
            line: Line | None = None
            if layer.line is not None:
                (xa, ya), (xb, yb) = layer.line
                line = (
                    ((xa + x_off + 0.5) * fx - 0.5, (ya + 0.5) * fy - 0.5),
                    ((xb + x_off + 0.5) * fx - 0.5, (yb + 0.5) * fy - 0.5),
                )
            fg = layer.tissue > 0.05
            bbox = _bbox_of(fg, x_off, fy, fx, h, w)
            truths.append(PartTruth(bbox, arm.angle, arm.flip, line))
    img = _to_display(dens, background)
    marker_rng, ruler_rng, speck_rng = (_child(rng) for _ in range(3))
    if spec.marker:
        cf.draw_marker(img, marker_rng, spec.marker)
    if spec.ruler:
        cf.draw_ruler(img, ruler_rng)
    cf.draw_specks(img, speck_rng, spec.specks)
    jitter = rng.uniform(0.9, 1.1)  # joined halves were exposed separately
    exposure = spec.exposure * (jitter if spec.layout == "joined" else 1.0)
    img = cf.contrast_heel(img, rng, background, exposure, spec.heel)
    img = cf.blur(img, max(spec.blur, 0.3) * max(wh, ww) / 512)
    if (wh, ww) != (h, w):
        img = ndimage.zoom(img, (fy, fx), order=1, grid_mode=True, mode="nearest")
    img = cf.add_noise(img, rng, spec.noise)
    return img, truths


def _validate(spec: ViewSpec) -> None:
    if spec.body_part not in BODY_PARTS:
        raise ValueError(f"unknown body_part {spec.body_part!r}")
    if spec.view not in VIEWS and spec.body_part == "wrist":
        raise ValueError(f"unknown view {spec.view!r}")
    if spec.fracture is not None and spec.fracture.kind not in FRACTURE_KINDS:
        raise ValueError(f"unknown fracture kind {spec.fracture.kind!r}")
    if spec.layout not in LAYOUTS or spec.parts not in (1, 2):
        raise ValueError(f"bad parts/layout {spec.parts}/{spec.layout!r}")
    if (spec.parts == 2) != (spec.layout != "single"):
        raise ValueError("parts=2 requires a two-part layout and vice versa")
    if not (16 <= spec.height <= 8192 and 16 <= spec.width <= 8192):
        raise ValueError(f"bad size {spec.height}x{spec.width}")
    if spec.frame not in (None, "black", "white") or spec.marker not in (None, "L", "R"):
        raise ValueError("bad frame or marker")


def render_view(spec: ViewSpec, rng: np.random.Generator) -> RenderedView:
    """Render the view described by spec; all randomness comes from rng (bitwise reproducible)."""
    _validate(spec)
    h, w = spec.height, spec.width
    if spec.body_part != "wrist" or spec.parts == 1:
        arm = _Arm(spec.angle_deg, spec.fingers_down, spec.mirror, spec.fracture)
        img, truths = _exposure(spec, rng, h, w, [arm], 0.0)
    else:
        which = int(rng.integers(2))
        angle = float(np.clip(spec.angle_deg, -25.0, 25.0))
        arms = [
            _Arm(angle, spec.fingers_down, spec.mirror, spec.fracture if which == 0 else None),
            _Arm(
                -angle + float(rng.uniform(-5, 5)),
                spec.fingers_down,
                not spec.mirror,
                spec.fracture if which == 1 else None,
            ),
        ]
        if spec.layout == "side_by_side":
            img, truths = _exposure(spec, rng, h, w, arms, float(rng.uniform(0.04, 0.1)))
        else:
            gap = max(round(w * rng.uniform(0.02, 0.05)), 2)
            wl = (w - gap) // 2
            left, t0 = _exposure(spec, rng, h, wl, arms[:1], 0.0)
            right, t1 = _exposure(spec, rng, h, w - gap - wl, arms[1:], 0.0)
            img = np.concatenate(
                [left, np.full((h, gap), rng.uniform(0.0, 0.02), np.float32), right], axis=1
            )
            shift = wl + gap
            t1 = [_shift_truth(t, shift) for t in t1]
            truths = t0 + t1
    if spec.frame:
        cf.apply_frame(img, rng, spec.frame)
    img = np.clip(img, 0.0, 1.0, out=img).astype(np.float32, copy=False)
    return RenderedView(img, tuple(truths))


def _shift_truth(t: PartTruth, dx: int) -> PartTruth:
    x0, y0, x1, y1 = t.bbox
    line = None
    if t.fracture_line is not None:
        (a, b), (c, d) = t.fracture_line
        line = ((a + dx, b), (c + dx, d))
    return PartTruth((x0 + dx, y0, x1 + dx, y1), t.angle_deg, t.fingers_down, line)


def random_view_spec(
    rng: np.random.Generator,
    *,
    body_part: str = "wrist",
    view: str = "PA",
    fracture: Fracture | None = None,
    size: str = "small",
) -> ViewSpec:
    """A plausible random spec.

    size="small": long side 512, aspect 0.6-1.0, portrait or landscape; size="full": sides in
    [250, 4000], half of them common detector formats. Confounder frequencies follow the
    project's training mix (markers common, rulers/casts/frames/two parts rare).
    """
    if size == "small":
        long_side, aspect = 512, rng.uniform(0.6, 1.0)
        short = round(long_side * aspect)
        height, width = (long_side, short) if rng.random() < 0.7 else (short, long_side)
    elif size == "full":
        if rng.random() < 0.5:
            width, height = _COMMON_SIZES[int(rng.integers(len(_COMMON_SIZES)))]
            if rng.random() < 0.2:
                width, height = height, width
        else:
            long_side = int(rng.integers(250, 4001))
            short = max(round(long_side * rng.uniform(0.5, 1.0)), 250)
            height, width = (long_side, short) if rng.random() < 0.7 else (short, long_side)
    else:
        raise ValueError(f"unknown size {size!r}")
    wide = rng.random() < 0.3
    angle = rng.uniform(-90, 90) if wide else rng.uniform(-20, 20)
    two = rng.random() < 0.06
    frame = None
    if rng.random() < 0.25:
        frame = "black" if rng.random() < 0.5 else "white"
    return ViewSpec(
        body_part=body_part,
        view=view,
        height=int(height),
        width=int(width),
        angle_deg=float(angle),
        fingers_down=bool(rng.random() < 0.1),
        fracture=fracture,
        implant=False,
        cast=bool(rng.random() < 0.08),
        marker=("L" if rng.random() < 0.5 else "R") if rng.random() < 0.7 else None,
        ruler=bool(rng.random() < 0.1),
        frame=frame,
        parts=2 if two else 1,
        layout=("side_by_side" if rng.random() < 0.5 else "joined") if two else "single",
        specks=int(rng.integers(0, 7)),
        exposure=float(rng.uniform(0.6, 1.4)),
        noise=float(np.exp(rng.uniform(math.log(0.005), math.log(0.04)))),
        blur=float(rng.uniform(0.3, 1.5)),
        heel=float(rng.uniform(0.0, 0.25)),
        mirror=bool(rng.random() < 0.5),
    )
