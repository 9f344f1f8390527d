"""One study's analysis: received instances in, result files out: the SR, and per image a
presentation state and a Secondary Capture, as many of them as [results] send names.

The results are written to the results spool before the first send, so a crash or a PACS that
is down never loses them. A study analysed again after late instances gets an SR that revises
the earlier one (Predecessor Documents Sequence) rather than a duplicate; so does a study first
found out of scope whose "not analysed" SR went out (a wrist view after the hand view, or an
instance re-sent with a corrected Body Part Examined).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

from dicomnode.config import RESULT_KINDS
from dicomnode.index import InstanceRow
from dicomnode.reports import (
    ReportContext,
    build_gsps,
    build_not_analysed_sr,
    build_sc,
    build_sr,
)
from dicomnode.reports.sr import is_not_analysed_sr, model_version
from dicomnode.spool import Spool
from pipeline.dicom.uids import SR_SOP_CLASSES
from pipeline.dicomio import DicomImageError, Radiograph, read_radiograph
from pipeline.inference import ModelBundle, StudyPrediction, ViewPrediction

log = logging.getLogger("dicomnode.analysis")


@dataclass(frozen=True)
class AnalysisOutcome:
    """What the analysis of one study produced."""

    in_scope: bool
    reason: str
    files: tuple[Path, ...]
    prediction: StudyPrediction | None
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds per stage: preprocess (decoding included), inference, report."""


def analyse_study(
    study_uid: str, instances: list[InstanceRow], bundle: ModelBundle, results: Spool,
    *, institution: str = "", report_out_of_scope: bool = False,
    send: Collection[str] = RESULT_KINDS,
) -> AnalysisOutcome:  # fmt: skip
    """Analyse the study's received instances and write the result objects to `results`: the
    kinds in `send` ("sr", "gsps", "sc"); for an out-of-scope study, a "not analysed" SR only
    when `report_out_of_scope`, whatever `send` says. A wrist study whose every view the model
    abstained on (`pipeline.ood`) always gets that SR, with the reason: the radiologist expects a
    result for a wrist study, and silence would read as "still running" or "lost"."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    sources: list[Dataset] = []
    radiographs: list[Radiograph] = []
    for instance in instances:
        try:
            dataset = pydicom.dcmread(instance.path)
            radiograph = read_radiograph(dataset)
        except (DicomImageError, OSError, ValueError) as exc:
            log.warning(
                "study %s: instance %s skipped: %s",
                study_uid,
                instance.sop_uid,
                type(exc).__name__ if not isinstance(exc, DicomImageError) else exc,
            )
            continue
        sources.append(dataset)
        radiographs.append(radiograph)
    if not radiographs:
        return AnalysisOutcome(False, "no readable radiograph in the study", (), None)
    decoded = time.perf_counter() - started
    prediction = bundle.predict(radiographs, timings=timings)
    timings["preprocess"] = timings.get("preprocess", 0.0) + decoded
    if not prediction.in_scope:
        files: tuple[Path, ...] = ()
        if report_out_of_scope or prediction.abstained:
            context = ReportContext(sources=sources, bundle=bundle.info, institution=institution)
            files = (_write(results, build_not_analysed_sr(prediction.reason, context)),)
        return AnalysisOutcome(False, prediction.reason, files, prediction, timings)
    reporting = time.perf_counter()
    predecessor = _previous_sr(results, study_uid, sources, model_version(bundle.info))
    context = ReportContext(sources=sources, bundle=bundle.info, institution=institution,
                            predecessor=predecessor)  # fmt: skip
    written = [_write(results, build_sr(prediction, context))] if "sr" in send else []
    by_source: dict[str, list[ViewPrediction]] = defaultdict(list)
    for view in prediction.views:
        by_source[view.view.sop_instance_uid].append(view)
    for number, (uid, views) in enumerate(sorted(by_source.items()), start=1):
        index = next(i for i, r in enumerate(radiographs) if r.sop_instance_uid == uid)
        if "gsps" in send:
            gsps = build_gsps(views, prediction, sources[index], context, instance_number=number)
            written.append(_write(results, gsps))
        if "sc" in send:
            sc = build_sc(
                views[0],
                prediction,
                sources[index],
                radiographs[index].pixels,
                context,
                instance_number=number,
                extra_views=tuple(views[1:]),
            )
            written.append(_write(results, sc))
    timings["report"] = time.perf_counter() - reporting
    log.info("study %s analysed: %s; %d result object(s)", study_uid, prediction.reason,
             len(written))  # fmt: skip
    return AnalysisOutcome(True, prediction.reason, tuple(written), prediction, timings)


def _write(results: Spool, dataset: Dataset) -> Path:
    from io import BytesIO

    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return results.store(str(dataset.StudyInstanceUID), str(dataset.SOPInstanceUID),
                         buffer.getvalue())  # fmt: skip


def _previous_sr(
    results: Spool, study_uid: str, sources: list[Dataset], version: str
) -> Dataset | None:
    """The latest SR this node made for the study from other inputs or with another model
    `version`, if any: the report a new one revises.

    An SR from the same inputs and model is this very analysis made before: written just before
    a crash (never sent), or sent already and the study received again. Passing over it gives the
    new SR that SR's own predecessor, hence the same deterministic UID: the same report again,
    not a revision of one the PACS may never have had. A "not analysed" SR from the same inputs
    is not this analysis: an instance came again with other content (a corrected Body Part
    Examined), and the new SR revises the "not analysed" one.
    """
    inputs = {str(ds.SOPInstanceUID) for ds in sources}
    folder = results.path(study_uid, "1").parent
    latest: Dataset | None = None
    for path in sorted(folder.glob("*.dcm")) if folder.exists() else []:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if str(ds.SOPClassUID) not in SR_SOP_CLASSES:
            continue
        same = _evidence(ds) == inputs and str(ds.get("SoftwareVersions", "")) == version
        if same and not is_not_analysed_sr(ds):
            continue
        if latest is None or int(ds.InstanceNumber) > int(latest.InstanceNumber):
            latest = ds
    return latest


def _evidence(sr: Dataset) -> set[str]:
    """The SOP Instance UIDs an SR names as its evidence from the study."""
    return {str(ref.ReferencedSOPInstanceUID)
            for study in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study.get("ReferencedSeriesSequence", [])
            for ref in series.get("ReferencedSOPSequence", [])}  # fmt: skip
