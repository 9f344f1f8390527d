"""A forearm, wrist and hand built from 3-D solids, posed, and projected onto the detector.

The arm frame is in millimetres: u across the arm (towards the ulna +), v along it (radiocarpal
joint at v = 0, fingers towards +v), w out of the back of the hand (dorsal +). A PA view looks
along -w; the lateral view rolls the forearm 90 degrees about v, so radius and ulna overlap as on
a real lateral. `ArmPose` maps arm points to detector millimetres, so the ground truth (landmarks,
fracture lines) goes through exactly the same map as every solid.

Output: attenuation line integrals per material (sum of mu x chord). No I/O, no image chain.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from train.projection import materials as mat
from train.projection.solids import (
    Grid,
    ellipsoid,
    rotation,
    shelled_ellipsoid,
    shelled_tube,
    slab_gap,
    tube,
)
from train.projection.spec import Fracture, ProjectionSpec

Pt3 = tuple[float, float, float]
Pt2 = tuple[float, float]
MU_PLASTER = 0.045  # plaster of Paris is porous: well below bone per mm, but thick
# Carpals: centre (u, v, w), semi-axes (along u, v, w), in-plane turn (deg). Adult, right hand.
_CARPALS: dict[str, tuple[Pt3, Pt3, float]] = {
    "scaphoid": ((-13.0, 10.0, 1.0), (11.5, 6.0, 6.5), 50.0),
    "lunate": ((-1.5, 8.0, 2.0), (8.0, 7.0, 8.5), 0.0),
    "triquetrum": ((9.5, 10.5, 3.0), (7.0, 6.0, 6.0), -25.0),
    "pisiform": ((11.5, 12.0, -8.0), (5.0, 5.0, 5.0), 0.0),
    "trapezium": ((-20.0, 24.0, -4.0), (7.5, 7.0, 7.0), 30.0),
    "trapezoid": ((-10.0, 27.0, 1.0), (6.0, 6.5, 6.0), 0.0),
    "capitate": ((-1.0, 25.0, 1.0), (7.0, 11.0, 8.5), 0.0),
    "hamate": ((9.0, 24.0, 1.0), (7.5, 9.5, 7.5), -10.0),
}
# Metacarpals 1-5: base (u, v, w), length, shaft radius; then phalanx lengths.
_METACARPALS: tuple[tuple[Pt3, float, float], ...] = (
    ((-22.0, 29.0, -6.0), 44.0, 4.6),
    ((-11.0, 34.0, 1.0), 66.0, 4.2),
    ((-1.5, 36.0, 2.0), 63.0, 4.2),
    ((8.0, 34.0, 1.0), 56.0, 3.7),
    ((15.5, 32.0, -1.0), 52.0, 3.6),
)
_PHALANGES = (
    (31.0, 23.0),
    (40.0, 23.0, 16.0),
    (45.0, 27.0, 18.0),
    (42.0, 26.0, 17.0),
    (33.0, 19.0, 16.0),
)
_RAY_ANGLES = (-38.0, -9.0, 0.0, 8.0, 16.0)  # in-plane direction of each ray (deg, + towards ulna)


@dataclass(frozen=True)
class ArmPose:
    """Affine map arm (u, v, w) mm -> detector (x, y, z) mm."""

    matrix: np.ndarray  # 3x3, orthogonal (a reflection when mirrored)
    origin: Pt2  # detector position of the arm origin (centre of the radiocarpal joint)

    def point(self, p: Pt3) -> Pt3:
        """An arm point on the detector."""
        x, y, z = self.matrix @ np.asarray(p, np.float64)
        return float(x + self.origin[0]), float(y + self.origin[1]), float(z)

    def xy(self, p: Pt3) -> Pt2:
        """An arm point's detector position (x, y) in mm."""
        x, y, _ = self.point(p)
        return x, y


def arm_pose(
    angle_deg: float, *, fingers_down: bool, mirror: bool, roll_deg: float, origin: Pt2
) -> ArmPose:
    """The pose that puts +v along `angle_deg` (0 = fingers up, counter-clockwise on screen)."""
    t = math.radians(angle_deg)
    d = np.array([-math.sin(t), -math.cos(t)])
    if fingers_down:
        d = -d
    n = np.array([-d[1], d[0]])
    if mirror:
        n = -n
    r = math.radians(roll_deg)
    roll = np.array([[math.cos(r), 0, -math.sin(r)], [0, 1, 0], [math.sin(r), 0, math.cos(r)]])
    place = np.array([[n[0], d[0], 0.0], [n[1], d[1], 0.0], [0.0, 0.0, 1.0]])
    return ArmPose(place @ roll, origin)


@dataclass
class Maps:
    """Line integrals per material, mm of material per pixel."""

    cortex: np.ndarray
    marrow: np.ndarray
    soft: np.ndarray
    fat: np.ndarray
    metal: np.ndarray
    plaster: np.ndarray

    @classmethod
    def empty(cls, grid: Grid) -> Maps:
        return cls(*(grid.zeros() for _ in range(6)))

    def attenuation(self, trabecular: np.ndarray, bone_density: float) -> np.ndarray:
        """mu x length summed over materials; `trabecular` modulates cancellous bone."""
        out = mat.MU_CORTEX * bone_density * self.cortex
        out += mat.MU_CANCELLOUS * bone_density * self.marrow * trabecular
        out += mat.MU_SOFT * self.soft + mat.MU_FAT * self.fat
        out += mat.MU_METAL * self.metal + MU_PLASTER * self.plaster
        return out.astype(np.float32)


@dataclass(frozen=True)
class ArmTruth:
    """Ground truth of one arm in detector millimetres."""

    fracture_line: tuple[Pt2, Pt2] | None
    landmarks: dict[str, Pt2]


class _Arm:
    """Draws one arm into `Maps` through a pose; k scales the anatomy (age, body size)."""

    def __init__(self, maps: Maps, grid: Grid, pose: ArmPose, spec: ProjectionSpec) -> None:
        self.m, self.g, self.pose, self.spec = maps, grid, pose, spec
        self.k = spec.size_factor
        self.roll = spec.roll_deg + {"PA": 0.0, "OBL": 45.0, "LAT": 90.0}[spec.view]
        self.cortex_scale = {"child": 0.8, "adult": 1.0, "elderly": 0.6}[spec.age]

    def p(self, u: float, v: float, w: float = 0.0) -> Pt2:
        return self.pose.xy((u * self.k, v * self.k, w * self.k))

    def rot(self, turn_deg: float) -> np.ndarray:
        r: np.ndarray = self.pose.matrix @ rotation(yaw_deg=turn_deg)
        return r

    def long_bone(
        self,
        start: Pt3,
        end: Pt3,
        prof_s: list[float],
        prof_r: list[float],
        *,
        depth: float = 0.8,
        cortex_mm: float = 2.2,
        keep: tuple[float, float, float] | None = None,
        shift: Pt2 = (0.0, 0.0),
        round_end: bool = True,
    ) -> None:
        k = self.k
        a = self.pose.point((start[0] * k, start[1] * k, start[2] * k))
        b = self.pose.point((end[0] * k, end[1] * k, end[2] * k))
        span = math.dist(a, b)
        # Beyond ~55 degrees the shell model's chord is no longer a bone's: cap the tilt there.
        tilt = math.degrees(math.asin(min(abs(b[2] - a[2]) / max(span, 1e-6), 0.82)))
        s, r = rounded_profile(np.asarray(prof_s), np.asarray(prof_r) * k, span, round_end)
        thick = np.minimum(cortex_mm * k * self.cortex_scale, r * 0.6)
        shelled_tube(
            self.m.cortex,
            self.m.marrow,
            self.g,
            a[:2],
            b[:2],
            s,
            r,
            thick,
            depth_ratio=depth,
            roll_deg=self.roll,
            tilt_deg=tilt,
            keep_side=keep,
            shift=shift,
        )

    def short_bone(
        self,
        centre: Pt3,
        semi: Pt3,
        turn: float,
        *,
        keep: tuple[float, float, float] | None = None,
        shift: Pt2 = (0.0, 0.0),
    ) -> None:
        k = self.k
        x, y, z = self.pose.point((centre[0] * k, centre[1] * k, centre[2] * k))
        shelled_ellipsoid(
            self.m.cortex,
            self.m.marrow,
            self.g,
            (x + shift[0], y + shift[1], z),
            (semi[0] * k, semi[1] * k, semi[2] * k),
            self.rot(turn),
            0.9 * k * self.cortex_scale,
            keep_side=keep,
        )

    def soft_tube(self, start: Pt3, end: Pt3, r0: float, r1: float, depth: float) -> None:
        """A limb segment's skin, fat and muscle. Segments overlap at joints: the union along
        each ray is the longer chord (max), not the sum, so joints do not double in density."""
        a, b = self.p(*start), self.p(*end)
        s, r = rounded_profile(np.array([0.0, 1.0]), np.array([r0, r1]) * self.k, math.dist(a, b))
        outer, inner = self.g.zeros(), self.g.zeros()
        tube(outer, self.g, a, b, s, r, depth_ratio=depth, roll_deg=self.roll)
        tube(
            inner,
            self.g,
            a,
            b,
            s,
            np.maximum(r - 3.0 * self.k, 0.5),
            depth_ratio=depth,
            roll_deg=self.roll,
        )
        np.maximum(self.m.soft, inner, out=self.m.soft)
        np.maximum(self.m.fat, outer - inner, out=self.m.fat)

    def half_plane(self, a: Pt2, b: Pt2, towards: Pt2) -> tuple[float, float, float]:
        """(A, B, C) with A x + B y + C >= 0 on the side of `towards` of the line a-b (mm)."""
        nx, ny = -(b[1] - a[1]), b[0] - a[0]
        norm = math.hypot(nx, ny) or 1.0
        nx, ny = nx / norm, ny / norm
        c = -(nx * a[0] + ny * a[1])
        if nx * towards[0] + ny * towards[1] + c < 0:
            nx, ny, c = -nx, -ny, -c
        return nx, ny, c


def draw_arm(
    maps: Maps,
    grid: Grid,
    pose: ArmPose,
    spec: ProjectionSpec,
    fracture: Fracture | None,
    rng: np.random.Generator,
) -> ArmTruth:
    """Draw forearm, wrist and hand (bones, soft tissue, implant, cast, mimics) into `maps`."""
    arm = _Arm(maps, grid, pose, spec)
    frng, irng, crng, mrng = (np.random.default_rng(int(rng.integers(2**63))) for _ in range(4))
    line: tuple[Pt2, Pt2] | None = None
    cut = _RadiusCut.sample(frng, arm, fracture) if fracture else None
    _forearm(arm, spec, cut)
    if cut is not None:
        line = cut.line
    styloid_cut = _ulnar_styloid(
        arm, frng if fracture and fracture.kind == "ulnar_styloid" else None, fracture
    )
    if styloid_cut is not None:
        line = styloid_cut
    scaphoid_line = _carpus(
        arm, frng if fracture and fracture.kind == "scaphoid" else None, fracture
    )
    if scaphoid_line is not None:
        line = scaphoid_line
    _hand(arm, spec)
    _soft_tissue(arm)
    if spec.implant:
        _implant(arm, irng)
    if spec.cast:
        _cast(arm, crng)
    _mimics(arm, spec, mrng)
    landmarks = {
        "radial_styloid": arm.p(-25.0, -1.0),
        "ulnar_styloid": arm.p(18.5, -4.0, -2.0),
        "capitate": arm.p(-1.0, 25.0, 1.0),
        "third_metacarpal_head": arm.p(-1.5, 99.0, 2.0),
        "radius_shaft": arm.p(-7.0, -60.0),
    }
    return ArmTruth(line, landmarks)


# ---------------------------------------------------------------------------------------------
# Forearm and distal radius fractures.


@dataclass(frozen=True)
class _RadiusCut:
    kind: str
    line: tuple[Pt2, Pt2]
    keep_prox: tuple[float, float, float]
    keep_dist: tuple[float, float, float]
    shift: Pt2
    gap_mm: float
    depth: float
    extra: tuple[tuple[Pt2, Pt2], ...]

    @staticmethod
    def sample(rng: np.random.Generator, arm: _Arm, fracture: Fracture) -> _RadiusCut | None:
        if fracture.kind not in ("transverse", "oblique", "comminuted", "buckle"):
            return None
        level = -rng.uniform(12.0, 32.0)
        half = 15.0 if arm.spec.view == "PA" else 12.0
        tilt = (
            rng.uniform(-10, 10)
            if fracture.kind != "oblique"
            else rng.choice([-1, 1]) * rng.uniform(25, 55)
        )
        dv = math.tan(math.radians(tilt)) * (half + 2.0)
        a3, b3 = (-8.0 - half - 2.0, level - dv, 0.0), (-8.0 + half + 2.0, level + dv, 0.0)
        a, b = arm.p(*a3), arm.p(*b3)
        distal, proximal = arm.p(-8.0, level + 30.0), arm.p(-8.0, level - 30.0)
        hair = fracture.subtle
        gap = rng.uniform(0.08, 0.3) if hair else rng.uniform(0.4, 1.4)
        step = rng.uniform(0.0, 0.35) if hair else rng.uniform(0.6, 3.0)
        along = np.subtract(distal, proximal) / max(math.dist(distal, proximal), 1e-6)
        across = np.array([-along[1], along[0]])
        direction = rng.choice([-1.0, 1.0])
        shift = tuple(direction * step * across - (0.0 if hair else rng.uniform(0, 1.2)) * along)
        extra: list[tuple[Pt2, Pt2]] = []
        if fracture.kind == "comminuted":
            for _ in range(int(rng.integers(1, 3))):
                u0 = rng.uniform(-18.0, 2.0)
                extra.append(
                    (arm.p(u0, level + rng.uniform(-2, 2)), arm.p(u0 + rng.uniform(-6, 6), -1.0))
                )
        depth = rng.uniform(0.3, 0.6) if hair else rng.uniform(0.7, 0.95)
        if fracture.kind == "buckle":
            gap, depth = rng.uniform(0.5, 1.2), -rng.uniform(0.15, 0.45)  # a dense band
            shift = (0.0, 0.0)
        return _RadiusCut(
            fracture.kind,
            (a, b),
            arm.half_plane(a, b, proximal),
            arm.half_plane(a, b, distal),
            (float(shift[0]), float(shift[1])),
            gap,
            depth,
            tuple(extra),
        )


def _forearm(arm: _Arm, spec: ProjectionSpec, cut: _RadiusCut | None) -> None:
    child = spec.age == "child"
    prof_s = [0.0, 0.7, 0.88, 0.96, 1.0]
    prof_r = [7.0, 7.6, 10.0, 13.5, 14.0]
    start, end = (-7.0, -420.0, 0.0), (-8.0, -5.0, 0.0)
    before = (arm.m.cortex.copy(), arm.m.marrow.copy())
    if cut is None or cut.kind == "buckle":
        arm.long_bone(start, end, prof_s, prof_r, depth=0.72, round_end=False)
    else:
        arm.long_bone(start, end, prof_s, prof_r, depth=0.72, keep=cut.keep_prox, round_end=False)
        arm.long_bone(
            start,
            end,
            prof_s,
            prof_r,
            depth=0.72,
            keep=cut.keep_dist,
            shift=cut.shift,
            round_end=False,
        )
    arm.short_bone((-19.5, -3.0, 0.0), (3.2, 5.0, 4.0), -25.0)  # radial styloid
    if cut is not None:
        radius = (arm.m.cortex - before[0], arm.m.marrow - before[1])
        slab_gap(radius, arm.g, *cut.line, cut.gap_mm * arm.k, cut.depth)
        for seg in cut.extra:
            slab_gap(radius, arm.g, *seg, cut.gap_mm * arm.k * 0.8, cut.depth)
        if cut.kind == "buckle":  # the cortex bulges where the trabeculae were compressed
            for side in (-1.0, 1.0):
                (x, y) = _lerp(cut.line[0], cut.line[1], 0.5 + side * 0.47)
                ellipsoid(
                    arm.m.cortex,
                    arm.g,
                    (x, y, 0.0),
                    (1.3 * arm.k, 2.2 * arm.k, 4.0 * arm.k),
                    arm.rot(0.0),
                    1.0,
                )
        arm.m.cortex[...] = before[0] + radius[0]
        arm.m.marrow[...] = before[1] + radius[1]
    # Ulna: shaft, head.
    arm.long_bone(
        (15.0, -420.0, -2.0),
        (14.0, -8.0, -2.0),
        [0.0, 0.8, 0.95, 1.0],
        [5.8, 5.6, 7.5, 8.5],
        depth=0.9,
    )
    if child:  # open physes: a cartilage band between epiphysis and metaphysis, seen edge-on
        for u0, u1, v in ((-24.0, 6.0, -9.0), (8.0, 21.0, -10.0)):
            maps = (arm.m.cortex, arm.m.marrow)
            slab_gap(maps, arm.g, arm.p(u0, v - 1.0), arm.p(u1, v + 1.0), 1.8 * arm.k, 0.9)


def _ulnar_styloid(
    arm: _Arm, rng: np.random.Generator | None, fracture: Fracture | None
) -> tuple[Pt2, Pt2] | None:
    centre, semi = (18.5, -5.0, -2.0), (2.3, 5.0, 2.3)
    if rng is None or fracture is None:
        arm.short_bone(centre, semi, 8.0)
        return None
    a, b = arm.p(15.0, -6.5, -2.0), arm.p(22.0, -6.0, -2.0)
    tip, base = arm.p(18.5, 0.0), arm.p(18.5, -12.0)
    step = rng.uniform(0.1, 0.4) if fracture.subtle else rng.uniform(0.8, 2.5)
    direction = np.subtract(tip, base) / max(math.dist(tip, base), 1e-6)
    before = (arm.m.cortex.copy(), arm.m.marrow.copy())
    arm.short_bone(centre, semi, 8.0, keep=arm.half_plane(a, b, base))
    arm.short_bone(
        centre,
        semi,
        8.0,
        keep=arm.half_plane(a, b, tip),
        shift=(float(direction[0] * step), float(direction[1] * step)),
    )
    part = (arm.m.cortex - before[0], arm.m.marrow - before[1])
    slab_gap(part, arm.g, a, b, (0.15 if fracture.subtle else 0.6) * arm.k, 0.8)
    arm.m.cortex[...], arm.m.marrow[...] = before[0] + part[0], before[1] + part[1]
    return a, b


def _carpus(
    arm: _Arm, rng: np.random.Generator | None, fracture: Fracture | None
) -> tuple[Pt2, Pt2] | None:
    child = arm.spec.age == "child"
    line = None
    for name, (centre, semi, turn) in _CARPALS.items():
        if child and name in ("pisiform", "trapezoid", "scaphoid", "trapezium") and arm.k < 0.7:
            continue  # not yet ossified in a young child
        scale = 0.75 if child else 1.0
        semi = (semi[0] * scale, semi[1] * scale, semi[2] * scale)
        turn = turn + arm.spec.pose.wrist_deviation * 0.5
        if name != "scaphoid" or rng is None or fracture is None:
            arm.short_bone(centre, semi, turn)
            continue
        # A waist fracture: the plane crosses the scaphoid's long axis; the distal pole pulls away.
        axis = (math.cos(math.radians(turn)), math.sin(math.radians(turn)))
        across = (-axis[1], axis[0])
        half = semi[1] + 1.0
        u, v = (
            centre[0] + axis[0] * rng.uniform(-1.5, 1.5),
            centre[1] + axis[1] * rng.uniform(-1.5, 1.5),
        )
        a = arm.p(u - across[0] * half, v - across[1] * half, centre[2])
        b = arm.p(u + across[0] * half, v + across[1] * half, centre[2])
        distal = arm.p(u + axis[0] * 8.0, v + axis[1] * 8.0)
        proximal = arm.p(u - axis[0] * 8.0, v - axis[1] * 8.0)
        step = rng.uniform(0.05, 0.3) if fracture.subtle else rng.uniform(0.5, 1.5)
        d = np.subtract(distal, proximal) / max(math.dist(distal, proximal), 1e-6)
        before = (arm.m.cortex.copy(), arm.m.marrow.copy())
        arm.short_bone(centre, semi, turn, keep=arm.half_plane(a, b, proximal))
        arm.short_bone(
            centre,
            semi,
            turn,
            keep=arm.half_plane(a, b, distal),
            shift=(float(d[0] * step), float(d[1] * step)),
        )
        part = (arm.m.cortex - before[0], arm.m.marrow - before[1])
        slab_gap(part, arm.g, a, b, (0.15 if fracture.subtle else 0.5) * arm.k, 0.85)
        arm.m.cortex[...], arm.m.marrow[...] = before[0] + part[0], before[1] + part[1]
        line = (a, b)
    return line


def _hand(arm: _Arm, spec: ProjectionSpec) -> None:
    pose = spec.pose
    dev = pose.wrist_deviation
    for i, ((u, v, w), length, r) in enumerate(_METACARPALS):
        spread = _RAY_ANGLES[i] + (
            pose.thumb_abduction if i == 0 else pose.finger_spread * (i - 2) / 2
        )
        angle = math.radians(spread + dev)
        du, dv = math.sin(angle), math.cos(angle)
        base = (u + dev * 0.3, v, w)
        head = (base[0] + du * length, base[1] + dv * length, w - (8.0 if i == 0 else 0.0))
        arm.long_bone(
            base,
            head,
            [0.0, 0.12, 0.85, 1.0],
            [r * 1.35, r, r * 0.95, r * 1.45],
            depth=0.85,
            cortex_mm=1.6,
        )
        flex = math.radians(pose.finger_flexion * (0.5 if i == 0 else 1.0))
        p = (head[0] + du * 2.0, head[1] + dv * 2.0, head[2])
        pr = r * 0.9
        bend = 0.0
        for j, seg in enumerate(_PHALANGES[i]):
            bend = min(bend + flex * (0.6 if j == 0 else 0.8), math.radians(75.0))
            along, down = math.cos(bend), -math.sin(bend)
            end = (p[0] + du * seg * along, p[1] + dv * seg * along, p[2] + seg * down)
            arm.long_bone(
                p,
                end,
                [0.0, 0.15, 0.85, 1.0],
                [pr * 1.3, pr, pr * 0.9, pr * 1.2],
                depth=0.8,
                cortex_mm=1.2,
            )
            p = (end[0] + du * 1.5 * along, end[1] + dv * 1.5 * along, end[2] + 1.5 * down)
            pr *= 0.8
        arm.soft_tube(head, p, 9.0 if i == 0 else 8.0, 6.0, 0.85)


def _soft_tissue(arm: _Arm) -> None:
    dev = arm.spec.pose.wrist_deviation
    arm.soft_tube((0.0, -450.0, -3.0), (1.0, 30.0, -3.0), 34.0, 29.0, 0.7)
    arm.soft_tube((1.0 + dev * 0.3, -5.0, -3.0), (1.0 + dev * 0.8, 95.0, -1.0), 31.0, 37.0, 0.42)
    arm.soft_tube((-14.0, 18.0, -8.0), (-30.0, 55.0, -12.0), 14.0, 10.0, 0.9)  # thenar eminence


def _implant(arm: _Arm, rng: np.random.Generator) -> None:
    """A volar locking plate on the distal radius with screws (stainless steel or titanium)."""
    density = rng.uniform(0.5, 1.3)
    top, bottom = arm.p(-10.0, -8.0, -12.0), arm.p(-7.0, -70.0, -12.0)
    tube(
        arm.m.metal,
        arm.g,
        bottom,
        top,
        np.array([0.0, 0.8, 1.0]),
        np.array([5.5, 5.5, 11.0]) * arm.k,
        density,
        depth_ratio=0.12,
        roll_deg=arm.roll,
    )
    for v in np.linspace(-62.0, -14.0, int(rng.integers(3, 7))):
        for u in (-16.0, -9.0, -2.0) if v > -18 else (-8.0,):
            c = arm.pose.point((u * arm.k, v * arm.k, -2.0 * arm.k))
            ellipsoid(
                arm.m.metal,
                arm.g,
                c,
                (1.4 * arm.k, 1.4 * arm.k, 12.0 * arm.k),
                arm.pose.matrix,
                density,
            )


def _cast(arm: _Arm, rng: np.random.Generator) -> None:
    """A plaster or fibreglass shell: its edges are lines that are not fractures."""
    end_v = rng.uniform(30.0, 70.0)
    a, b = arm.p(0.0, -rng.uniform(120.0, 240.0), -3.0), arm.p(0.0, end_v, -3.0)
    s = np.array([0.0, 1.0])
    outer = np.array([34.0 + rng.uniform(6, 10), 36.0 + rng.uniform(6, 10)]) * arm.k
    thick = rng.uniform(3.0, 7.0) * arm.k
    density = rng.uniform(0.4, 1.2) * (0.3 if rng.random() < 0.3 else 1.0)  # fibreglass is faint
    tube(arm.m.plaster, arm.g, a, b, s, outer, density, depth_ratio=0.75, roll_deg=arm.roll)
    tube(
        arm.m.plaster, arm.g, a, b, s, outer - thick, -density, depth_ratio=0.75, roll_deg=arm.roll
    )


def _mimics(arm: _Arm, spec: ProjectionSpec, rng: np.random.Generator) -> None:
    """Lines that are not fractures: nutrient canals, skin folds, overlapping cortices."""
    if "nutrient_canal" in spec.mimics:
        v = rng.uniform(-120.0, -50.0)
        side = rng.choice([-1.0, 1.0])
        a = arm.p(-7.0 + side * 6.0, v)
        b = arm.p(-7.0 + side * 3.0, v + rng.uniform(8.0, 14.0))
        slab_gap((arm.m.cortex,), arm.g, a, b, rng.uniform(0.3, 0.6) * arm.k, rng.uniform(0.2, 0.5))
    if "skin_fold" in spec.mimics:
        v = rng.uniform(-40.0, 20.0)
        a, b = arm.p(-45.0, v), arm.p(45.0, v + rng.uniform(-10.0, 10.0))
        slab_gap(
            (arm.m.soft, arm.m.fat),
            arm.g,
            a,
            b,
            rng.uniform(0.5, 1.5) * arm.k,
            -rng.uniform(0.1, 0.3),
        )
    if "overlap" in spec.mimics:  # a sesamoid over the thumb's joint crosses a cortex edge
        c = arm.pose.point((-33.0 * arm.k, 72.0 * arm.k, -5.0 * arm.k))
        ellipsoid(
            arm.m.cortex, arm.g, c, (2.5 * arm.k, 3.0 * arm.k, 2.5 * arm.k), arm.pose.matrix, 0.6
        )


def rounded_profile(
    prof_s: np.ndarray, prof_r: np.ndarray, length_mm: float, round_end: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """The radius profile with quarter-circle ends, so a tube ends in a dome, not a flat cut.
    `round_end=False` keeps the far end flat (the distal radius's articular surface)."""
    cap0 = min(prof_r[0] / max(length_mm, 1e-6), 0.45)
    cap1 = min(prof_r[-1] / max(length_mm, 1e-6), 0.45) if round_end else 1e-6
    t = np.linspace(0.0, 1.0, 6)[:-1]
    dome = np.sqrt(1.0 - (1.0 - t) ** 2)
    inner = (prof_s > cap0) & (prof_s < 1.0 - cap1)
    s = np.concatenate([t * cap0, prof_s[inner], 1.0 - cap1 + (1.0 - t[::-1]) * cap1])
    r_mid = np.interp(s, prof_s, prof_r)
    r = r_mid.copy()
    r[:5] *= dome
    if round_end:
        r[-5:] *= dome[::-1]
    r[:5] = np.maximum(r[:5], 0.05)
    r[-5:] = np.maximum(r[-5:], 0.05)
    return s, r


def _lerp(a: Pt2, b: Pt2, t: float) -> Pt2:
    return a[0] + (b[0] - a[0]) * t, a[1] + (b[1] - a[1]) * t
