"""The suspected region: the heat map's peak component, mapped back to source pixels."""

from __future__ import annotations

import numpy as np

from pipeline.localisation import distance_to_points, suspected_region
from pipeline.preprocess.study import View
from pipeline.preprocess.transforms import Affine


def _view(transform: Affine, size: int = 64) -> View:
    return View(
        sop_instance_uid="1.2.3",
        part=0,
        n_parts=1,
        pixels=np.zeros((size, size), dtype=np.float32),
        transform=transform,
        bbox=(0, 0, size, size),
        rotation_deg=0.0,
        fingers_flipped=False,
        inverted=False,
    )


def _heat(size: int = 64) -> np.ndarray:
    heat = np.zeros((size, size), dtype=np.float32)
    heat[10:20, 30:40] = 1.0  # the peak's blob: columns 30-39, rows 10-19
    heat[50:60, 5:15] = 0.4  # a weaker blob below half the peak: not part of the region
    heat[52, 8] = 0.45
    return heat


def test_region_is_the_peak_component_mapped_through_scale_and_shift() -> None:
    # View pixel (x, y) samples source (2x + 100, 3y + 50).
    transform = Affine.translation(100.0, 50.0).then(Affine.scaling(2.0, 3.0))
    region = suspected_region(_view(transform), _heat())
    assert region is not None
    assert region.view_box == (30, 10, 39, 19)
    expected = np.array([[29.5, 9.5], [39.5, 9.5], [39.5, 19.5], [29.5, 19.5]])
    expected = expected * [2.0, 3.0] + [100.0, 50.0]
    np.testing.assert_allclose(region.corners, expected)
    assert region.centre == (2 * 34.5 + 100, 3 * 14.5 + 50)
    points = region.dicom_points()
    assert points.shape == (5, 2)
    np.testing.assert_allclose(points[0], points[-1])
    np.testing.assert_allclose(points[0], expected[0] + 0.5)


def test_region_follows_a_rotated_view_and_contains_its_centre_only() -> None:
    transform = Affine.translation(200.0, 200.0).then(Affine.rotation(30.0))
    view = _view(transform)
    region = suspected_region(view, _heat())
    assert region is not None
    inside = view.to_source(np.array([[34.5, 14.5], [31.0, 11.0]]))
    outside = view.to_source(np.array([[10.0, 55.0], [45.0, 14.5], [34.5, 25.0]]))
    assert region.contains(inside).all()
    assert not region.contains(outside).any()
    # The corners are a rectangle turned with the view: equal diagonals, 10 x 10 view pixels.
    c = region.corners
    np.testing.assert_allclose(np.hypot(*(c[1] - c[0])), 10.0)
    np.testing.assert_allclose(np.hypot(*(c[2] - c[0])), np.hypot(*(c[3] - c[1])))


def test_no_region_without_evidence() -> None:
    view = _view(Affine())
    assert suspected_region(view, None) is None
    assert suspected_region(view, np.zeros((64, 64), dtype=np.float32)) is None


def test_distance_to_a_sampled_line() -> None:
    line = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    assert distance_to_points((10.0, 5.0), line) == 5.0
    assert distance_to_points((23.0, 4.0), line) == 5.0
