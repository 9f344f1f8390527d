"""The projection renderer (the second world): its truth matches its pixels, it is reproducible,
and its archives carry what the cross-world measurement needs."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from tests.phantom_specs import folder_digest
from train.phantoms.archive import generate_archive, read_truth
from train.phantoms.plan import plan_study, renderer_of
from train.projection.render import BODY_PARTS, ProjectedView, render_view
from train.projection.spec import FRACTURE_KINDS, Fracture, Pose, ProjectionSpec

PLAIN = ProjectionSpec(
    body_part="wrist",
    view="PA",
    height=512,
    width=400,
    angle_deg=0.0,
    fingers_down=False,
    fracture=None,
    implant=False,
    cast=False,
    marker=None,
    ruler=False,
    frame=None,
    frame_shape="none",
    parts=1,
    layout="single",
    age="adult",
    size_factor=1.0,
    pose=Pose(0.0, 0.0, 10.0, 4.0, 10.0),
    roll_deg=0.0,
    field_mm=200.0,
    mimics=(),
    text=False,
    chain_strength=0.0,
)


def _render(spec: ProjectionSpec, seed: int = 3) -> tuple[np.ndarray, ProjectedView]:
    view = render_view(spec, np.random.default_rng(seed))
    return view.image, view


def _distance_to_segment(
    shape: tuple[int, int], a: tuple[float, float], b: tuple[float, float]
) -> np.ndarray:
    ys, xs = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    ax, ay = a
    bx, by = b
    length2 = max((bx - ax) ** 2 + (by - ay) ** 2, 1e-9)
    t = np.clip(((xs - ax) * (bx - ax) + (ys - ay) * (by - ay)) / length2, 0.0, 1.0)
    return np.hypot(xs - (ax + t * (bx - ax)), ys - (ay + t * (by - ay)))


@pytest.mark.parametrize("subtle", [False, True])
@pytest.mark.parametrize("kind", FRACTURE_KINDS)
def test_the_fracture_is_drawn_where_the_truth_says(kind: str, subtle: bool) -> None:
    """Render the same arm with and without the fracture: the change concentrates on the line
    that truth.csv records (a displaced fragment also moves its edges, less so)."""
    whole, _ = _render(PLAIN)
    image, rendered = _render(replace(PLAIN, fracture=Fracture(kind, subtle)))
    line = rendered.parts[0].fracture_line
    assert line is not None
    diff = np.abs(image - whole)
    dist = _distance_to_segment(image.shape, line[0], line[1])
    on_line = diff[dist <= 3].mean()
    beside = diff[(dist > 5) & (dist <= 40)].mean()
    far = diff[dist > 40].mean()
    assert on_line > 0.0015, (kind, on_line)
    assert on_line > 2 * beside and on_line > 10 * far, (kind, on_line, beside, far)


def _finger_direction(angle_deg: float, fingers_down: bool) -> np.ndarray:
    a = math.radians(angle_deg)
    d = np.array([-math.sin(a), -math.cos(a)])
    return -d if fingers_down else d


@pytest.mark.parametrize(
    ("angle", "down"), [(0.0, False), (35.0, False), (-80.0, False), (20.0, True)]
)
def test_landmarks_move_with_the_arm_and_sit_on_bone(angle: float, down: bool) -> None:
    image, rendered = _render(replace(PLAIN, angle_deg=angle, fingers_down=down), seed=5)
    marks = rendered.landmarks[0]
    axis = np.subtract(marks["third_metacarpal_head"], marks["radius_shaft"])
    axis /= np.linalg.norm(axis)
    cos = float(axis @ _finger_direction(angle, down))
    assert cos > math.cos(math.radians(12)), (angle, down, cos)
    assert rendered.parts[0].angle_deg == angle
    x, y = (round(v) for v in marks["capitate"])
    patch = image[y - 2 : y + 3, x - 2 : x + 3]
    assert patch.mean() > np.median(image) + 0.1  # bone is bright, not background


def test_mirrored_hand_puts_the_thumb_on_the_other_side() -> None:
    _, right = _render(PLAIN, seed=2)
    _, left = _render(replace(PLAIN, mirror=True), seed=2)
    r = right.landmarks[0]
    lft = left.landmarks[0]
    # The radial styloid is on the thumb side: left of the ulnar styloid for one hand, right
    # of it for the other.
    assert (r["radial_styloid"][0] - r["ulnar_styloid"][0]) * (
        lft["radial_styloid"][0] - lft["ulnar_styloid"][0]
    ) < 0


def test_the_part_box_holds_the_arm_and_two_parts_have_two_boxes() -> None:
    _, rendered = _render(replace(PLAIN, parts=2, layout="side_by_side", width=512), seed=4)
    parts = rendered.parts
    assert len(parts) == 2
    (a0, _, a1, _), (b0, _, b1, _) = parts[0].bbox, parts[1].bbox
    assert a1 <= b0 + 20 or b1 <= a0 + 20  # side by side, not on top of each other
    for part, marks in zip(parts, rendered.landmarks, strict=True):
        x0, y0, x1, y1 = part.bbox
        cx, cy = marks["capitate"]
        assert x0 <= cx <= x1 and y0 <= cy <= y1


def test_every_body_part_renders_and_decoys_have_no_parts() -> None:
    for part in BODY_PARTS:
        image, rendered = _render(replace(PLAIN, body_part=part), seed=6)
        assert image.dtype == np.float32 and np.isfinite(image).all()
        assert image.min() >= 0.0 and image.max() <= 1.0 and image.std() > 0.05
        assert (len(rendered.parts) == 0) == (part != "wrist")


def test_render_is_reproducible_and_seed_dependent() -> None:
    a, _ = _render(replace(PLAIN, chain_strength=1.0), seed=9)
    b, _ = _render(replace(PLAIN, chain_strength=1.0), seed=9)
    c, _ = _render(replace(PLAIN, chain_strength=1.0), seed=10)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_a_bad_spec_is_refused_with_the_field_named() -> None:
    with pytest.raises(ValueError, match="body_part"):
        render_view(replace(PLAIN, body_part="tail"), np.random.default_rng(0))
    with pytest.raises(ValueError, match="fracture kind"):
        render_view(
            replace(PLAIN, fracture=Fracture("greenstick", False)), np.random.default_rng(0)
        )


def test_projection_archive_same_seed_same_files(tmp_path: Path) -> None:
    generate_archive(
        tmp_path / "a", studies=3, seed=5, renderer="projection", syntaxes=("explicit_le",)
    )
    generate_archive(
        tmp_path / "b",
        studies=3,
        seed=5,
        renderer="projection",
        workers=2,
        syntaxes=("explicit_le",),
    )
    generate_archive(
        tmp_path / "c", studies=3, seed=6, renderer="projection", syntaxes=("explicit_le",)
    )
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b")
    assert folder_digest(tmp_path / "a") != folder_digest(tmp_path / "c")
    rows = list(read_truth(tmp_path / "a"))
    assert {r["renderer"] for r in rows} == {"projection"}
    for row in rows:
        drawn = json.loads(row["appearance"])
        assert drawn["renderer"] == "projection" and "photons" in drawn
        if row["body_part"] == "wrist" and not row["corrupt"]:
            assert len(json.loads(row["landmarks"])) == int(row["parts"])
            assert len(json.loads(row["part_angles_deg"])) == int(row["parts"])


def test_the_projection_world_has_its_own_decoys_tags_and_findings() -> None:
    plans = [
        plan_study(21, i, size="small", n_patients=900, renderer="projection") for i in range(1000)
    ]
    decoys = Counter(p.body_part for p in plans if p.body_part != "wrist")
    assert set(decoys) == set(BODY_PARTS) - {"wrist"}
    wrist_tagged = [p for p in plans if p.body_part != "wrist" and p.mistagged]
    assert len(wrist_tagged) >= 0.3 * sum(decoys.values())
    kinds = Counter(i.spec.fracture.kind for p in plans for i in p.instances if i.spec.fracture)
    assert set(kinds) == set(FRACTURE_KINDS)
    views = Counter(i.spec.view for p in plans if p.body_part == "wrist" for i in p.instances)
    assert {"PA", "LAT", "OBL"} <= set(views)


# The DICOM files of `generate_archive(studies=6, seed=5, syntaxes=("explicit_le",))` as the
# first world wrote them before the second renderer existed (commit 90453ea).
FIRST_WORLD_DIGEST = "990aa3ec250e015d7a7f29ccb7fa181fbeffff42edb9ce6ca9c68c549f9f2758"


def test_mixed_draws_both_worlds_and_phantom_archives_are_unchanged(tmp_path: Path) -> None:
    mixed = Counter(renderer_of(4, i, "mixed") for i in range(400))
    assert 150 < mixed["phantom"] < 250 and mixed["phantom"] + mixed["projection"] == 400
    # The first world's archives are byte for byte what they were: figures measured on them
    # before (the demo model's card) still describe the same data.
    generate_archive(tmp_path, studies=6, seed=5, syntaxes=("explicit_le",))
    assert folder_digest(tmp_path / "dicom") == FIRST_WORLD_DIGEST
    with pytest.raises(ValueError, match="renderer"):
        plan_study(4, 7, size="small", n_patients=50, renderer="raytracer")
