"""The presentation state of an analysed image: it references the original, draws each suspected
region as a box in a layer per level with its probability, says the study result on images
without marks, keeps the image's look (checked by rendering with dcmtk), and is written only when
[results] send asks for it. The SCP never takes one back for analysis."""

from __future__ import annotations

import io
import re
import subprocess
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import GrayscaleSoftcopyPresentationStateStorage

from dicomnode.analysis import analyse_study
from dicomnode.config import ConfigError, load_config
from dicomnode.identity import DISCLAIMER, MANUFACTURER, SERIES_DESCRIPTION_PREFIX
from dicomnode.index import Index
from dicomnode.reports import build_gsps, build_sr
from dicomnode.reports.gsps import GSPS_SERIES_NUMBER
from dicomnode.reports.sr import PROBABILITY, series_description
from dicomnode.spool import Spool
from pipeline.localisation import suspected_region
from tests.conftest import require_tool
from tests.dicomnode.gsps_study import GspsStudy, build_study, marked
from tests.dicomnode.test_scp import Node


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> GspsStudy:
    return build_study(tmp_path_factory.mktemp("gsps-study"))


def _round_trip(ds: Dataset, path: Path | None = None) -> Dataset:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    if path is not None:
        path.write_bytes(buffer.getvalue())
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _layer(gsps: Dataset, name: str) -> Dataset:
    (annotation,) = [a for a in gsps.GraphicAnnotationSequence if a.GraphicLayer == name]
    return annotation


def _texts(annotation: Dataset) -> list[str]:
    return [str(t.UnformattedTextValue) for t in annotation.get("TextObjectSequence", [])]


def test_the_gsps_references_its_image_and_boxes_the_region(study: GspsStudy) -> None:
    views, prediction = marked(study, 0, [0.97, 0.4])  # likely with a region, possible without
    source = study.sources[0]
    gsps = _round_trip(build_gsps(views, prediction, source, study.context, instance_number=1))

    assert gsps.SOPClassUID == GrayscaleSoftcopyPresentationStateStorage and gsps.Modality == "PR"
    (series,) = gsps.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    (image,) = series.ReferencedImageSequence
    assert (image.ReferencedSOPClassUID, image.ReferencedSOPInstanceUID) == (
        source.SOPClassUID,
        source.SOPInstanceUID,
    )
    assert gsps.StudyInstanceUID == source.StudyInstanceUID
    assert gsps.PatientID == source.PatientID
    assert int(gsps.SeriesNumber) == GSPS_SERIES_NUMBER and int(gsps.InstanceNumber) == 1
    assert gsps.SeriesDescription == series_description("gsps")
    assert len(gsps.SeriesDescription) <= 64
    assert gsps.SeriesDescription.startswith(SERIES_DESCRIPTION_PREFIX)  # the loop guard's mark
    assert gsps.Manufacturer == MANUFACTURER and DISCLAIMER in gsps.ContentDescription
    assert gsps.ContentLabel == "FRACTURE_MARKS"

    layers = {layer.GraphicLayer: layer for layer in gsps.GraphicLayerSequence}
    assert set(layers) == {"POSSIBLE", "LIKELY", "RESULT"}
    order = sorted(layers, key=lambda name: int(layers[name].GraphicLayerOrder))
    assert order == ["POSSIBLE", "LIKELY", "RESULT"]  # text of the result drawn last, on top
    assert layers["LIKELY"].GraphicLayerRecommendedDisplayGrayscaleValue == 0xFFFF
    assert layers["POSSIBLE"].GraphicLayerRecommendedDisplayGrayscaleValue < 0xFFFF

    likely = _layer(gsps, "LIKELY")
    (box,) = likely.GraphicObjectSequence
    region = suspected_region(views[0].view, views[0].heatmap)
    assert region is not None
    assert box.GraphicType == "POLYLINE" and box.GraphicAnnotationUnits == "PIXEL"
    points = np.array(box.GraphicData, dtype=np.float32).reshape(-1, 2)
    np.testing.assert_allclose(points, region.dicom_points(), atol=1e-3)
    assert np.array_equal(points[0], points[-1])  # closed
    assert box.LineStyleSequence[0].LineDashingStyle == "SOLID"
    (text,) = likely.TextObjectSequence
    assert str(text.UnformattedTextValue) == "fracture likely, p = 0.97"
    # The text sits beside the box, not on it, and inside the image.
    left, top = text.BoundingBoxTopLeftHandCorner
    right, bottom = text.BoundingBoxBottomRightHandCorner
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    assert right <= x0 or left >= x1 or bottom <= y0 or top >= y1
    assert 0 <= left < right <= source.Columns and 0 <= top < bottom <= source.Rows

    # A view at "possible" whose heat map gives no region still says so, without a box.
    possible = _layer(gsps, "POSSIBLE")
    assert "GraphicObjectSequence" not in possible
    assert _texts(possible) == ["fracture possible, p = 0.40"]
    # An image with marks: the result layer holds the disclaimer only.
    assert _texts(_layer(gsps, "RESULT")) == [DISCLAIMER]


def test_a_possible_region_is_a_dashed_thinner_box(study: GspsStudy) -> None:
    views, prediction = marked(study, 0, [0.4])
    gsps = build_gsps(views, prediction, study.sources[0], study.context, instance_number=1)
    likely_views, likely = marked(study, 0, [0.97])
    solid = build_gsps(likely_views, likely, study.sources[0], study.context, instance_number=1)

    assert {a.GraphicLayer for a in gsps.GraphicAnnotationSequence} == {"POSSIBLE", "RESULT"}
    (box,) = _layer(gsps, "POSSIBLE").GraphicObjectSequence
    (style,) = box.LineStyleSequence
    (solid_style,) = _layer(solid, "LIKELY").GraphicObjectSequence[0].LineStyleSequence
    assert style.LineDashingStyle == "DASHED" and style.LinePattern not in (0, 0xFFFFFFFF)
    assert style.LineThickness < solid_style.LineThickness
    assert _texts(_layer(gsps, "POSSIBLE")) == ["fracture possible, p = 0.40"]


def test_an_image_without_suspicion_has_no_box_and_states_the_study_result(
    study: GspsStudy,
) -> None:
    views, prediction = marked(study, 1, [0.05])
    assert prediction.level == "negative"
    gsps = _round_trip(
        build_gsps(views, prediction, study.sources[1], study.context, instance_number=2)
    )

    assert [a.GraphicLayer for a in gsps.GraphicAnnotationSequence] == ["RESULT"]
    assert all("GraphicObjectSequence" not in a for a in gsps.GraphicAnnotationSequence)
    assert _texts(_layer(gsps, "RESULT")) == [
        "study: no fracture detected, p = 0.05",
        DISCLAIMER,
    ]


def test_the_probability_text_is_the_srs_value_rounded(study: GspsStudy, tmp_path: Path) -> None:
    # 0.92499996 shows as 0.92 rounded directly, but the SR stores 0.925: the marks say 0.93.
    views, prediction = marked(study, 0, [0.92499996])
    gsps = build_gsps(views, prediction, study.sources[0], study.context, instance_number=1)
    path = tmp_path / "sr.dcm"
    _round_trip(build_sr(prediction, study.context), path)
    report = hd.sr.srread(path).content
    groups = [*report.get_planar_roi_measurement_groups(), *report.get_image_measurement_groups()]
    (view_group,) = [g for g in groups if g.tracking_identifier.startswith("View 1 ")]
    stored = float(view_group.get_measurements(name=PROBABILITY)[0].value)

    assert f"{0.92499996:.2f}" == "0.92"
    assert _texts(_layer(gsps, "LIKELY")) == [f"fracture likely, p = {stored:.2f}"]
    assert stored == pytest.approx(0.925) and f"{stored:.2f}" == "0.93"


def test_the_gsps_keeps_the_sources_window_and_polarity(study: GspsStudy) -> None:
    shapes = []
    for index, source in enumerate(study.sources):
        views, prediction = marked(study, index, [0.97])
        gsps = build_gsps(views, prediction, source, study.context, instance_number=index + 1)
        shapes.append(str(gsps.PresentationLUTShape))
        if "WindowCenter" in source:
            (voi,) = gsps.SoftcopyVOILUTSequence
            assert float(voi.WindowCenter) == pytest.approx(float(source.WindowCenter))
            assert float(voi.WindowWidth) == pytest.approx(float(source.WindowWidth))
        else:
            assert "SoftcopyVOILUTSequence" not in gsps
    photometric = [str(s.PhotometricInterpretation) for s in study.sources]
    assert photometric == ["MONOCHROME2", "MONOCHROME1", "MONOCHROME1"]
    assert "PresentationLUTShape" not in study.sources[2]  # so the inversion is the node's own
    assert shapes == ["IDENTITY", "INVERSE", "INVERSE"]


def _render(image: Path, out: Path, gsps: Path | None = None) -> np.ndarray:
    """dcmp2pgm's 8-bit rendering of `image`, under `gsps` or its default presentation."""
    command = [require_tool("dcmp2pgm"), *(["-p", str(gsps)] if gsps else []), str(image), str(out)]
    subprocess.run(command, check=True, capture_output=True, timeout=60)
    data = out.read_bytes()
    header = re.match(rb"P5\s+(\d+)\s+(\d+)\s+255\s", data)
    assert header is not None
    width, height = int(header[1]), int(header[2])
    return np.frombuffer(data[header.end() :], dtype=np.uint8).reshape(height, width)


def test_dcmtk_renders_the_image_as_it_was_and_reads_the_marks(
    study: GspsStudy, tmp_path: Path
) -> None:
    """dcmtk's presentation-state renderer applies the GSPS's Modality LUT, VOI and Presentation
    LUT: each image, MONOCHROME1 included, renders exactly as without the presentation state
    (a wrong polarity would not). dcmp2pgm draws shutters and overlays but not graphic
    annotations (dcmpstat leaves those to the viewer), so the marks are checked in what dcmtk
    read from the file: the layers, the text and the box's corners."""
    for index, source in enumerate(study.sources):
        views, prediction = marked(study, index, [0.97])
        gsps = build_gsps(views, prediction, source, study.context, instance_number=index + 1)
        path = tmp_path / f"gsps{index}.dcm"
        _round_trip(gsps, path)
        plain = _render(study.paths[index], tmp_path / f"plain{index}.pgm")
        under = _render(study.paths[index], tmp_path / f"under{index}.pgm", path)
        assert plain.std() > 10  # an image, not a blank
        np.testing.assert_array_equal(under, plain)

        # Teeth: the opposite polarity renders the negative.
        flipped = _round_trip(gsps)
        flipped.PresentationLUTShape = (
            "IDENTITY" if gsps.PresentationLUTShape == "INVERSE" else "INVERSE"
        )
        _round_trip(flipped, tmp_path / "flipped.dcm")
        negative = _render(study.paths[index], tmp_path / "neg.pgm", tmp_path / "flipped.dcm")
        assert np.corrcoef(negative.ravel(), plain.ravel())[0, 1] < -0.9

        dump = subprocess.run(
            [require_tool("dcmp2pgm"), "-v", "-p", str(path), str(study.paths[index])],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        text = dump.stdout + dump.stderr
        assert "Graphic Layer #1 [LIKELY]" in text and "Graphic Layer #2 [RESULT]" in text
        assert '"fracture likely, p = 0.97"' in text and f'"{DISCLAIMER}"' in text
        region = suspected_region(views[0].view, views[0].heatmap)
        assert region is not None
        (coordinates,) = re.findall(r"coordinates: (.*)", text)
        read = np.array(re.findall(r"([\d.]+)\\([\d.]+)", coordinates), dtype=np.float64)
        np.testing.assert_allclose(read, region.dicom_points(), rtol=1e-4, atol=1e-3)


def _index_study(study: GspsStudy, tmp_path: Path) -> tuple[Index, str]:
    index = Index(tmp_path / "index.sqlite")
    for path, source in zip(study.paths, study.sources, strict=True):
        index.record_instance(sop_uid=str(source.SOPInstanceUID),
                              study_uid=str(source.StudyInstanceUID), series_uid="1.2",
                              sop_class_uid=str(source.SOPClassUID), path=path,
                              calling_aet="CR", association_id="a", received_at=time.time(),
                              ours=False)  # fmt: skip
    return index, str(study.sources[0].StudyInstanceUID)


def test_send_names_the_result_objects_written(study: GspsStudy, tmp_path: Path) -> None:
    index, uid = _index_study(study, tmp_path)
    instances = index.instances(uid)
    written = {}
    for kinds in (("sr",), ("gsps",), ("sr", "gsps", "sc")):
        outcome = analyse_study(uid, instances, study.bundle, Spool(tmp_path / "-".join(kinds)),
                                send=kinds)  # fmt: skip
        written[kinds] = sorted(str(pydicom.dcmread(f).Modality) for f in outcome.files)
    images = len(study.sources)
    assert written[("sr",)] == ["SR"]
    assert written[("gsps",)] == ["PR"] * images
    assert written[("sr", "gsps", "sc")] == ["OT"] * images + ["PR"] * images + ["SR"]


@pytest.mark.parametrize(
    ("value", "named"),
    [('["sr", "pdf"]', "'pdf'"), ("[]", "is empty"), ('"sr"', "must be a list")],
)
def test_a_bad_send_value_is_a_config_error_naming_it(
    tmp_path: Path, value: str, named: str
) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f"[results]\nsend = {value}\n")
    with pytest.raises(ConfigError, match=r"results\.send") as raised:
        load_config(path)
    assert named in str(raised.value)
    path.write_text('[results]\nsend = ["sr"]\n')
    assert load_config(path).results.send == ("sr",)


def test_the_node_never_takes_a_presentation_state_back(study: GspsStudy, tmp_path: Path) -> None:
    """A PACS routing the node's GSPS back finds the SOP class refused at negotiation, so it is
    neither stored nor analysed."""
    views, prediction = marked(study, 0, [0.97])
    path = tmp_path / "gsps.dcm"
    _round_trip(build_gsps(views, prediction, study.sources[0], study.context,
                           instance_number=1), path)  # fmt: skip
    node = Node(tmp_path / "node")
    try:
        result = node.storescu(path)
        assert result.returncode != 0
        assert "No presentation context" in result.stdout + result.stderr
        assert node.index.counts()["instances"] == 0
    finally:
        node.server.shutdown()
        node.index.close()


def test_a_colour_image_gets_a_colour_presentation_state_with_the_same_marks(
    study: GspsStudy, tmp_path: Path
) -> None:
    # An RGB Secondary Capture of the first image: a grayscale presentation state cannot
    # reference it (highdicom refuses; before, the whole study's analysis failed).
    views, prediction = marked(study, 0, [0.97])
    grey = study.sources[0]
    colour = Dataset()
    colour.update(grey)
    colour.file_meta = grey.file_meta
    pixels = grey.pixel_array.astype(np.float64)
    rgb = np.rint(255 * (pixels - pixels.min()) / max(1.0, np.ptp(pixels))).astype(np.uint8)
    colour.PixelData = np.repeat(rgb[..., None], 3, axis=2).tobytes()
    colour.SamplesPerPixel, colour.PhotometricInterpretation = 3, "RGB"
    colour.PlanarConfiguration, colour.BitsAllocated, colour.BitsStored = 0, 8, 8
    colour.HighBit, colour.PixelRepresentation = 7, 0
    colour.SOPClassUID = pydicom.uid.SecondaryCaptureImageStorage
    path = tmp_path / "csps.dcm"
    csps = _round_trip(build_gsps(views, prediction, colour, study.context, instance_number=1),
                       path)  # fmt: skip
    assert csps.SOPClassUID == pydicom.uid.ColorSoftcopyPresentationStateStorage
    assert csps.Modality == "PR" and csps.ICCProfile[12:16] == b"spac"
    grey_gsps = build_gsps(views, prediction, grey, study.context, instance_number=1)
    assert [a.GraphicLayer for a in csps.GraphicAnnotationSequence] == [
        a.GraphicLayer for a in grey_gsps.GraphicAnnotationSequence
    ]
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, text=True)
    assert not [line for line in (result.stdout + result.stderr).splitlines()
                if line.startswith("Error")]  # fmt: skip
