"""The results as a radiologist sees them, in real viewers: OHIF (over Orthanc's DICOMweb, in
headless Chromium) draws the SR's region on the source image and shows the Secondary Capture's
heat map; DICOMscope draws the GSPS box over the untouched image.

Each check compares a rendering with the result against one without it, so a viewer that stops
showing the region or the marks fails the test. See docs/VIEWER.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from playwright.sync_api import Browser, sync_playwright
from pydicom.uid import generate_uid

from tests.conftest import require_tool
from tests.integration.analysed_study import AnalysedStudy, analysed_fractured_study
from tests.integration.dicomscope import DICOMSCOPE_JAR, DicomScope, Rgb
from tests.integration.ohif import (
    OHIF_VERSION,
    VIEWPORT_SIZE,
    DicomWebOrthanc,
    OhifSite,
    launch_chromium,
    ohif_dist,
    open_study,
    show_series,
    wait_for_pixels,
)
from tests.integration.orthanc import orthanc_available

pytestmark = pytest.mark.integration

# OHIF draws SR regions (its DICOMSRDisplayTool) in pure green; radiographs are grey.
MIN_REGION_PIXELS = 300
MIN_REGION_SIDE = 40
# The Secondary Capture's heat map: thousands of coloured pixels where the radiograph has none.
MIN_HEAT_PIXELS = 10_000
HEAT_SPREAD = 20
HEAT_MARGIN = 100
MIN_MARK_PIXELS = 300
MIN_RADIOGRAPH_PIXELS = 50_000
DICOMSCOPE_TOOLS = ("java", "dcmqridx", "Xvfb", "xdotool", "xwd", "xwdtopnm")


def radiograph_grey(rgb: Rgb) -> int:
    """Pixels of a greyscale image in mid-grey (not OHIF's black background or white text)."""
    spread = rgb.max(axis=2).astype(int) - rgb.min(axis=2).astype(int)
    return int(((spread <= 2) & (rgb[..., 0] > 40) & (rgb[..., 0] < 220)).sum())


def sr_green(rgb: Rgb) -> int:
    """Pixels in OHIF's SR-region green."""
    r, g, b = (rgb[..., i].astype(int) for i in range(3))
    return int(((g > 180) & (r < 100) & (b < 100)).sum())


def heat_map_colour(rgb: Rgb) -> int:
    """Coloured pixels in the middle of the viewport, away from OHIF's corner texts, icons and
    scroll bar: the heat map blended over the radiograph (and the SC's banner)."""
    height, width = rgb.shape[:2]
    middle = rgb[HEAT_MARGIN : height - HEAT_MARGIN, HEAT_MARGIN : width - HEAT_MARGIN]
    spread = middle.max(axis=2).astype(int) - middle.min(axis=2).astype(int)
    return int((spread > HEAT_SPREAD).sum())


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> AnalysedStudy:
    return analysed_fractured_study(tmp_path_factory.mktemp("viewer-study"))


@pytest.fixture(scope="module")
def ohif(
    study: AnalysedStudy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Browser, OhifSite]]:
    """OHIF over a private Orthanc holding the study and its results, and a headless Chromium
    (each test opens its own page: a fresh context, as a first visit)."""
    if not orthanc_available():
        require_tool("Orthanc")
    require_tool("chromium")
    dist = ohif_dist()
    if dist is None:
        pytest.fail(f"OHIF {OHIF_VERSION} is missing: run make install (npm @ohif/app)")
    with (
        DicomWebOrthanc(tmp_path_factory.mktemp("ohif-orthanc")) as pacs,
        OhifSite(dist, pacs) as site,
        sync_playwright() as playwright,
    ):
        for path in study.files:
            pacs.upload(path)
        browser = launch_chromium(playwright)
        try:
            yield browser, site
        finally:
            browser.close()


def test_ohif_draws_the_sr_region_on_the_source_image(
    ohif: tuple[Browser, OhifSite], study: AnalysedStudy
) -> None:
    browser, site = ohif
    page = browser.new_page(viewport=VIEWPORT_SIZE)
    open_study(page, site, study.study_uid)
    plain, grey = wait_for_pixels(page, radiograph_grey, MIN_RADIOGRAPH_PIXELS)
    assert grey >= MIN_RADIOGRAPH_PIXELS, "OHIF did not show the radiograph"
    assert sr_green(plain) == 0, "green on the radiograph before the SR is opened"
    show_series(page, "SR")
    shown, count = wait_for_pixels(page, sr_green, MIN_REGION_PIXELS)
    assert count >= MIN_REGION_PIXELS, f"OHIF drew {count} region pixels for the SR"
    ys, xs = np.nonzero((shown[..., 1] > 180) & (shown[..., 0] < 100) & (shown[..., 2] < 100))
    assert np.ptp(ys) >= MIN_REGION_SIDE and np.ptp(xs) >= MIN_REGION_SIDE, "no box"


def test_ohif_shows_the_secondary_capture_heat_map(
    ohif: tuple[Browser, OhifSite], study: AnalysedStudy
) -> None:
    browser, site = ohif
    page = browser.new_page(viewport=VIEWPORT_SIZE)
    open_study(page, site, study.study_uid)
    plain, grey = wait_for_pixels(page, radiograph_grey, MIN_RADIOGRAPH_PIXELS)
    assert grey >= MIN_RADIOGRAPH_PIXELS, "OHIF did not show the radiograph"
    assert heat_map_colour(plain) < 50, "colours on the radiograph itself"
    show_series(page, "OT")
    _, count = wait_for_pixels(page, heat_map_colour, MIN_HEAT_PIXELS)
    assert count >= MIN_HEAT_PIXELS, f"OHIF showed {count} heat-map pixels for the SC"


def test_dicomscope_draws_the_gsps_box_over_the_image(study: AnalysedStudy, tmp_path: Path) -> None:
    tools = {name: require_tool(name) for name in DICOMSCOPE_TOOLS}
    if not DICOMSCOPE_JAR.is_file():
        pytest.fail(f"{DICOMSCOPE_JAR} is missing: run make install (Debian package dicomscope)")
    state = next(p for p in study.gsps if _has_region(p))
    image = study.source_of(state)
    unmarked = _without_graphics(state, tmp_path / "unmarked.dcm")
    with DicomScope(tmp_path / "marked", tools) as viewer:
        marked_rgb = viewer.show(image, state)
    with DicomScope(tmp_path / "plain", tools) as viewer:
        plain_rgb = viewer.show(image, unmarked)
    changed = np.abs(marked_rgb.astype(int) - plain_rgb.astype(int)).max(axis=2) > 60
    bright = changed & (marked_rgb.min(axis=2) > 200)
    assert int(bright.sum()) >= MIN_MARK_PIXELS, f"{int(bright.sum())} mark pixels drawn"
    ys, xs = np.nonzero(bright)
    assert np.ptp(ys) >= MIN_REGION_SIDE and np.ptp(xs) >= MIN_REGION_SIDE, "no box drawn"


def _has_region(state: Path) -> bool:
    """Whether a presentation state carries a graphic (a box), not only text."""
    ds = pydicom.dcmread(state)
    return any("GraphicObjectSequence" in item for item in ds.get("GraphicAnnotationSequence", []))


def _without_graphics(state: Path, out: Path) -> Path:
    """The same presentation state without its annotations: the control rendering (same
    grey-level pipeline and displayed area, nothing drawn)."""
    ds = pydicom.dcmread(state)
    del ds.GraphicAnnotationSequence
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(out, enforce_file_format=True)
    return out
