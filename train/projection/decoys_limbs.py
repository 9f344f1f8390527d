"""Decoys of the limbs: knee, lower leg, ankle, foot, elbow.

The leg is one model, from the distal femur to the forefoot, drawn in a frame whose origin is
the knee joint (y down the leg, x lateral in AP views and anterior in lateral views); the knee,
lower-leg, ankle and lateral-foot decoys are crops of it at different centres and fields, so
they agree with each other. Solids far outside the detector cost nothing (their window is empty).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from train.projection.decoys_scene import Scene, Side, mitre, shaft
from train.projection.materials import MU_CANCELLOUS, MU_FAT, MU_SOFT

LEG = 360.0  # knee joint line to tibial plafond, mm
HOLLOW = MU_SOFT - MU_CANCELLOUS  # a fossa: thin bone where marrow would be
FAT = MU_FAT - MU_SOFT  # a fat pad inside soft tissue


def _femur(sc: Scene, view: str, keep: Sequence[Side]) -> None:
    sc.limb((0.0, -440.0), (0.0, 70.0), (78.0, 70.0, 60.0, 54.0, 54.0), fat=6.0, keep=keep)
    if view == "AP":
        sc.long_bone(
            (0.0, -440.0), (0.0, -3.0), shaft(14, 14, 38, p1=5, round1=0.05), shaft(6, 6, 1.2, p1=3)
        )
        sc.blob(HOLLOW, (0.0, -6.0, 0.0), (8.0, 14.0, 20.0))  # intercondylar notch
        for s, y in ((-1.0, -14.0), (1.0, -16.0)):
            sc.blob(MU_CANCELLOUS - MU_SOFT, (s * 19.0, y, 0.0), (16.0, 12.0, 20.0))  # condyles
        sc.bone((3.0, -30.0, 48.0), (20.0, 23.0, 8.0), 0.8)  # patella, seen through the femur
    else:
        femur = shaft(14, 14, 30, p1=5, round1=0.03), shaft(6, 6, 0.5, p1=3)
        sc.long_bone((-8.0, -440.0), (-6.0, -18.0), *femur)
        sc.bone((-9.0, -18.0, -22.0), (28.0, 24.0, 20.0), 1.2)  # the two condyles, slightly
        sc.bone((-6.0, -16.0, 22.0), (27.0, 23.0, 20.0), 1.2)  # offset: a double contour
        sc.bone((40.0, -28.0, 0.0), (10.0, 24.0, 20.0), 1.8, yaw=8.0)  # patella
        sc.blob(FAT, (24.0, -62.0, 0.0), (8.0, 22.0, 25.0))  # suprapatellar fat
        sc.blob(FAT, (28.0, 10.0, 0.0), (10.0, 14.0, 22.0))  # Hoffa's fat pad


def _tibia_fibula(sc: Scene, view: str, keep: Sequence[Side]) -> None:
    shell = shaft(0.8, 6, 0.8, p0=3, p1=3)
    fib = 33.0 if view == "AP" else -22.0  # the fibula is lateral (AP) or posterior (lateral)
    sc.limb(
        (0.0, -70.0), (0.0, LEG + 10.0), (54.0, 54.0, 52.0, 46.0, 40.0, 36.0), fat=6.0, keep=keep
    )
    if view == "AP":
        sc.long_bone(
            (0.0, 5.0), (0.0, LEG + 2.0), shaft(38, 13, 27, 4, 5, round0=0.03, round1=0.02), shell
        )
        sc.blob(MU_CANCELLOUS - MU_SOFT, (0.0, 2.0, 0.0), (8.0, 8.0, 6.0))  # tibial spines
        sc.long_bone((-22.0, LEG - 12.0), (-24.0, LEG + 18.0), shaft(9, 8, 6, round1=0.3), 1.5)
        fib_end = fib * 0.93
    else:
        sc.long_bone(
            (-2.0, 5.0), (2.0, LEG + 2.0), shaft(34, 14, 24, 4, 5, round0=0.03, round1=0.02), shell
        )
        sc.bone((22.0, 46.0, 0.0), (8.0, 18.0, 12.0), 1.5)  # tibial tuberosity
        fib_end = -12.0
    sc.bone((fib, 40.0, -12.0), (10.0, 12.0, 10.0), 1.5)  # fibular head
    fibula = shaft(9, 6, 11, 8, 8, round0=0.02, round1=0.06)
    sc.long_bone((fib, 36.0), (fib_end, LEG + 30.0), fibula, shaft(1.5, 3, 1.5, p0=3, p1=3))


def _hindfoot_ap(sc: Scene) -> None:
    """The hindfoot under an AP ankle; the foot points at the source, so it is foreshortened
    below the ankle: tarsals and metatarsal bases stacked under the talus."""
    sc.limb((0.0, LEG + 10.0), (0.0, LEG + 125.0), shaft(36, 44, 40, 2, 2, round1=0.3), fat=6.0)
    sc.blob(MU_SOFT, (0.0, LEG + 60.0, 40.0), (30.0, 40.0, 45.0))  # the foot's length, end-on
    sc.bone((0.0, LEG + 25.0, 0.0), (24.0, 18.0, 22.0), 1.2)  # talus
    sc.bone((4.0, LEG + 62.0, -25.0), (21.0, 16.0, 25.0), 1.0)  # calcaneus
    sc.bone((-10.0, LEG + 78.0, 20.0), (16.0, 10.0, 10.0), 1.2)  # navicular
    sc.bone((18.0, LEG + 84.0, 10.0), (12.0, 12.0, 12.0), 1.2)  # cuboid
    for k in range(5):
        x = -22.0 + 11.0 * k
        sc.long_bone(
            (x, LEG + 95.0),
            (x * 1.15, LEG + 112.0),
            shaft(8, 6, 7, 2, 2, round0=0.3, round1=0.3),
            1.5,
            tilt=75.0,
        )


def _ray(
    sc: Scene,
    base: tuple[float, float],
    head: tuple[float, float],
    r: float,
    lengths: tuple[float, ...],
    bend: float,
    z: float = 0.0,
) -> None:
    """A metatarsal (or metacarpal) and its phalanges, continuing at `bend` degrees."""
    sc.long_bone(base, head, shaft(r + 2.0, r, r + 2.5, 4, 4, round0=0.05, round1=0.12), 1.6)
    ux, uy = head[0] - base[0], head[1] - base[1]
    n = math.hypot(ux, uy)
    a = math.atan2(uy, ux) + math.radians(bend)
    ux, uy = math.cos(a), math.sin(a)
    p = (head[0] + ux * 2.5, head[1] + uy * 2.5)
    for i, length in enumerate(lengths):
        if length <= 0.0:
            continue
        q = (p[0] + ux * length, p[1] + uy * length)
        pr = 0.8 * r * 0.85**i
        sc.long_bone(
            p, q, shaft(pr + 1.5, pr * 0.75, pr + 1.0, 4, 4, round0=0.12, round1=0.15), 1.2
        )
        p = (q[0] + ux * 2.5, q[1] + uy * 2.5)
    del n, z


def _foot_lateral(sc: Scene, rng: np.random.Generator) -> None:
    """The foot seen from the side, toes at +x, hinged at the ankle by up to +-12 degrees."""
    f = sc.sub(0.0, LEG + 16.0, float(rng.uniform(-12.0, 12.0)))
    f.limb(
        (-90.0, 35.0),
        (210.0, 55.0),
        shaft(25, 40, 8, 3, 2, round0=0.08, round1=0.05),
        fat=6.0,
        depth=1.3,
    )
    f.bone((3.0, 3.0, 0.0), (25.0, 15.0, 20.0), 1.5)  # talus
    f.bone((30.0, 10.0, 0.0), (13.0, 11.0, 13.0), 1.5)  # talar head
    f.bone((-22.0, 38.0, 0.0), (42.0, 21.0, 18.0), 1.2, yaw=-15.0)  # calcaneus
    f.bone((-58.0, 48.0, 0.0), (12.0, 14.0, 16.0), 1.5)  # calcaneal tuberosity
    f.bone((46.0, 15.0, 0.0), (8.0, 15.0, 16.0), 1.5)  # navicular
    f.bone((40.0, 40.0, 10.0), (15.0, 12.0, 14.0), 1.5)  # cuboid
    f.bone((62.0, 20.0, -5.0), (14.0, 15.0, 20.0), 1.5)  # cuneiforms
    for k in range(5):
        y0 = 22.0 + 6.0 * k
        _ray(f, (72.0, y0), (145.0, y0 + 25.0 + 2.0 * k), 5.0, (30.0 - 2 * k, 10.0, 8.0), -15.0)


def leg(sc: Scene, view: str, rng: np.random.Generator, flex: float = 0.0) -> None:
    """The whole leg around the knee frame: femur, knee, tibia and fibula, ankle, hindfoot
    (AP, the foot pointing at the source) or the foot in profile (lateral, knee flexed)."""
    upper, lower = mitre((0.0, 0.0), flex, 60.0)
    _femur(sc, view, upper)
    below = sc.sub(0.0, 0.0, flex)
    _tibia_fibula(below, view, lower)
    if view == "AP":
        _hindfoot_ap(below)
    else:
        _foot_lateral(below, rng)


def knee(sc: Scene, rng: np.random.Generator) -> str:
    """A knee, AP or lateral (flexed up to 40 degrees)."""
    view = "AP" if rng.random() < 0.5 else "lateral"
    flex = rng.uniform(0.0, 40.0) if view == "lateral" else 0.0
    leg(sc.sub(0.0, rng.uniform(-20.0, 20.0), 0.0), view, rng, flex)
    return view


def lower_leg(sc: Scene, rng: np.random.Generator) -> str:
    """A tibia and fibula, AP or lateral, centred on the shaft; the ends are often cut off."""
    view = "AP" if rng.random() < 0.5 else "lateral"
    flex = rng.uniform(0.0, 8.0) if view == "lateral" else 0.0
    leg(sc.sub(0.0, -LEG / 2.0 + rng.uniform(-50.0, 50.0), 0.0), view, rng, flex)
    return view


def ankle(sc: Scene, rng: np.random.Generator) -> str:
    """An ankle, AP (mortise) or lateral with the hindfoot."""
    view = "AP" if rng.random() < 0.5 else "lateral"
    leg(sc.sub(rng.uniform(-15.0, 15.0), -LEG - rng.uniform(0.0, 30.0), 0.0), view, rng)
    return view


def foot(sc: Scene, rng: np.random.Generator) -> str:
    """A foot, dorsoplantar (toes up) or lateral."""
    if rng.random() < 0.4:
        leg(sc.sub(-70.0, -LEG - 60.0, 0.0), "lateral", rng)
        return "lateral"
    sc.limb(
        (2.0, 128.0),
        (-4.0, -78.0),
        shaft(22, 44, 50, 2, 2, round0=0.12, round1=0.06),
        fat=5.0,
        depth=0.5,
    )
    sc.blob(MU_SOFT, (2.0, 75.0, 0.0), (30.0, 55.0, 25.0))  # the hindfoot is thicker
    sc.bone((8.0, 92.0, -10.0), (21.0, 36.0, 28.0), 1.5)  # calcaneus
    sc.bone((-4.0, 52.0, 15.0), (22.0, 26.0, 20.0), 1.5)  # talus
    sc.bone((-16.0, 14.0, 5.0), (17.0, 9.0, 15.0), 1.5, yaw=20.0)  # navicular
    sc.bone((20.0, 24.0, -5.0), (13.0, 17.0, 12.0), 1.5)  # cuboid
    for x, y, w in ((-22.0, -5.0, 10.0), (-8.0, -2.0, 7.0), (5.0, 0.0, 8.0)):
        sc.bone((x, y, 0.0), (w, 12.0, 11.0), 1.2)  # cuneiforms
    sc.bone((31.0, 10.0, 0.0), (8.0, 10.0, 8.0), 1.5)  # fifth metatarsal tuberosity
    rays = (  # base, head, shaft radius, phalanx lengths
        ((-22.0, -16.0), (-31.0, -80.0), 7.0, (32.0, 0.0, 24.0)),
        ((-8.0, -14.0), (-12.0, -95.0), 4.5, (26.0, 12.0, 9.0)),
        ((4.0, -11.0), (3.0, -90.0), 4.5, (22.0, 11.0, 9.0)),
        ((15.0, -6.0), (17.0, -82.0), 4.5, (20.0, 10.0, 8.0)),
        ((27.0, 6.0), (33.0, -70.0), 5.0, (18.0, 9.0, 8.0)),
    )
    spread = rng.uniform(-4.0, 6.0)
    for k, (base, head, r, phalanges) in enumerate(rays):
        bend = spread * (k - 1.5) / 2.0
        _ray(sc, base, head, r, phalanges, bend)
        a = math.atan2(head[1] - base[1], head[0] - base[0]) + math.radians(bend)
        ux, uy = math.cos(a), math.sin(a)
        tip = sum(phalanges) + 14.0
        sc.limb(
            (head[0] - ux * 10, head[1] - uy * 10),
            (head[0] + ux * tip, head[1] + uy * tip),
            shaft(r + 9, r + 8, r + 6, round1=0.2),
            fat=3.0,
            depth=0.8,
        )
    for x in (-36.0, -26.0):
        sc.bone((x, -76.0, -8.0), (4.0, 5.0, 4.0), 1.2)  # sesamoids
    return "DP"


def elbow(sc: Scene, rng: np.random.Generator) -> str:
    """An elbow, AP (extended, carrying angle) or lateral (flexed 70-110 degrees)."""
    view = "AP" if rng.random() < 0.5 else "lateral"
    humerus = shaft(11, 11, 31, p1=5, round1=0.03), shaft(4, 4, 0.8, p1=3)
    if view == "AP":
        carry = -rng.uniform(5.0, 15.0)
        upper, lower = mitre((0.0, 0.0), carry, 44.0)
        sc.limb((0.0, -330.0), (0.0, 50.0), (45.0, 42.0, 40.0, 40.0), fat=6.0, keep=upper)
        sc.long_bone((0.0, -330.0), (0.0, -6.0), *humerus)
        sc.bone((-31.0, -22.0, 0.0), (10.0, 9.0, 9.0), 1.5)  # medial epicondyle
        sc.bone((28.0, -20.0, 0.0), (7.0, 8.0, 8.0), 1.5)  # lateral epicondyle
        sc.bone((16.0, -4.0, 0.0), (11.0, 9.0, 11.0), 1.2)  # capitulum
        sc.bone((-9.0, -3.0, 0.0), (15.0, 9.0, 13.0), 1.2)  # trochlea
        sc.blob(HOLLOW, (0.0, -26.0, 0.0), (11.0, 12.0, 8.0))  # olecranon fossa
        fa = sc.sub(0.0, 0.0, carry)  # the carrying angle
        fa.limb((0.0, -50.0), (5.0, 280.0), (40.0, 40.0, 38.0, 30.0), fat=5.0, keep=lower)
        fa.bone((17.0, 12.0, 0.0), (11.0, 4.5, 11.0), 1.5)  # radial head
        fa.long_bone((17.0, 16.0), (27.0, 270.0), shaft(6, 6.5, 13, p0=2, p1=4), 2.2)
        fa.bone((14.0, 48.0, 0.0), (6.0, 8.0, 6.0), 1.5)  # radial tuberosity
        fa.long_bone((-6.0, -25.0), (-14.0, 270.0), shaft(15, 6.5, 7), shaft(1, 3, 3, 2))  # ulna
    else:
        flex = -rng.uniform(70.0, 110.0)
        upper, lower = mitre((6.0, -4.0), flex, 40.0)
        sc.limb((0.0, -330.0), (0.0, 60.0), (45.0, 44.0, 42.0, 42.0), fat=6.0, keep=upper)
        sc.long_bone((0.0, -330.0), (4.0, -10.0), shaft(11, 11, 17, p1=5), humerus[1])
        sc.bone((6.0, -4.0, 0.0), (14.0, 14.0, 22.0), 1.5)  # capitellum and trochlea
        sc.bone((6.0, -4.0, 0.0), (9.0, 9.0, 19.0), 1.0)
        sc.blob(HOLLOW, (1.0, -26.0, 0.0), (7.0, 9.0, 15.0))  # fossae: the hourglass
        sc.blob(FAT, (18.0, -32.0, 0.0), (5.0, 14.0, 15.0))  # anterior fat pad
        fa = sc.sub(6.0, -4.0, flex)
        fa.limb((0.0, -60.0), (0.0, 270.0), (42.0, 42.0, 40.0, 32.0), fat=5.0, keep=lower)
        fa.long_bone((-8.0, -32.0), (-7.0, 270.0), shaft(13, 6.5, 7, p0=3, round0=0.06), 2.0)
        fa.bone((9.0, 5.0, 0.0), (6.0, 6.0, 10.0), 1.5)  # coronoid
        fa.bone((13.0, 14.0, 0.0), (11.0, 5.0, 11.0), 1.5)  # radial head
        fa.long_bone((13.0, 18.0), (16.0, 270.0), shaft(6, 6.5, 12, p0=2, p1=4), 2.2)
    return view
