"""Abstention end to end with the demo bundle's own OOD detector: a view unlike the validation
images gets no probability, the study is analysed on the other views, and every result object
says "not analysable" (and stays dciodvfy- and PixelMed-clean)."""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.analysis import analyse_study
from dicomnode.index import InstanceRow
from dicomnode.reports import ReportContext, build_gsps, build_sc, build_sr
from dicomnode.reports.sc import banner_text
from dicomnode.reports.sr import FRACTURE, LEVEL_TEXT, NOT_ANALYSABLE_VALUE, PROBABILITY
from dicomnode.retry import RetryPolicy
from dicomnode.spool import Spool
from dicomnode.work_queue import WorkQueue
from dicomnode.worker import analyse_next
from pipeline.dicomio import Radiograph, read_radiograph
from pipeline.inference import NEGATIVE_INCOMPLETE, ModelBundle, StudyPrediction
from pipeline.ood import NOT_ANALYSABLE, OOD_FILE
from pipeline.preprocess.view_reader import ViewReaderParams
from tests.dicomnode.test_reports import (
    _dciodvfy_errors,
    _dsrdump,
    _pixelmed_findings,
    _round_trip,
)
from train.phantoms.archive import generate_archive, read_truth

BUNDLE = Path(__file__).resolve().parents[2] / "config" / "models" / "wrist-demo"


@dataclasses.dataclass(frozen=True)
class Case:
    bundle: ModelBundle
    good: tuple[pydicom.Dataset, Radiograph]
    noise: tuple[pydicom.Dataset, Radiograph]
    noise_path: Path


def _noise_instance(source: pydicom.Dataset, seed: int) -> pydicom.Dataset:
    """The wrist instance's header with uniform noise for pixels: nothing like a radiograph."""
    noise = copy.deepcopy(source)
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 2 ** int(source.BitsStored), (source.Rows, source.Columns))
    noise.PixelData = pixels.astype(np.uint16).tobytes()
    noise.SOPInstanceUID = generate_uid()
    noise.file_meta.MediaStorageSOPInstanceUID = noise.SOPInstanceUID
    return noise


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> Case:
    archive = tmp_path_factory.mktemp("abstention-archive")
    generate_archive(archive, studies=6, seed=5, syntaxes=("explicit_le",), workers=1)
    bundle = ModelBundle.load(BUNDLE)
    assert bundle.ood is not None, "the demo bundle carries an OOD detector"
    # The detector alone: the bundle's view reader refuses pure noise before it is scored (as
    # test_the_view_reader_refuses_noise_before_the_detector_sees_it shows).
    bundle.preprocess_params = dataclasses.replace(
        bundle.preprocess_params, view_reader=ViewReaderParams()
    )
    row = next(
        r
        for r in read_truth(archive)
        if (r["body_part"], r["corrupt"], r["photometric"], r["sop_kind"], r["parts"])
        == ("wrist", "", "monochrome2", "CR", "1")
    )
    source = pydicom.dcmread(archive / row["path"])
    noise = _noise_instance(source, seed=3)
    noise_path = tmp_path_factory.mktemp("noise") / "noise.dcm"
    noise.save_as(noise_path, enforce_file_format=True)
    noise = pydicom.dcmread(noise_path)
    return Case(bundle, (source, read_radiograph(source)), (noise, read_radiograph(noise)),
                noise_path)  # fmt: skip


@pytest.fixture(scope="module")
def mixed(case: Case) -> StudyPrediction:
    return case.bundle.predict([case.good[1], case.noise[1]])


def test_far_out_view_abstains_and_the_study_is_analysed_on_the_rest(
    case: Case, mixed: StudyPrediction
) -> None:
    alone = case.bundle.predict([case.good[1]])
    assert alone.in_scope and not any(v.abstained for v in alone.views)
    noise_uid = case.noise[1].sop_instance_uid
    far = [v for v in mixed.views if v.view.sop_instance_uid == noise_uid]
    near = [v for v in mixed.views if v.view.sop_instance_uid != noise_uid]
    assert far and all(v.abstained for v in far)
    assert all(np.isnan(v.probability) and v.heatmap is None for v in far)
    assert case.bundle.ood is not None
    assert all(v.ood_score is not None and v.ood_score > case.bundle.ood.threshold for v in far)
    # Scored in one batch with the far-out view: the same, to float rounding.
    assert [v.probability for v in near] == pytest.approx([v.probability for v in alone.views],
                                                          abs=1e-5)  # fmt: skip
    # The study result is that of the analysable views alone.
    assert mixed.in_scope and not mixed.abstained
    assert mixed.probability == pytest.approx(alone.probability, abs=1e-5)
    assert mixed.level == alone.level
    assert mixed.analysed_views == tuple(near)
    assert NOT_ANALYSABLE in mixed.reason


def test_the_view_reader_refuses_noise_before_the_detector_sees_it(case: Case) -> None:
    shipped = ModelBundle.load(BUNDLE)
    assert shipped.preprocess_params.view_reader.path  # the demo bundle carries its reader
    prediction = shipped.predict([case.noise[1]], heatmaps=False)
    assert not prediction.in_scope and not prediction.views and not prediction.abstained
    assert "does not look like a wrist" in prediction.reason or "looks like a" in prediction.reason


def test_a_study_of_far_out_images_only_is_not_analysable(case: Case) -> None:
    prediction = case.bundle.predict([case.noise[1]])
    assert prediction.views and all(v.abstained for v in prediction.views)
    assert not prediction.in_scope and prediction.abstained
    assert prediction.reason == NOT_ANALYSABLE


def test_a_bundle_without_a_detector_loads_and_never_abstains(case: Case, tmp_path: Path) -> None:
    older = tmp_path / "older"
    shutil.copytree(BUNDLE, older, ignore=shutil.ignore_patterns(OOD_FILE))
    info = json.loads((older / "model.json").read_text(encoding="utf-8"))
    del info["ood"]
    (older / "model.json").write_text(json.dumps(info), encoding="utf-8")
    bundle = ModelBundle.load(older)
    assert bundle.ood is None and bundle.info.ood == {}
    prediction = bundle.predict([case.good[1], case.noise[1]], heatmaps=False)
    assert prediction.in_scope and not prediction.abstained
    assert all(not v.abstained and v.ood_score is None for v in prediction.views)
    assert all(0.0 <= v.probability <= 1.0 for v in prediction.views)


def test_partial_abstention_sr_says_so_and_passes_both_validators(
    case: Case, mixed: StudyPrediction, tmp_path: Path
) -> None:
    context = ReportContext(sources=[case.good[0], case.noise[0]], bundle=case.bundle.info)
    path = tmp_path / "sr.dcm"
    _round_trip(build_sr(mixed, context), path)
    assert _dciodvfy_errors(path) == []
    assert _pixelmed_findings(path) == []
    assert NOT_ANALYSABLE_VALUE.meaning in _dsrdump(path)
    content = hd.sr.srread(path).content
    groups = [*content.get_image_measurement_groups(), *content.get_planar_roi_measurement_groups()]
    assert len(groups) == len(mixed.views) + 1  # each view's and the study's
    noise_uid = case.noise[1].sop_instance_uid
    for group in groups:
        abstained = NOT_ANALYSABLE_VALUE.value in _finding_values(group)
        probabilities = group.get_measurements(name=PROBABILITY)
        # The abstained view's group has no probability; every other group has one.
        assert (len(probabilities) == 0) == abstained
        if abstained:
            refs = {str(r.ReferencedSOPInstanceUID) for r in _referenced(group)}
            assert refs == {noise_uid}
    assert sum(NOT_ANALYSABLE_VALUE.value in _finding_values(g) for g in groups) == 1


def _finding_values(group: Sequence[pydicom.Dataset]) -> set[str]:
    """The code values of a measurement group's "Finding" evaluations (CODE items named DCM
    121071; highdicom's getter skips them, the concept being also that of the finding type)."""
    return {
        str(item.ConceptCodeSequence[0].CodeValue)
        for item in group[0].ContentSequence
        if item.ValueType == "CODE" and item.ConceptNameCodeSequence[0].CodeValue == "121071"
    }


def _referenced(group: Sequence[pydicom.Dataset]) -> list[pydicom.Dataset]:
    """The image references anywhere in a measurement group (TID 1501 or TID 1410)."""
    found = []
    for item in group[0].ContentSequence:
        if "ReferencedSOPSequence" in item:
            found.extend(item.ReferencedSOPSequence)
        for child in item.get("ContentSequence", []):
            found.extend(child.get("ReferencedSOPSequence", []))
    return found


def test_sc_and_gsps_of_an_abstained_image_say_not_analysable(
    case: Case, mixed: StudyPrediction, tmp_path: Path
) -> None:
    context = ReportContext(sources=[case.good[0], case.noise[0]], bundle=case.bundle.info)
    noise_uid = case.noise[1].sop_instance_uid
    views = [v for v in mixed.views if v.view.sop_instance_uid == noise_uid]
    headline, lines = banner_text(views, mixed, context)
    assert headline == f"{LEVEL_TEXT[mixed.finding]} (study)"  # the study was analysed
    assert f"This image: {NOT_ANALYSABLE}" in lines
    assert not any("this image p =" in line for line in lines)
    good = [v for v in mixed.views if v.view.sop_instance_uid != noise_uid]
    _, good_lines = banner_text(good, mixed, context)
    assert not any(NOT_ANALYSABLE in line for line in good_lines)

    sc = build_sc(views[0], mixed, case.noise[0], case.noise[1].pixels, context,
                  instance_number=2, extra_views=tuple(views[1:]))  # fmt: skip
    sc_path = tmp_path / "sc.dcm"
    _round_trip(sc, sc_path)
    assert _dciodvfy_errors(sc_path) == []
    # No heat map is painted on it: the image part of the SC stays grey.
    image = sc.pixel_array[int(sc.Rows) - case.noise[1].pixels.shape[0] :].astype(int)
    assert np.array_equal(image[..., 0], image[..., 1])

    gsps = build_gsps(views, mixed, case.noise[0], context, instance_number=2)
    gsps_path = tmp_path / "gsps.dcm"
    _round_trip(gsps, gsps_path)
    assert _dciodvfy_errors(gsps_path) == []
    texts = [t.UnformattedTextValue for a in gsps.GraphicAnnotationSequence
             for t in a.get("TextObjectSequence", [])]  # fmt: skip
    assert any(NOT_ANALYSABLE in t for t in texts), texts


def test_an_abstained_study_gets_its_sr_even_when_out_of_scope_studies_are_quiet(
    case: Case, tmp_path: Path
) -> None:
    noise = case.noise[0]
    row = InstanceRow(str(noise.SOPInstanceUID), str(noise.StudyInstanceUID),
                      str(noise.SeriesInstanceUID), str(noise.SOPClassUID), case.noise_path,
                      "MODALITY", "a1", 0.0, False)  # fmt: skip
    outcome = analyse_study(str(noise.StudyInstanceUID), [row], case.bundle,
                            Spool(tmp_path / "results"), report_out_of_scope=False)  # fmt: skip
    assert not outcome.in_scope and outcome.reason == NOT_ANALYSABLE
    assert len(outcome.files) == 1
    sr = pydicom.dcmread(outcome.files[0])
    assert sr.Modality == "SR"
    assert _dciodvfy_errors(outcome.files[0]) == []
    assert _pixelmed_findings(outcome.files[0]) == []
    assert "Not analysable: the image is unlike those the model was validated on" in _dsrdump(
        outcome.files[0]
    )


def test_a_study_the_model_abstained_on_ends_done_with_its_report_not_out_of_scope(
    case: Case, tmp_path: Path
) -> None:
    # It is a wrist study and its "not analysable" report goes out: out_of_scope would say the
    # node sent nothing (and the retention and load checks rely on that).
    noise = case.noise[0]
    study_uid = str(noise.StudyInstanceUID)
    queue = WorkQueue(tmp_path / "index.sqlite")
    queue.record_instance(sop_uid=str(noise.SOPInstanceUID), study_uid=study_uid,
                          series_uid=str(noise.SeriesInstanceUID),
                          sop_class_uid=str(noise.SOPClassUID), path=case.noise_path,
                          calling_aet="CR1", association_id="a1", received_at=100.0,
                          ours=False)  # fmt: skip
    queue.set_state(study_uid, "complete")
    assert analyse_next(queue, case.bundle, Spool(tmp_path / "results"), ["PACS@127.0.0.1:104"])
    row = queue.study(study_uid)
    assert row is not None and row.state == "sending" and row.reason == NOT_ANALYSABLE
    (delivery,) = queue.due(time.time() + 1)
    assert [pydicom.dcmread(f).Modality for f in delivery.files] == ["SR"]
    queue.record_attempt(delivery, sent=True, reason="", now=time.time(),
                         policy=RetryPolicy())  # fmt: skip
    row = queue.study(study_uid)
    assert row is not None and row.state == "done" and row.reason == NOT_ANALYSABLE


def _scored(mixed: StudyPrediction, probability: float, level: str) -> StudyPrediction:
    """`mixed` with its read view(s) and study scored `probability` (its abstained view kept)."""
    views = tuple(v if v.abstained else dataclasses.replace(v, probability=probability)
                  for v in mixed.views)  # fmt: skip
    return dataclasses.replace(mixed, views=views, probability=probability, level=level)


def _study_group_finding(path: Path) -> set[str]:
    content = hd.sr.srread(path).content
    (study,) = [g for g in content.get_planar_roi_measurement_groups()
                if g.tracking_identifier == "Study"]  # fmt: skip
    return _finding_values(study) - {FRACTURE.value}  # the finding type is a "Finding" too


def test_a_negative_read_with_an_unread_view_is_never_reported_as_no_fracture(
    case: Case, mixed: StudyPrediction, tmp_path: Path
) -> None:
    # The fracture may show only on the view the model could not read: the study is not cleared.
    negative = _scored(mixed, 0.001, "negative")
    assert negative.unanalysed_views == 1 and negative.finding == NEGATIVE_INCOMPLETE
    context = ReportContext(sources=[case.good[0], case.noise[0]], bundle=case.bundle.info)
    path = tmp_path / "sr.dcm"
    _round_trip(build_sr(negative, context), path)
    assert _dciodvfy_errors(path) == []
    assert _pixelmed_findings(path) == []
    assert _study_group_finding(path) == {"NEG_INCOMPLETE"}
    assert LEVEL_TEXT[NEGATIVE_INCOMPLETE] in _dsrdump(path)  # the read view says its own level

    noise_uid = case.noise[1].sop_instance_uid
    good = [v for v in negative.views if v.view.sop_instance_uid != noise_uid]
    headline, _ = banner_text(good, negative, context)
    assert headline == f"{LEVEL_TEXT[NEGATIVE_INCOMPLETE]} (study)"
    gsps = build_gsps(good, negative, case.good[0], context, instance_number=1)
    texts = [t.UnformattedTextValue for a in gsps.GraphicAnnotationSequence
             for t in a.get("TextObjectSequence", [])]  # fmt: skip
    assert any(LEVEL_TEXT[NEGATIVE_INCOMPLETE].lower() in t for t in texts), texts
    assert not any(LEVEL_TEXT["negative"].lower() in t for t in texts), texts


def test_a_fracture_found_on_the_read_views_stands_and_a_fully_read_negative_is_negative(
    case: Case, mixed: StudyPrediction, tmp_path: Path
) -> None:
    likely = _scored(mixed, 0.999, "likely")
    assert likely.finding == "likely"
    context = ReportContext(sources=[case.good[0], case.noise[0]], bundle=case.bundle.info)
    path = tmp_path / "likely.dcm"
    _round_trip(build_sr(likely, context), path)
    assert _study_group_finding(path) == {"LIKELY"}

    alone = case.bundle.predict([case.good[1]])
    read = _scored(alone, 0.001, "negative")
    assert read.unanalysed_views == 0 and read.finding == "negative"
    path = tmp_path / "negative.dcm"
    _round_trip(build_sr(read, ReportContext(sources=[case.good[0]], bundle=case.bundle.info)),
                path)  # fmt: skip
    assert _study_group_finding(path) == {"NEGATIVE"}
