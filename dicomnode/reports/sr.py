"""The study's Structured Report: a TID 1500 Measurement Report made with highdicom.

Codes, and why:
- Procedure reported: SCT 363679005 "Imaging procedure", from CID 100 as TID 1500 requires (the
  earlier SCT 168537006 "Plain radiography" is not in CID 100, and PixelMed's DicomSRValidator,
  the IHE AI Results validator, reports it as an error); the anatomy is each group's finding
  site, SCT 74670003 "Wrist joint" (CID 4009/4031).
- Finding type: SCT 125605004 "Fracture of bone". Probability: DCM 122157 "Probability", UCUM
  "1" ("no units").
- Presence and level: one TID 1501 qualitative evaluation named DCM 121071 "Finding" whose value
  is the level: "Fracture likely" (high-specificity operating point), "Fracture possible"
  (high-sensitivity point) or "No fracture detected"; a study whose other views the model
  could not read and whose read views show nothing gets "No fracture in the views analysed;
  others not analysable" (NEG_INCOMPLETE), never "No fracture detected". No standard code
  names these operating points, so the values are a private scheme 99WRISTAI, declared in the
  Coding Scheme Identification Sequence. (Free CODE items with other concept names, as earlier
  versions wrote, are "not in template" for the validator.) Views get the same operating points
  on their own probability.
- Where: every group is a TID 1410 planar-ROI group whose Image Region is a SCOORD POLYLINE in
  the source image's pixel coordinates, so a viewer can point at it. A view at or above
  "possible" whose heat map gives a region names the box around the suspected site
  (`pipeline.localisation.marked_region`); any other view names the part of its image the model
  analysed (`analysed_region`); the study group, last, names the region of its most suspicious
  located view, or with none located the analysed part of its most suspicious view (the
  study's other images stay in the evidence). One template for all groups because PixelMed's
  validator (20220618 and 20251203 alike) decides the template of the groups in Imaging
  Measurements from the container as a whole: once one group holds a SCOORD, every group is
  checked as TID 1410. And OHIF 3.13 shows nothing of a report whose groups have no region,
  and fails on one that mixes groups with and without (docs/VIEWER.md). Suspected groups come
  first: OHIF's SR viewport opens on the first group.
- Codes come from `pydicom.sr.codedict.codes` wherever the dictionary has them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
import numpy.typing as npt
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DataElementSequence
from pydicom.sr.codedict import codes

from dicomnode.identity import DISCLAIMER, MANUFACTURER, MODEL_NAME, SERIES_DESCRIPTION_PREFIX
from dicomnode.reports.uids import result_uid
from pipeline.inference import NEGATIVE_INCOMPLETE, BundleInfo, StudyPrediction, ViewPrediction
from pipeline.localisation import Region, analysed_region, marked_region

PRIVATE_SCHEME = "99WRISTAI"
PROCEDURE = codes.SCT.ImagingProcedure
WRIST = codes.SCT.WristJoint
FRACTURE = hd.sr.CodedConcept("125605004", "SCT", "Fracture of bone")  # not in pydicom's dict
PROBABILITY = codes.DCM.Probability
NO_UNITS = codes.UCUM.NoUnits
FINDING = codes.DCM.Finding
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
IMAGING_MEASUREMENT_REPORT = codes.DCM.ImagingMeasurementReport
PROCEDURE_REPORTED = codes.DCM.ProcedureReported
DEVICE = codes.DCM.Device
ENGLISH = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
LEVEL_TEXT = {
    "likely": "Fracture likely",
    "possible": "Fracture possible",
    "negative": "No fracture detected",
    NEGATIVE_INCOMPLETE: "No fracture in the views analysed; others not analysable",
}
"""What each study finding (`StudyPrediction.finding`) and view level says."""
_LEVEL_CODES = {"likely": "LIKELY", "possible": "POSSIBLE", "negative": "NEGATIVE",
                NEGATIVE_INCOMPLETE: "NEG_INCOMPLETE"}  # fmt: skip
LEVEL_VALUES = {
    level: hd.sr.CodedConcept(_LEVEL_CODES[level], PRIVATE_SCHEME, text)
    for level, text in LEVEL_TEXT.items()
}
NOT_ANALYSABLE_VALUE = hd.sr.CodedConcept(
    "NOT_ANALYSABLE", PRIVATE_SCHEME, "Not analysable: unlike the images the model was validated on"
)
SR_SERIES_NUMBER = 9901
PROBABILITY_DIGITS = 4
"""Decimals of the stored probabilities (the SR's value is round(p, PROBABILITY_DIGITS))."""


@dataclass(frozen=True)
class ReportContext:
    """What the node knows beyond the prediction."""

    sources: Sequence[Dataset]
    """The analysed source instances (headers suffice); patient and study come from the first."""
    bundle: BundleInfo
    institution: str = ""
    predecessor: Dataset | None = None
    """An earlier SR of this study that this one revises (Predecessor Documents Sequence)."""
    created: datetime | None = None
    """Content date and time of the objects; None means now (injected in tests)."""


def model_version(bundle: BundleInfo) -> str:
    """The model identity that goes into every result UID: name and version."""
    return f"{bundle.name} {bundle.version}"


SERIES_CONTENTS = {"sr": "fracture report", "sc": "heat map", "gsps": "fracture marks"}
"""What each result series holds, as its Series Description says it (once)."""


def series_description(kind: str) -> str:
    """The Series Description of the node's `kind` series ('sr' or 'sc'): the prefix the loop
    guard recognises, what the series is, and the disclaimer; at most 64 characters (LO)."""
    return f"{SERIES_DESCRIPTION_PREFIX} - {SERIES_CONTENTS[kind]} - {DISCLAIMER}"


def level_of(probability: float, bundle: BundleInfo) -> str:
    """'likely', 'possible' or 'negative' at the bundle's operating points."""
    if probability >= bundle.thresholds["likely"]:
        return "likely"
    if probability >= bundle.thresholds["possible"]:
        return "possible"
    return "negative"


def build_sr(prediction: StudyPrediction, context: ReportContext) -> Dataset:
    """The TID 1500 report of a study prediction; out-of-scope predictions get the short
    "not analysed" report with the prediction's reason."""
    if not prediction.in_scope:
        return build_not_analysed_sr(prediction.reason, context)
    if not context.sources:
        raise ValueError("an SR needs at least one source instance")
    by_uid = {str(ds.SOPInstanceUID): ds for ds in context.sources}
    algorithm = _algorithm(context.bundle)
    regions = [view_region(view, context.bundle) for view in prediction.views]
    sources = []
    for index, view in enumerate(prediction.views, start=1):
        source = by_uid.get(view.view.sop_instance_uid)
        if source is None:
            raise ValueError(
                f"view {index}: SOP Instance {view.view.sop_instance_uid} is not among the "
                "report's sources"
            )
        sources.append(source)
    # Every group is a TID 1410 group with an image region (see the module docstring): a view
    # with nothing to point at names the part of the image it analysed.
    shown = [region if region is not None else analysed_region(view.view)
             for view, region in zip(prediction.views, regions, strict=True)]  # fmt: skip
    groups: list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations] = []
    for index, (view, source, region) in enumerate(zip(prediction.views, sources, shown,
                                                       strict=True), start=1):  # fmt: skip
        label = f"View {index} (image part {view.view.part + 1} of {view.view.n_parts})"
        extra = f"{view.view.sop_instance_uid}/{view.view.part}"
        probability = None if view.abstained else view.probability  # no result: no number
        groups.append(_roi_group(context, label, probability, source, region, algorithm,
                                 extra))  # fmt: skip
    # Suspected views first, the study group last: OHIF's SR viewport opens on the first group.
    scored = [i for i, view in enumerate(prediction.views) if not view.abstained]
    suspected = {
        i for i in scored if level_of(prediction.views[i].probability, context.bundle) != "negative"
    }
    groups = [groups[i] for i in sorted(range(len(groups)), key=lambda i: i not in suspected)]
    # The study group points where the study's result comes from: its most suspicious located
    # view, or, with nothing located, its most suspicious view's analysed part.
    located = [i for i, region in enumerate(regions) if region is not None]
    top = max(located or scored or [0], key=lambda i: prediction.views[i].probability)
    groups.append(_roi_group(context, "Study", prediction.probability, sources[top], shown[top],
                             algorithm, "study", finding=prediction.finding))  # fmt: skip
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(context.bundle),
        procedure_reported=PROCEDURE,
        imaging_measurements=groups,
    )
    return _document(report, context, "sr")


def build_not_analysed_sr(reason: str, context: ReportContext) -> Dataset:
    """A TID 1500 report without measurement groups: one "Finding" text saying why the study
    was not analysed (TID 1500 row 10, Qualitative Evaluations)."""
    if not context.sources:
        raise ValueError("an SR needs at least one source instance")
    # highdicom's MeasurementReport requires measurement groups, so the same root is assembled
    # from highdicom's own templates and content items.
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    concept_mod = hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD
    root = hd.sr.ContainerContentItem(name=IMAGING_MEASUREMENT_REPORT, template_id="1500")
    root.ContentSequence = hd.sr.ContentSequence()
    root.ContentSequence.extend(hd.sr.LanguageOfContentItemAndDescendants(ENGLISH))
    root.ContentSequence.extend(_observation_context(context.bundle))
    root.ContentSequence.append(hd.sr.CodeContentItem(PROCEDURE_REPORTED, PROCEDURE, concept_mod))
    evaluations = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=contains
    )
    # An abstention's reason says "not analysable" itself; other reasons get the prefix.
    if reason.startswith("not analysable"):
        text = reason[:1].upper() + reason[1:]
    else:
        text = f"Not analysed: {reason}"
    finding = hd.sr.TextContentItem(FINDING, text, contains)
    evaluations.ContentSequence = hd.sr.ContentSequence([finding])
    root.ContentSequence.append(evaluations)
    return _document(root, context, "sr-not-analysed", reason)


def is_not_analysed_sr(sr: Dataset) -> bool:
    """Whether an SR of this node is a "not analysed" report (`build_not_analysed_sr`): its root
    holds the Qualitative Evaluations container, which an analysed study's report never does."""
    return any(
        item.get("ValueType") == "CONTAINER"
        and item.ConceptNameCodeSequence[0].CodeValue == QUALITATIVE_EVALUATIONS.value
        and item.ConceptNameCodeSequence[0].CodingSchemeDesignator
        == QUALITATIVE_EVALUATIONS.scheme_designator
        for item in sr.get("ContentSequence", [])
        if "ConceptNameCodeSequence" in item
    )


def _algorithm(bundle: BundleInfo) -> hd.sr.AlgorithmIdentification:
    thresholds = ",".join(f"{k}:{v:.4f}" for k, v in sorted(bundle.thresholds.items()))
    return hd.sr.AlgorithmIdentification(
        name=bundle.name,
        version=bundle.version,
        parameters=[
            f"arch={bundle.arch}",
            f"aggregation={bundle.aggregation}",
            f"thresholds={thresholds}",
        ],
    )


def _observation_context(bundle: BundleInfo) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=result_uid("device", "", model_version(bundle), ()),
        name=MODEL_NAME,
        manufacturer_name=MANUFACTURER,
        model_name=model_version(bundle),
    )
    observer = hd.sr.ObserverContext(
        observer_type=DEVICE,
        observer_identifying_attributes=device,
    )
    return hd.sr.ObservationContext(observer_device_context=observer)


def view_region(view: ViewPrediction, bundle: BundleInfo) -> Region | None:
    """The suspected region the results mark for a view (`pipeline.localisation.marked_region`
    at the bundle's "possible" operating point): the SR's SCOORD, the presentation state's box.
    None for a view the model abstained on: it has no result to mark."""
    if view.abstained:
        return None
    return marked_region(view, bundle.thresholds["possible"])


def _tracking(context: ReportContext, label: str, extra: str) -> hd.sr.TrackingIdentifier:
    """Tracking Identifier and Tracking Unique Identifier (OHIF shows groups with both)."""
    study_uid = str(context.sources[0].StudyInstanceUID)
    inputs = [str(ds.SOPInstanceUID) for ds in context.sources]
    return hd.sr.TrackingIdentifier(
        uid=result_uid("tracking", study_uid, model_version(context.bundle), inputs, extra),
        identifier=label,
    )


def _probability(probability: float, algorithm: hd.sr.AlgorithmIdentification) -> hd.sr.Measurement:
    """The probability as a NUM with its TID 4019 algorithm identification."""
    return hd.sr.Measurement(
        name=PROBABILITY,
        value=round(probability, PROBABILITY_DIGITS),
        unit=NO_UNITS,
        algorithm_id=algorithm,
    )


def _result(
    probability: float | None,
    context: ReportContext,
    algorithm: hd.sr.AlgorithmIdentification,
    finding: str | None = None,
) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation]]:
    """A group's probability and level (`finding`, the study's, where given); no probability
    (None: the view abstained) gives no measurement and the "not analysable" finding."""
    if probability is None:
        return [], [hd.sr.QualitativeEvaluation(FINDING, NOT_ANALYSABLE_VALUE)]
    level = LEVEL_VALUES[finding or level_of(probability, context.bundle)]
    return [_probability(probability, algorithm)], [hd.sr.QualitativeEvaluation(FINDING, level)]


def _within(points: npt.NDArray[np.float32], source: Dataset) -> npt.NDArray[np.float32]:
    """SCOORD points kept on the image: a rotated view's box may reach past its edges."""
    limits = np.array([float(source.Columns), float(source.Rows)], dtype=np.float32)
    return np.clip(points, 0.0, limits).astype(np.float32)


def _roi_group(
    context: ReportContext,
    label: str,
    probability: float | None,
    source: Dataset,
    region: Region,
    algorithm: hd.sr.AlgorithmIdentification,
    extra: str,
    finding: str | None = None,
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """A TID 1410 group: the view's result with its suspected region as a SCOORD POLYLINE."""
    image_region = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=_within(region.dicom_points(), source),
        source_image=hd.sr.SourceImageForRegion.from_source_image(source),
    )
    measurements, evaluations = _result(probability, context, algorithm, finding)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(context, label, extra),
        referenced_region=image_region,
        finding_type=FRACTURE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=WRIST)],
        measurements=measurements or None,
        qualitative_evaluations=evaluations,
    )


def _document(
    content: Dataset | DataElementSequence, context: ReportContext, kind: str, extra: str = ""
) -> Dataset:
    sources = list(context.sources)
    study_uid = str(sources[0].StudyInstanceUID)
    version = model_version(context.bundle)
    inputs = [str(ds.SOPInstanceUID) for ds in sources]
    predecessor = context.predecessor
    instance_number = 1
    if predecessor is not None:
        # A revision must never reuse the UID of the report it replaces.
        extra = f"{extra}/revises:{predecessor.SOPInstanceUID}"
        instance_number = int(predecessor.get("InstanceNumber", 0) or 0) + 1
    created = context.created or datetime.now()
    sr = hd.sr.ComprehensiveSR(
        evidence=sources,
        content=content,
        series_instance_uid=result_uid("sr-series", study_uid, version, ()),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=result_uid(kind, study_uid, version, inputs, extra),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,
        is_verified=False,
        institution_name=context.institution or None,
        previous_versions=[predecessor] if predecessor is not None else None,
        series_description=series_description("sr"),
        manufacturer_model_name=MODEL_NAME,
        software_versions=version,
        coding_schemes=[
            CodingSchemeIdentificationItem(
                designator=PRIVATE_SCHEME,
                name="wristai result codes",
                responsible_organization=MANUFACTURER,
            )
        ],
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
    )
    return sr
