"""Screenshots of the node's results in real viewers, for docs/VIEWER.md.

A fractured synthetic study goes through the node's own analysis (tests/integration/
analysed_study.py); then
- OHIF (npm @ohif/app, over a private Orthanc's DICOMweb, in headless Chromium) shows the SR's
  region on the source image and the Secondary Capture;
- DICOMscope (under a private Xvfb) shows the GSPS over the untouched image;
- dcmtk's dsr2html renders the SR as text, shown in Chromium.

Usage: .venv/bin/python bench/viewer_screenshots.py [--out docs/viewer]  (about a minute)
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from playwright.sync_api import Browser, ViewportSize, sync_playwright

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.conftest import require_tool
from tests.integration.analysed_study import AnalysedStudy, analysed_fractured_study
from tests.integration.dicomscope import DicomScope
from tests.integration.ohif import (
    VIEWPORT_SIZE,
    DicomWebOrthanc,
    OhifSite,
    launch_chromium,
    ohif_dist,
    open_study,
    show_series,
    wait_for_pixels,
)
from tests.integration.test_viewer import (
    MIN_HEAT_PIXELS,
    MIN_RADIOGRAPH_PIXELS,
    MIN_REGION_PIXELS,
    heat_map_colour,
    radiograph_grey,
    sr_green,
)

REPO = Path(__file__).resolve().parents[1]
WIDTH = 720
COLOURS = 256
DICOMSCOPE_TOOLS = ("java", "dcmqridx", "Xvfb", "xdotool", "xwd", "xwdtopnm")
# DICOMscope's image panel: the image and the margin where it puts display-relative text.
DICOMSCOPE_CROP = (slice(0, 764), slice(0, 628))


def save_small(rgb: np.ndarray, path: Path, width: int = WIDTH, colours: int = COLOURS) -> None:
    """A modest PNG: scaled to `width`, a palette of `colours` colours."""
    image = Image.fromarray(rgb.astype(np.uint8))
    if image.width > width:
        image = image.resize(
            (width, round(image.height * width / image.width)), Image.Resampling.LANCZOS
        )
    image.quantize(colours, dither=Image.Dither.NONE).save(path, optimize=True)


def ohif_shots(study: AnalysedStudy, work: Path, browser: Browser, out: Path) -> None:
    """The SR's region and the Secondary Capture, as OHIF shows them."""
    dist = ohif_dist()
    if dist is None:
        raise SystemExit("OHIF is missing: run make install (npm @ohif/app)")
    with DicomWebOrthanc(work / "orthanc") as pacs, OhifSite(dist, pacs) as site:
        for path in study.files:
            pacs.upload(path)
        for modality, count, minimum, name in (
            ("SR", sr_green, MIN_REGION_PIXELS, "ohif-sr-region.png"),
            ("OT", heat_map_colour, MIN_HEAT_PIXELS, "ohif-sc-heat-map.png"),
        ):
            page = browser.new_page(viewport=VIEWPORT_SIZE)
            open_study(page, site, study.study_uid)
            wait_for_pixels(page, radiograph_grey, MIN_RADIOGRAPH_PIXELS)
            show_series(page, modality)
            _, found = wait_for_pixels(page, count, minimum)
            if found < minimum:
                raise SystemExit(f"OHIF did not show the {modality} ({found} pixels)")
            png = page.screenshot()
            save_small(np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), out / name)
            page.close()


def dicomscope_shot(study: AnalysedStudy, work: Path, out: Path) -> None:
    """The first presentation state with a box, as DICOMscope draws it."""
    tools = {name: require_tool(name) for name in DICOMSCOPE_TOOLS}
    state = study.gsps[0]
    with DicomScope(work / "dicomscope", tools) as viewer:
        rgb = viewer.show(study.source_of(state), state)
    save_small(rgb[DICOMSCOPE_CROP], out / "dicomscope-gsps.png", width=480, colours=48)


def dsr2html_shot(study: AnalysedStudy, work: Path, browser: Browser, out: Path) -> None:
    """The SR as dcmtk's dsr2html writes it, in Chromium."""
    html = work / "sr.html"
    subprocess.run([require_tool("dsr2html"), str(study.sr), str(html)], check=True,
                   capture_output=True, timeout=60)  # fmt: skip
    page = browser.new_page(viewport=ViewportSize(width=900, height=600))
    page.goto(html.as_uri())
    png = page.screenshot(full_page=True)
    save_small(
        np.asarray(Image.open(io.BytesIO(png)).convert("RGB")), out / "dsr2html-sr.png", colours=16
    )
    page.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "viewer")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="viewer-shots-") as tmp:
        work = Path(tmp)
        study = analysed_fractured_study(work / "study")
        dicomscope_shot(study, work, args.out)
        with sync_playwright() as playwright:
            browser = launch_chromium(playwright)
            try:
                ohif_shots(study, work, browser, args.out)
                dsr2html_shot(study, work, browser, args.out)
            finally:
                browser.close()
    for path in sorted(args.out.glob("*.png")):
        print(f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}: "
              f"{path.stat().st_size // 1024} KiB")  # fmt: skip


if __name__ == "__main__":
    main()
