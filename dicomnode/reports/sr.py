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
  (high-sensitivity point) or "No fracture detected". No standard code names these operating
  points, so the values are a private scheme 99WRISTAI, declared in the Coding Scheme
  Identification Sequence. (Free CODE items with other concept names, as earlier versions wrote,
  are "not in template" for the validator.) Views get the same operating points on their own
  probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DataElementSequence

from dicomnode.identity import DISCLAIMER, MANUFACTURER, MODEL_NAME, SERIES_DESCRIPTION_PREFIX
from dicomnode.reports.uids import result_uid
from pipeline.inference import BundleInfo, StudyPrediction

PRIVATE_SCHEME = "99WRISTAI"
PROCEDURE = hd.sr.CodedConcept("363679005", "SCT", "Imaging procedure")
WRIST = hd.sr.CodedConcept("74670003", "SCT", "Wrist joint")
FRACTURE = hd.sr.CodedConcept("125605004", "SCT", "Fracture of bone")
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
FINDING = hd.sr.CodedConcept("121071", "DCM", "Finding")
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
IMAGING_MEASUREMENT_REPORT = hd.sr.CodedConcept("126000", "DCM", "Imaging Measurement Report")
PROCEDURE_REPORTED = hd.sr.CodedConcept("121058", "DCM", "Procedure reported")
ENGLISH = hd.sr.CodedConcept("en-US", "RFC5646", "English (United States)")
LEVEL_TEXT = {"likely": "Fracture likely", "possible": "Fracture possible",
              "negative": "No fracture detected"}  # fmt: skip
LEVEL_VALUES = {
    level: hd.sr.CodedConcept(level.upper(), PRIVATE_SCHEME, text)
    for level, text in LEVEL_TEXT.items()
}
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


SERIES_CONTENTS = {"sr": "fracture report", "sc": "heat map"}
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
    groups = [_group(context, "Study", prediction.probability, context.sources, algorithm)]
    for index, view in enumerate(prediction.views, start=1):
        source = by_uid.get(view.view.sop_instance_uid)
        if source is None:
            raise ValueError(
                f"view {index}: SOP Instance {view.view.sop_instance_uid} is not among the "
                "report's sources"
            )
        label = f"View {index} (image part {view.view.part + 1} of {view.view.n_parts})"
        extra = f"{view.view.sop_instance_uid}/{view.view.part}"
        groups.append(_group(context, label, view.probability, [source], algorithm, extra))
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
    finding = hd.sr.TextContentItem(FINDING, f"Not analysed: {reason}", contains)
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
        observer_type=hd.sr.CodedConcept("121007", "DCM", "Device"),
        observer_identifying_attributes=device,
    )
    return hd.sr.ObservationContext(observer_device_context=observer)


def _group(
    context: ReportContext,
    label: str,
    probability: float,
    sources: Sequence[Dataset],
    algorithm: hd.sr.AlgorithmIdentification,
    extra: str = "study",
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    level = level_of(probability, context.bundle)
    study_uid = str(context.sources[0].StudyInstanceUID)
    inputs = [str(ds.SOPInstanceUID) for ds in context.sources]
    tracking = hd.sr.TrackingIdentifier(
        uid=result_uid("tracking", study_uid, model_version(context.bundle), inputs, extra),
        identifier=label,
    )
    measurement = hd.sr.Measurement(
        name=PROBABILITY,
        value=round(probability, PROBABILITY_DIGITS),
        unit=NO_UNITS,
        algorithm_id=algorithm,
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        finding_type=FRACTURE,
        finding_sites=[hd.sr.FindingSite(anatomic_location=WRIST)],
        measurements=[measurement],
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(FINDING, LEVEL_VALUES[level]),
        ],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(s) for s in sources],
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
