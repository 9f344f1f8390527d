"""The SR and Secondary Capture builders on a real synthetic study and the bundled demo model,
checked by dciodvfy, dsrdump and highdicom after a round trip through bytes."""

from __future__ import annotations

import dataclasses
import io
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from dicomnode.identity import DISCLAIMER, MANUFACTURER, SERIES_DESCRIPTION_PREFIX
from dicomnode.reports import ReportContext, build_not_analysed_sr, build_sc, build_sr
from dicomnode.reports.overlay import output_shape
from dicomnode.reports.sr import PROBABILITY, PROBABILITY_DIGITS, is_not_analysed_sr, level_of
from dicomnode.reports.uids import result_uid
from pipeline.dicomio import read_radiograph
from pipeline.inference import ModelBundle, StudyPrediction
from pipeline.localisation import analysed_region, suspected_region
from tests.conftest import require_tool
from train.phantoms.archive import generate_archive, read_truth

BUNDLE = Path(__file__).resolve().parents[2] / "config" / "models" / "wrist-demo"


@dataclasses.dataclass(frozen=True)
class Study:
    sources: list[pydicom.Dataset]
    pixels: list[np.ndarray]
    prediction: StudyPrediction
    context: ReportContext


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Study:
    archive = tmp_path_factory.mktemp("reports-archive")
    generate_archive(archive, studies=12, seed=5, size="small", workers=1)
    by_study: dict[str, list[Path]] = {}
    for row in read_truth(archive):
        if row["corrupt"] == "" and row["body_part"] == "wrist":
            by_study.setdefault(row["study_instance_uid"], []).append(archive / row["path"])
    bundle = ModelBundle.load(BUNDLE)
    # Prefer a study with an image of two parts, so one SC carries two views.
    for paths in sorted(by_study.values(), key=len, reverse=True):
        if len(paths) < 2:
            continue
        radiographs = [read_radiograph(p) for p in sorted(paths)]
        prediction = bundle.predict(radiographs)
        if prediction.in_scope and len(prediction.views) >= 2:
            sources = [pydicom.dcmread(p) for p in sorted(paths)]
            context = ReportContext(sources=sources, bundle=bundle.info, institution="Test")
            pixels = [r.pixels for r in radiographs]
            return Study(sources, pixels, prediction, context)
    pytest.fail("the synthetic archive has no analysable wrist study with 2+ instances")


def _round_trip(ds: pydicom.Dataset, path: Path) -> pydicom.Dataset:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    path.write_bytes(buffer.getvalue())
    return pydicom.dcmread(io.BytesIO(buffer.getvalue()))


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True, check=False)
    text = (result.stderr + result.stdout).decode("latin-1")
    return [line for line in text.splitlines() if line.startswith("Error")]


PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
"""Where Debian's libpixelmed-java puts PixelMed; its DicomSRValidator is the one IHE AI Results
testing uses."""
# Current JREs cap XPath expressions below what PixelMed's template rules need.
_JAVA_XPATH = [f"-Djdk.xml.{key}=0" for key in ("xpathExprOpLimit", "xpathExprGrpLimit",
                                                "xpathTotalOpLimit")]  # fmt: skip


def _pixelmed_findings(path: Path) -> list[str]:
    """PixelMed DicomSRValidator's errors and warnings on an SR file (a missing tool fails)."""
    java = require_tool("java")
    if not PIXELMED_JAR.is_file():
        pytest.fail(
            f"{PIXELMED_JAR} is missing: run make install (Debian package libpixelmed-java)"
        )
    result = subprocess.run(
        [java, *_JAVA_XPATH, "-cp", str(PIXELMED_JAR),
         "com.pixelmed.validate.DicomSRValidator", str(path)],
        capture_output=True, check=False, timeout=120,
    )  # fmt: skip
    text = (result.stdout + result.stderr).decode("utf-8", errors="replace")
    assert "Found Root Template TID_1500" in text, text
    return [line for line in text.splitlines() if line.startswith(("Error", "Warning"))]


def _dsrdump(path: Path) -> str:
    result = subprocess.run(
        [require_tool("dsrdump"), "+Pl", str(path)], capture_output=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode("latin-1")
    return result.stdout.decode("utf-8", errors="replace")


def test_result_uid_is_deterministic_and_valid() -> None:
    uid = result_uid("sr", "1.2.3", "m 1.0", ["1.2.3.4", "1.2.3.5"])
    assert uid == result_uid("sr", "1.2.3", "m 1.0", ["1.2.3.5", "1.2.3.4"])
    assert uid.startswith("2.25.") and len(uid) <= 64
    assert pydicom.uid.UID(uid).is_valid
    others = {
        result_uid("sr", "1.2.3", "m 1.1", ["1.2.3.4", "1.2.3.5"]),
        result_uid("sr", "1.2.3", "m 1.0", ["1.2.3.4", "1.2.3.5", "1.2.3.6"]),
        result_uid("sc", "1.2.3", "m 1.0", ["1.2.3.4", "1.2.3.5"]),
        result_uid("sr", "1.2.3", "m 1.0", ["1.2.3.4", "1.2.3.5"], extra="x"),
    }
    assert uid not in others and len(others) == 4


def test_sr_is_valid_and_carries_the_result(study: Study, tmp_path: Path) -> None:
    path = tmp_path / "sr.dcm"
    sr = _round_trip(build_sr(study.prediction, study.context), path)

    assert _dciodvfy_errors(path) == []
    assert _pixelmed_findings(path) == []
    dump = _dsrdump(path)
    stored = round(study.prediction.probability, PROBABILITY_DIGITS)
    assert "Fracture of bone" in dump and "Probability" in dump
    assert '(363679005,SCT,"Imaging procedure")' in dump  # CID 100, as TID 1500 asks
    levels = [study.prediction.level] + [
        level_of(v.probability, study.context.bundle) for v in study.prediction.views
    ]
    for level in levels:
        assert f'CODE:(,,"Finding")=({level.upper()},99WRISTAI,' in dump
    assert f'"{stored}"' in dump

    assert (sr.VerificationFlag, sr.CompletionFlag) == ("UNVERIFIED", "COMPLETE")
    assert sr.Manufacturer == MANUFACTURER
    assert sr.SeriesDescription == "AI decision support - fracture report - NOT FOR DIAGNOSTIC USE"
    assert sr.SeriesDescription.startswith(SERIES_DESCRIPTION_PREFIX)  # the loop guard's mark
    assert sr.StudyInstanceUID == study.sources[0].StudyInstanceUID
    assert sr.SeriesInstanceUID not in {s.SeriesInstanceUID for s in study.sources}
    assert int(sr.SeriesNumber) == 9901 and int(sr.InstanceNumber) == 1

    parsed = hd.sr.srread(path)
    report = parsed.content
    # Nothing located in this study: every group still names a region (OHIF shows only those),
    # the part of the image each view analysed; the study group, last, its most suspicious one.
    assert report.get_image_measurement_groups() == []
    measurement_groups = report.get_planar_roi_measurement_groups()
    assert len(measurement_groups) == 1 + len(study.prediction.views)
    assert measurement_groups[-1].tracking_identifier == "Study"
    by_label = {g.tracking_identifier: g for g in measurement_groups}
    study_value = by_label["Study"].get_measurements(name=PROBABILITY)[0].value
    assert study_value == pytest.approx(stored, abs=1e-9)
    for index, view in enumerate(study.prediction.views, start=1):
        label = f"View {index} (image part {view.view.part + 1} of {view.view.n_parts})"
        group = by_label[label]
        value = group.get_measurements(name=PROBABILITY)[0].value
        assert value == pytest.approx(round(view.probability, PROBABILITY_DIGITS), abs=1e-9)
        (image,) = group.roi.ContentSequence
        assert image.referenced_sop_instance_uid == view.view.sop_instance_uid
        source = _source(study, view)
        analysed = np.clip(analysed_region(view.view).dicom_points(), 0,
                           [int(source.Columns), int(source.Rows)])  # fmt: skip
        np.testing.assert_allclose(group.roi.value, analysed, atol=1e-3)
    top = max(study.prediction.views, key=lambda v: v.probability)
    (image,) = by_label["Study"].roi.ContentSequence
    assert image.referenced_sop_instance_uid == top.view.sop_instance_uid
    evidence = {uid for _, _, uid, _ in parsed.get_evidence()}
    assert evidence == {str(s.SOPInstanceUID) for s in study.sources}


def _localised(study: Study) -> StudyPrediction:
    """The study with its first view "likely" and a heat-map blob, the others negative."""
    first = study.prediction.views[0]
    height, width = first.view.pixels.shape
    heat = np.zeros((height, width), dtype=np.float32)
    heat[height // 2 : height // 2 + 12, width // 3 : width // 3 + 10] = 1.0
    views = [dataclasses.replace(first, probability=0.97, heatmap=heat)]
    views += [dataclasses.replace(v, probability=0.01) for v in study.prediction.views[1:]]
    return dataclasses.replace(study.prediction, probability=0.97, level="likely",
                               views=tuple(views))  # fmt: skip


def test_a_suspected_view_carries_its_region_as_a_scoord(study: Study, tmp_path: Path) -> None:
    prediction = _localised(study)
    path = tmp_path / "sr.dcm"
    _round_trip(build_sr(prediction, study.context), path)
    assert _dciodvfy_errors(path) == []
    assert _pixelmed_findings(path) == []  # one located view: PixelMed checks all as TID 1410

    report = hd.sr.srread(path).content
    assert report.get_image_measurement_groups() == []
    groups = report.get_planar_roi_measurement_groups()
    assert len(groups) == len(prediction.views) + 1
    view = prediction.views[0]
    region = suspected_region(view.view, view.heatmap)
    assert region is not None
    first, study_group = groups[0], groups[-1]
    assert first.tracking_identifier == f"View 1 (image part {view.view.part + 1} of " + (
        f"{view.view.n_parts})"
    )
    assert first.tracking_uid and study_group.tracking_identifier == "Study"
    for group, expected in [(first, region), (study_group, region)]:
        assert group.reference_type == codes.DCM.ImageRegion
        assert group.roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        np.testing.assert_allclose(group.roi.value, expected.dicom_points(), atol=1e-3)
        (image,) = group.roi.ContentSequence
        assert image.referenced_sop_instance_uid == view.view.sop_instance_uid

    def level(group: hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations) -> str:
        # The level is the "Finding" evaluation in the node's scheme (the finding type is the
        # other "Finding" item, in SCT).
        (value,) = [
            item.ConceptCodeSequence[0]
            for item in group[0].ContentSequence
            if item.ValueType == "CODE"
            and item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.Finding.value
            and item.ConceptCodeSequence[0].CodingSchemeDesignator == "99WRISTAI"
        ]
        return str(value.CodeValue)

    assert level(first) == level(study_group) == "LIKELY"
    # The negative views name the part of their image the model analysed, not a suspicion.
    for group, negative in zip(groups[1:-1], prediction.views[1:], strict=True):
        assert level(group) == "NEGATIVE"
        analysed = analysed_region(negative.view).dicom_points()
        rows, columns = (int(s.Rows), int(s.Columns)) if (s := _source(study, negative)) else (0, 0)
        np.testing.assert_allclose(group.roi.value, np.clip(analysed, 0, [columns, rows]),
                                   atol=1e-3)  # fmt: skip


def _source(study: Study, view: object) -> pydicom.Dataset:
    uid = view.view.sop_instance_uid  # type: ignore[attr-defined]
    return next(s for s in study.sources if s.SOPInstanceUID == uid)


def test_the_sr_validator_has_teeth(study: Study, tmp_path: Path) -> None:
    # The procedure code of earlier versions (SCT 168537006, not in CID 100) must be reported.
    # Edit a copy read back from bytes: the built SR shares highdicom's code objects.
    sr = _round_trip(build_sr(study.prediction, study.context), tmp_path / "sr.dcm")
    for item in sr.ContentSequence:
        if item.ConceptNameCodeSequence[0].CodeValue == "121058":  # Procedure reported
            item.ConceptCodeSequence[0].CodeValue = "168537006"
            item.ConceptCodeSequence[0].CodeMeaning = "Plain radiography"
    path = tmp_path / "old-procedure.dcm"
    _round_trip(sr, path)
    findings = _pixelmed_findings(path)
    assert any(f.startswith("Error") and "context group 100" in f for f in findings), findings


def test_sr_uids_are_deterministic_and_versioned(study: Study) -> None:
    first = build_sr(study.prediction, study.context)
    again = build_sr(study.prediction, study.context)
    assert first.SOPInstanceUID == again.SOPInstanceUID
    newer = dataclasses.replace(study.context.bundle, version="9.9.9")
    other = build_sr(study.prediction, dataclasses.replace(study.context, bundle=newer))
    assert other.SOPInstanceUID != first.SOPInstanceUID
    fewer = dataclasses.replace(study.context, sources=study.sources[:1])  # a late instance
    views = tuple(
        v
        for v in study.prediction.views
        if v.view.sop_instance_uid == study.sources[0].SOPInstanceUID
    )
    partial = dataclasses.replace(study.prediction, views=views)
    assert build_sr(partial, fewer).SOPInstanceUID != first.SOPInstanceUID


def test_sr_revision_references_its_predecessor(study: Study, tmp_path: Path) -> None:
    first = _round_trip(build_sr(study.prediction, study.context), tmp_path / "first.dcm")
    context = dataclasses.replace(study.context, predecessor=first)
    path = tmp_path / "second.dcm"
    second = _round_trip(build_sr(study.prediction, context), path)
    assert second.SOPInstanceUID != first.SOPInstanceUID
    item = second.PredecessorDocumentsSequence[0]
    assert item.StudyInstanceUID == first.StudyInstanceUID
    sop = item.ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert sop.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert int(second.InstanceNumber) == int(first.InstanceNumber) + 1
    assert _dciodvfy_errors(path) == []
    assert _pixelmed_findings(path) == []


def test_not_analysed_sr_states_the_reason(study: Study, tmp_path: Path) -> None:
    reason = "no wrist view to analyse: body part CHEST"
    path = tmp_path / "na.dcm"
    sr = _round_trip(build_not_analysed_sr(reason, study.context), path)
    assert _dciodvfy_errors(path) == []
    assert _pixelmed_findings(path) == []
    assert reason in _dsrdump(path)
    assert sr.VerificationFlag == "UNVERIFIED" and sr.Manufacturer == MANUFACTURER
    out_of_scope = dataclasses.replace(study.prediction, in_scope=False, reason=reason)
    assert build_sr(out_of_scope, study.context).SOPInstanceUID == sr.SOPInstanceUID
    assert is_not_analysed_sr(sr)


def test_an_analysed_sr_revises_a_not_analysed_one(study: Study, tmp_path: Path) -> None:
    # The study was out of scope, then reopened (a wrist view came, or a corrected tag).
    earlier = _round_trip(build_not_analysed_sr("no wrist view to analyse", study.context),
                          tmp_path / "na.dcm")  # fmt: skip
    path = tmp_path / "sr.dcm"
    context = dataclasses.replace(study.context, predecessor=earlier)
    report = _round_trip(build_sr(study.prediction, context), path)
    assert not is_not_analysed_sr(report)
    sop = report.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0]
    assert sop.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == earlier.SOPInstanceUID
    assert report.SOPInstanceUID != build_sr(study.prediction, study.context).SOPInstanceUID
    assert _dciodvfy_errors(path) == []


def _sc_for(study: Study, index: int = 0, **changes: object) -> tuple[pydicom.Dataset, int]:
    view = dataclasses.replace(study.prediction.views[index], **changes)
    position = [str(s.SOPInstanceUID) for s in study.sources].index(view.view.sop_instance_uid)
    sc = build_sc(
        view,
        study.prediction,
        study.sources[position],
        study.pixels[position],
        study.context,
        instance_number=index + 1,
    )
    return sc, position


def test_sc_is_valid_and_shows_the_source(study: Study, tmp_path: Path) -> None:
    built, position = _sc_for(study)
    path = tmp_path / "sc.dcm"
    sc = _round_trip(built, path)
    assert _dciodvfy_errors(path) == []
    source = study.sources[position]
    rows, columns = study.pixels[position].shape
    assert output_shape((rows, columns)) == (rows, columns)
    strip = int(sc.Rows) - rows  # the banner strip added above the image
    assert int(sc.Columns) == columns and 0.04 * rows < strip < 0.4 * rows
    assert int(sc.SamplesPerPixel) == 3 and sc.PhotometricInterpretation == "RGB"
    assert sc.pixel_array.shape == (rows + strip, columns, 3)
    assert sc.BurnedInAnnotation == "YES" and list(sc.ImageType) == ["DERIVED", "SECONDARY"]
    assert sc.ConversionType == "WSD" and sc.Manufacturer == MANUFACTURER
    assert sc.StudyInstanceUID == source.StudyInstanceUID
    assert sc.SeriesInstanceUID != source.SeriesInstanceUID
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert sc.SeriesDescription == f"{SERIES_DESCRIPTION_PREFIX} - heat map - {DISCLAIMER}"
    assert sc.SeriesDescription.count("decision support") == 1
    # The banner is in the strip (yellow headline), and the image below it is the source's own
    # grey wherever no heat is painted: nothing covers the anatomy.
    banner = sc.pixel_array[:strip].astype(int)
    yellow = (banner[..., 0] > 200) & (banner[..., 1] > 180) & (banner[..., 2] < 80)
    assert yellow.sum() > 20
    grey = np.rint(np.clip(study.pixels[position], 0, 1) * 255)
    image = sc.pixel_array[strip:].astype(int)
    unpainted = (image[..., 0] == image[..., 1]) & (image[..., 1] == image[..., 2])
    assert unpainted.mean() > 0.5
    assert np.abs(image[..., 0][unpainted] - grey[unpainted]).max() <= 1
    top = slice(0, max(4, rows // 25))  # the fingers' end of the image, under the old banner
    assert unpainted[top].mean() > 0.9
    assert built.SOPInstanceUID == _sc_for(study)[0].SOPInstanceUID
    assert output_shape((3000, 2400)) == (2048, 1638)  # long sides are downscaled
    assert output_shape((1000, 4096)) == (500, 2048)


def test_sc_heat_map_lands_where_the_view_maps_it(study: Study) -> None:
    view = study.prediction.views[0]
    height, width = view.view.pixels.shape
    uids = [str(s.SOPInstanceUID) for s in study.sources]
    rows, columns = study.pixels[uids.index(view.view.sop_instance_uid)].shape
    # A spot in the lower half (clear of the banner) that the transform moves far enough that
    # an identity mapping would miss it.
    for fx, fy in [(0.5, 0.7), (0.3, 0.8), (0.7, 0.6), (0.5, 0.55)]:
        centre = np.array([[width * fx, height * fy]])
        x, y = view.view.to_source(centre)[0]
        opposite = (columns - 1 - x, rows - 1 - y)
        moved = np.hypot(x - centre[0, 0], y - centre[0, 1])
        if 0.25 * rows < y < rows - 8 and 8 < x < columns - 8 and moved > 12:
            break
    else:
        pytest.skip("no test spot maps inside the image away from the banner")
    assert np.hypot(opposite[0] - x, opposite[1] - y) > 60
    heat = np.zeros((height, width), dtype=np.float32)
    cx, cy = int(centre[0, 0]), int(centre[0, 1])
    heat[cy - 8 : cy + 8, cx - 8 : cx + 8] = 1.0
    blank, _ = _sc_for(study, heatmap=np.zeros_like(heat))
    hot, _ = _sc_for(study, heatmap=heat)
    strip = int(hot.Rows) - rows  # the banner strip above the image
    diff = np.abs(hot.pixel_array.astype(int) - blank.pixel_array.astype(int)).sum(axis=2)
    diff = diff[strip:]

    def around(px: float, py: float) -> float:
        r, c = round(py), round(px)
        return float(diff[max(0, r - 3) : r + 4, max(0, c - 3) : c + 4].mean())

    assert around(x, y) > 60
    assert around(*opposite) == 0
    changed = np.argwhere(diff > 30)
    assert np.abs(changed.mean(axis=0) - (y, x)).max() < 4
