"""Decoys of the axial skeleton and its girdles: chest, pelvis, spine, shoulder, skull.

Each builder draws one body part into a `Scene` (its own anatomical frame, mm, origin at the
part's centre, y down) and returns the view it chose. Sizes are those of an adult; the caller
scales, turns, mirrors and shifts the whole part.
"""

from __future__ import annotations

import math

import numpy as np

from train.projection.decoys_scene import Scene, shaft
from train.projection.materials import MU_CANCELLOUS, MU_CORTEX, MU_LUNG, MU_SOFT

# Excess over soft tissue of air (a gas pocket, a sinus) and of lung, and back again.
AIR = -MU_SOFT
LUNG = MU_LUNG - MU_SOFT
UNLUNG = MU_SOFT - MU_LUNG
ENAMEL = 1.5 * MU_CORTEX - MU_SOFT


def ribs(sc: Scene, mid_x: float, side: float, top_y: float, count: int, spacing: float) -> None:
    """One hemithorax's ribs seen PA: each a loop from the spine round the side to the front,
    sloping down towards the sternum as real ribs do (posterior arcs flat, anterior oblique)."""
    for i in range(count):
        half_width = 150.0 * (0.45 + 0.55 * min(1.0, (i + 1) / 5.0) ** 0.6)
        y0 = top_y + i * spacing
        pts = []
        for phi in np.linspace(0.0, 0.8 * math.pi, 9):
            lift = 12.0 * math.sin(min(phi * 1.6, math.pi))
            drop = 80.0 * ((1.0 - math.cos(phi)) / 2.0) ** 1.8
            x = mid_x + side * (16.0 + half_width * math.sin(phi))
            pts.append((x, y0 - lift + drop, -0.6 * half_width * math.cos(phi)))
        sc.chain(pts, (5.0, 6.5, 6.5, 5.5), 1.2, depth=0.55)


def lung(sc: Scene, side: float, apex_y: float, base_y: float) -> None:
    """One lung seen PA, from its apex to the costophrenic angle, over a diaphragm dome."""
    floor = (0.0, -1.0, base_y)  # lung and dome share one cut, so they cancel exactly there
    radii = shaft(4, 64, 68, 6, 2, round0=0.06)
    sc.rod(LUNG, (side * 82, apex_y), (side * 92, base_y + 20), radii, depth=1.1, keep=[floor])
    # The diaphragm: the top cap of a tall ellipsoid fills the lung base back in, steeply at
    # its rim as a dome seen edge-on does.
    sc.blob(UNLUNG, (side * 92, base_y + 75, 0.0), (78.0, 125.0, 82.0), keep=[floor])


def vertebra(sc: Scene, size: float, view: str, lumbar: bool) -> None:
    """A vertebra at the frame's origin: body (an elliptic cylinder with dense endplates),
    pedicles, spinous and transverse processes; AP (seen from the front) or lateral."""
    w, h, d = 22.0 * size, 13.0 * size, 17.0 * size  # semi width, semi height, semi depth
    endplate = (MU_CORTEX - MU_CANCELLOUS) * sc.bone_gain
    if view == "AP":
        sc.long_bone((0.0, -h), (0.0, h), (w, w * 0.92, w), 1.2, depth=d / w)
        for y in (-h + 1.0, h - 1.0):
            sc.blob(endplate, (0.0, y, 0.0), (w * 0.98, 1.0, d * 0.98))
        for s in (-1.0, 1.0):
            sc.bone((s * (w - 6.0), -0.35 * h, -d - 8.0), (4.5, 6.5, 11.0), 2.0)
            reach = (28.0 if lumbar else 14.0) * size
            sc.long_bone((s * (w - 4.0), -0.3 * h), (s * (w + reach), -0.45 * h), (6.0, 4.5), 1.5)
        sc.bone((0.0, 0.45 * h, -d - 30.0), (4.5, 9.0, 18.0), 1.5)
    else:
        sc.long_bone((0.0, -h), (0.0, h), (d, d * 0.92, d), 1.2, depth=w / d)
        for y in (-h + 1.0, h - 1.0):
            sc.blob(endplate, (0.0, y, 0.0), (d * 0.98, 1.0, w * 0.98))
        sc.long_bone((-d + 2.0, -0.45 * h), (-d - 16.0 * size, -0.45 * h), 0.3 * h, 1.5, depth=2.0)
        sc.bone((-d - 24.0 * size, 0.0, 0.0), (8.0, 1.1 * h, 0.7 * w), 1.5)
        tip = (-d - 58.0 * size, 8.0 * size) if lumbar else (-d - 45.0 * size, 30.0 * size)
        sc.long_bone((-d - 26.0 * size, 0.0), tip, (8.0, 5.5, 7.0), 1.5, depth=0.5)


def column(
    sc: Scene, x: float, y_top: float, y_bottom: float, view: str, lumbar: bool, curve: float
) -> None:
    """A run of vertebrae with discs between them; lateral runs follow a lordotic/kyphotic
    curve (`curve` mm of sway) and each body tilts with it."""
    size = 1.25 if lumbar else 0.95
    pitch = (2.0 * 13.0 + (9.0 if lumbar else 6.0)) * size
    span = y_bottom - y_top
    y = y_top
    while y <= y_bottom:
        u = (y - y_top) / max(span, 1.0)
        sway = curve * math.sin(math.pi * u) if view != "AP" else 0.0
        slope = curve * math.pi / max(span, 1.0) * math.cos(math.pi * u) if view != "AP" else 0.0
        vertebra(sc.sub(x + sway, y, -math.degrees(math.atan(slope))), size, view, lumbar)
        y += pitch


def chest(sc: Scene, rng: np.random.Generator) -> str:
    """A PA chest: thorax, lungs, heart, mediastinum, ribs, clavicles, scapulae, spine."""
    sc.bone_gain = 0.5  # chest films are taken at high kV, where bone stands out less
    sc.body((0.0, 80.0, 0.0), (165.0, 310.0, 105.0), fat=8.0 + 12.0 * rng.random())
    sc.limb((0.0, -340.0), (0.0, -215.0), (55.0, 56.0))
    for s in (-1.0, 1.0):
        sc.blob(MU_SOFT, (s * 150.0, -150.0, 0.0), (65.0, 42.0, 55.0))
        sc.limb((s * 188.0, -215.0), (s * 205.0, 220.0), shaft(20, 48, 42, 4, 1, round0=0.1))
        sc.bone((s * 182.0, -158.0, 0.0), (25.0, 27.0, 25.0), 1.8)
        sc.long_bone((s * 186.0, -140.0), (s * 200.0, 200.0), shaft(20, 13, 12, 3, 2), 4.0)
        lung(sc, s, -150.0, 140.0 if s < 0 else 152.0)  # the right hemidiaphragm sits higher
        sc.chain(
            [
                (
                    s * (16.0 + 140.0 * t),
                    -150.0 - 35.0 * t + 6.0 * math.sin(2.0 * math.pi * t),
                    45.0 - 65.0 * t,
                )
                for t in np.linspace(0.0, 1.0, 9)
            ],
            (7.0, 5.5, 6.0, 7.5),
            2.0,
        )
        sc.bone((s * 140.0, -85.0, -75.0), (40.0, 75.0, 5.0), 1.5, yaw=s * -12.0)
        ribs(sc, 0.0, s, -168.0, 10, 25.0)
    sc.blob(UNLUNG, (42.0, 80.0, 25.0), (74.0, 58.0, 48.0), yaw=-25.0)  # heart
    sc.blob(UNLUNG, (30.0, -72.0, 0.0), (18.0, 18.0, 18.0))  # aortic knob
    sc.rod(AIR, (0.0, -340.0), (0.0, -45.0), 8.0)  # trachea
    sc.rod(AIR, (0.0, -45.0), (-35.0, -15.0), (7.0, 5.0))
    sc.rod(AIR, (0.0, -45.0), (35.0, -8.0), (6.5, 4.5))
    column(sc, 0.0, -260.0, 240.0, "AP", False, 0.0)
    return "PA"


def pelvis(sc: Scene, rng: np.random.Generator) -> str:
    """An AP pelvis: iliac wings, sacrum, hips and proximal femora, pubic rami, obturators."""
    wide = 1.0 + 0.12 * rng.random()  # a female pelvis is wider
    sc.body((0.0, -90.0, 0.0), (178.0 * wide, 210.0, 120.0), fat=12.0 + 18.0 * rng.random())
    column(sc, 0.0, -255.0, -150.0, "AP", True, 0.0)
    for s in (-1.0, 1.0):
        sc.limb((s * 95.0, -10.0), (s * 85.0, 430.0), shaft(10, 85, 70, 8, 1), fat=12.0)
        sc.bone(
            (s * 92.0 * wide, -95.0, -15.0), (72.0, 62.0, 11.0), 2.5, yaw=s * 22.0, roll=s * 45.0
        )
        sc.bone((s * 86.0 * wide, -25.0, 0.0), (30.0, 38.0, 25.0), 1.2)  # body of the ilium
        hx, hy = s * 98.0 * wide, 18.0
        sc.chain(
            [
                (hx + 28.0 * math.cos(a), hy + 28.0 * math.sin(a), 0.0)
                for a in np.radians(np.linspace(-165.0, -15.0, 9))
            ],
            4.0,
            1.5,
        )
        sc.bone((hx, hy, 0.0), (24.0, 24.0, 24.0), 2.0)  # femoral head
        trochanter = (s * (135.0 * wide + 6.0), 55.0)
        sc.long_bone((hx, hy), trochanter, shaft(17, 14, 19, 2, 2, round1=0.1), 2.5, tilt=20.0)
        sc.bone((trochanter[0] + s * 4.0, trochanter[1] - 8.0, 0.0), (17.0, 24.0, 22.0), 1.5)
        sc.bone((s * (112.0 * wide), 92.0, 0.0), (9.0, 10.0, 9.0), 1.5)  # lesser trochanter
        shaft_end = (s * 108.0 * wide, 430.0)
        sc.long_bone(
            trochanter, shaft_end, shaft(24, 15, 15, 4, 2, round0=0.04), shaft(2.5, 7, 7, 4, 2)
        )
        ramus = shaft(12.0, 9.0, 11.0, 2, 2, round0=0.15, round1=0.15)
        sc.long_bone((s * 85.0 * wide, 28.0), (s * 12.0, 64.0), ramus, 2.0, tilt=30.0)
        sc.bone((s * 22.0, 85.0, 10.0), (15.0, 24.0, 16.0), 1.8)  # pubic body
        sc.long_bone((s * 18.0, 95.0), (s * 75.0 * wide, 125.0), ramus, 2.0)
        sc.long_bone(
            (s * 92.0 * wide, 25.0),
            (s * 72.0 * wide, 125.0),
            shaft(20, 13, 16, 2, 2, round0=0.1, round1=0.15),
            2.0,
        )
        sc.bone((s * 70.0 * wide, 125.0, 0.0), (17.0, 13.0, 15.0), 1.8)  # ischial tuberosity
        for k in range(4):
            sc.blob(-0.02, (s * 18.0, -95.0 + 24.0 * k, -40.0), (5.0, 4.0, 8.0))  # sacral foramina
    sc.long_bone(
        (0.0, -140.0),
        (0.0, 40.0),
        shaft(52, 40, 10, 1.5, 1.5, round0=0.05, round1=0.1),
        1.5,
        depth=0.4,
        tilt=30.0,
    )
    for _ in range(int(rng.integers(3, 9))):
        c = (rng.uniform(-120.0, 120.0), rng.uniform(-230.0, -20.0), rng.uniform(-40.0, 80.0))
        r = rng.uniform(8.0, 26.0)
        sc.blob(AIR * 0.6, c, (r, r * rng.uniform(0.5, 1.0), r), yaw=rng.uniform(0.0, 180.0))
    return "AP"


def spine(sc: Scene, rng: np.random.Generator) -> str:
    """A lumbar or thoracic spine, AP or lateral, with the trunk around it."""
    view = "AP" if rng.random() < 0.5 else "lateral"
    lumbar = bool(rng.random() < 0.5)
    if view == "AP":
        sc.body((0.0, 0.0, 0.0), (165.0, 420.0, 110.0), fat=10.0 + 15.0 * rng.random())
        column(sc, 0.0, -230.0, 230.0, "AP", lumbar, 0.0)
        for s in (-1.0, 1.0):
            if lumbar:
                sc.rod(
                    0.004, (s * 30.0, -120.0), (s * 70.0, 260.0), (20.0, 45.0), depth=1.0
                )  # psoas
                sc.bone(
                    (s * 120.0, 250.0, -15.0), (72.0, 62.0, 11.0), 2.5, yaw=s * 22.0, roll=s * 45.0
                )
            else:
                lung(sc, s, -330.0, 140.0 if s < 0 else 152.0)
                ribs(sc, 0.0, s, -250.0, 16, 27.0)
        if not lumbar:
            sc.blob(UNLUNG, (22.0, 30.0, 25.0), (70.0, 56.0, 55.0), yaw=-35.0)
    else:
        sc.body((0.0, 0.0, 0.0), (135.0, 420.0, 160.0), fat=10.0 + 15.0 * rng.random())
        curve = 18.0 if lumbar else -22.0  # lordosis bulges forward, kyphosis back
        column(sc, -45.0, -230.0, 230.0, "lateral", lumbar, curve)
        if not lumbar:
            floor = (0.0, -1.0, 140.0)
            sc.rod(LUNG, (40, -280), (50, 160), (60.0, 75.0, 80.0), depth=1.6, keep=[floor])
            sc.blob(UNLUNG, (50.0, 215.0, 0.0), (80.0, 125.0, 125.0), keep=[floor])
            for i in range(12):
                y0 = -250.0 + 28.0 * i
                for z in (-60.0, 60.0):
                    pts = [
                        (-60.0 + 150.0 * t, y0 + 70.0 * t * t - 10.0 * math.sin(math.pi * t), z)
                        for t in np.linspace(0.0, 1.0, 7)
                    ]
                    sc.chain(pts, (5.5, 6.0, 5.0), 1.2, depth=0.55)
        else:
            for _ in range(int(rng.integers(2, 7))):
                c = (rng.uniform(0.0, 110.0), rng.uniform(-150.0, 150.0), rng.uniform(-60.0, 60.0))
                sc.blob(AIR * 0.9, c, (rng.uniform(8.0, 22.0),) * 3)
    return ("lumbar " if lumbar else "thoracic ") + view


def shoulder(sc: Scene, rng: np.random.Generator) -> str:
    """An AP shoulder (right side drawn; mirroring gives the left): humeral head under the
    acromion, glenoid, scapula, clavicle, and the lateral chest wall with ribs and lung."""
    sc.body((150.0, 150.0, 0.0), (175.0, 270.0, 105.0), fat=10.0)
    sc.limb((-35.0, -75.0), (-60.0, 290.0), shaft(30, 52, 44, 4, 1.5, round0=0.12))
    sc.limb((185.0, -450.0), (155.0, -40.0), shaft(55, 58, 15, 1, 8))  # neck, into the trunk
    sc.rod(LUNG, (115.0, -70.0), (150.0, 300.0), shaft(10, 62, 70, 6, 2, round0=0.05), depth=1.1)
    ribs(sc, 200.0 + 20.0 * rng.random(), -1.0, -95.0, 9, 25.0)
    sc.bone((-25.0, 0.0, 0.0), (27.0, 28.0, 26.0), 1.8)  # humeral head
    sc.bone((-50.0, 5.0, 0.0), (14.0, 18.0, 16.0), 1.5)  # greater tuberosity
    sc.long_bone(
        (-28.0, 8.0), (-52.0, 290.0), shaft(26, 12, 12, 8, 2, round0=0.03), shaft(0.4, 5, 5, 6, 2)
    )
    sc.bone((12.0, 2.0, 0.0), (8.0, 22.0, 15.0), 2.0)  # glenoid
    neck = shaft(14, 10, 10, 2, 2, round0=0.2, round1=0.2)
    sc.long_bone((8.0, 6.0), (50.0, 15.0), neck, 1.5)  # scapular neck
    sc.bone((65.0, 75.0, -35.0), (42.0, 85.0, 4.0), 1.5, yaw=-15.0)  # scapular blade
    sc.long_bone((24.0, 28.0), (68.0, 160.0), (7.0, 5.0, 6.0), 1.8)  # lateral border
    sc.long_bone((120.0, -5.0), (5.0, -38.0), (6.0, 8.0), 2.0, tilt=30.0)  # scapular spine
    sc.bone((-18.0, -45.0, 0.0), (28.0, 9.0, 16.0), 2.0, yaw=-10.0)  # acromion
    sc.long_bone((32.0, -2.0), (22.0, -32.0), (7.0, 6.0), 2.0)  # coracoid
    sc.bone((10.0, -36.0, 10.0), (11.0, 7.0, 8.0), 1.8)
    sc.chain(
        [
            (
                8.0 + 175.0 * t,
                -55.0 + 30.0 * t - 10.0 * math.sin(2.0 * math.pi * t),
                -20.0 + 60.0 * t,
            )
            for t in np.linspace(0.0, 1.0, 9)
        ],
        (9.0, 7.5, 8.0, 10.0),
        2.5,
    )
    return "AP"


def skull(sc: Scene, rng: np.random.Generator) -> str:
    """A skull, PA or lateral: a vault with a bright tangential rim, orbits, sinuses,
    mandible, teeth and the upper cervical spine."""
    view = "PA" if rng.random() < 0.5 else "lateral"
    teeth = int(rng.integers(10, 15))
    if view == "PA":
        sc.body((0.0, 0.0, 0.0), (78.0, 102.0, 96.0), fat=5.0)
        sc.limb((0.0, 20.0), (0.0, 300.0), shaft(20, 55, 60, 8, 1, round0=0.1))  # neck
        sc.bone((0.0, -18.0, 0.0), (72.0, 88.0, 90.0), 7.0)
        for s in (-1.0, 1.0):
            sc.bone((s * 32.0, 8.0, 60.0), (19.0, 17.0, 20.0), 2.0, marrow=MU_SOFT)  # orbit
            sc.blob(AIR, (s * 28.0, 45.0, 40.0), (15.0, 16.0, 18.0))  # maxillary sinus
            sc.long_bone((s * 18.0, 22.0), (s * 62.0, 2.0), (9.0, 13.0), 4.0)  # petrous ridge
            sc.bone((s * 62.0, 20.0, -5.0), (12.0, 25.0, 14.0), 2.0)  # mastoid
        sc.blob(AIR, (0.0, 40.0, 50.0), (13.0, 24.0, 30.0))  # nasal cavity
        sc.blob(AIR, (0.0, -28.0, 72.0), (18.0, 10.0, 8.0))  # frontal sinus
        for s in (-1.0, 1.0):
            pts = [(s * (52.0 - 4.0 * t), 12.0 + 68.0 * t, -20.0) for t in np.linspace(0, 1, 4)]
            pts += [
                (s * 48.0 * math.cos(a), 82.0 + 12.0 * math.sin(a), 80.0 * math.sin(a) - 20.0)
                for a in np.linspace(0.1, math.pi / 2, 7)
            ]
            sc.chain(pts, (7.0, 8.0, 9.0, 10.0), 2.5)
        for k in range(teeth):
            a = math.pi * (k + 0.5) / teeth
            x, z = 38.0 * math.cos(a), 30.0 + 30.0 * math.sin(a)
            for y in (60.0, 77.0):
                sc.blob(ENAMEL * sc.bone_gain, (x, y, z), (3.5, 8.0, 4.0))
        column(sc, 0.0, 95.0, 220.0, "AP", False, 0.0)
    else:
        sc.body((0.0, 0.0, 0.0), (98.0, 102.0, 78.0), fat=5.0)
        sc.blob(MU_SOFT, (55.0, 55.0, 0.0), (40.0, 50.0, 50.0))  # the face
        sc.limb((-25.0, 30.0), (-35.0, 300.0), shaft(20, 55, 60, 8, 1, round0=0.1))  # neck
        sc.bone((-5.0, -20.0, 0.0), (92.0, 84.0, 70.0), 7.0)
        sc.chain(
            [
                (78.0, -8.0, 0.0),
                (45.0, 2.0, 0.0),
                (18.0, 14.0, 0.0),
                (-10.0, 22.0, 0.0),
                (-45.0, 32.0, 0.0),
            ],
            (2.5, 3.0, 4.0, 5.0),
            1.2,
            depth=3.0,
        )  # cranial base
        sc.bone((6.0, 10.0, 0.0), (9.0, 6.0, 12.0), 2.0, marrow=MU_SOFT)  # sella
        for z in (-40.0, 40.0):
            sc.bone((-32.0, 22.0, z), (18.0, 10.0, 12.0), 3.0)  # petrous bone
        sc.bone((68.0, 2.0, 0.0), (11.0, 18.0, 32.0), 2.0, marrow=MU_SOFT)  # orbits
        sc.bone((48.0, 55.0, 0.0), (30.0, 10.0, 30.0), 2.0)  # hard palate and alveolus
        sc.blob(AIR, (50.0, 32.0, 0.0), (20.0, 14.0, 35.0))  # maxillary sinuses
        sc.blob(AIR, (28.0, 18.0, 0.0), (11.0, 9.0, 12.0))  # sphenoid sinus
        sc.blob(AIR, (80.0, -35.0, 0.0), (8.0, 14.0, 14.0))  # frontal sinus
        sc.long_bone((86.0, -5.0), (95.0, 25.0), (4.0, 2.5), 1.5)  # nasal bone
        for z in (-42.0, 42.0):
            pts = [(-14.0, 28.0, z), (-12.0, 55.0, z), (-6.0, 86.0, z)]
            pts += [(15.0 + 50.0 * t, 92.0 + 6.0 * t, z * (1.0 - 0.8 * t)) for t in (0, 0.5, 1.0)]
            sc.chain(pts, (7.0, 8.0, 10.0, 10.0), 2.5)
        for k in range(teeth):
            x = 28.0 + 42.0 * k / max(teeth - 1, 1)
            for y in (66.0, 80.0):
                sc.blob(ENAMEL * sc.bone_gain, (x, y, 0.0), (4.5, 7.0, 12.0))
        column(sc, -35.0, 110.0, 250.0, "lateral", False, -8.0)
    return view
