"""Write a synthetic hospital archive export: DICOM files, study labels and per-instance truth.

Layout of ``OUT``:
- ``dicom/<PatientID>/<StudyInstanceUID>/<SOPInstanceUID>.dcm``
- ``labels.csv``: study_instance_uid, accession_number, label (as the thesis's data came)
- ``truth.csv``: one row per instance with what tests need to check the pipeline against
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence

from train.phantoms import anatomy, appearance
from train.phantoms.encoding import TRANSFER_SYNTAXES, to_stored, write_instance
from train.phantoms.plan import RENDERERS, InstancePlan, StudyPlan, plan_study
from train.projection import render as projection

SOP_CLASSES = {
    "CR": uid.ComputedRadiographyImageStorage,
    "DX_PRESENTATION": uid.DigitalXRayImageStorageForPresentation,
    "DX_PROCESSING": uid.DigitalXRayImageStorageForProcessing,
    "SC_GREY8": uid.SecondaryCaptureImageStorage,
    "SC_GREY16": uid.SecondaryCaptureImageStorage,
    "SC_RGB": uid.SecondaryCaptureImageStorage,
}
# SNOMED CT codes for the Anatomic Region Sequence of DX images (PS3.16 CID 4009/4031).
ANATOMY_CODES = {
    "wrist": ("74670003", "Wrist joint"),
    "chest": ("51185008", "Thorax"),
    "pelvis": ("12921003", "Pelvis"),
    "skull": ("89546000", "Skull"),
    "foot": ("56459004", "Foot"),
    "ankle": ("70258002", "Ankle joint"),
    "knee": ("72696002", "Knee joint"),
    "lower_leg": ("30021000", "Lower leg"),
    "elbow": ("76248009", "Elbow joint"),
    "shoulder": ("91774008", "Shoulder joint"),
    "spine": ("421060004", "Spine"),
}
TRUTH_COLUMNS = (
    "path",
    "patient_id",
    "study_instance_uid",
    "sop_instance_uid",
    "accession_number",
    "study_label",
    "body_part",
    "body_part_tag",
    "study_description",
    "view",
    "sop_kind",
    "transfer_syntax",
    "photometric",
    "bits_stored",
    "voi",
    "rows",
    "columns",
    "parts",
    "part_boxes",
    "arm_angle_deg",
    "fingers_down",
    "fracture_visible",
    "fracture_kind",
    "fracture_subtle",
    "fracture_line",
    "implant",
    "cast",
    "marker",
    "ruler",
    "frame",
    "corrupt",
    "conformant",
    "renderer",
    "frame_shape",
    "part_angles_deg",
    "part_fingers_down",
    "landmarks",
    "appearance",
)
# Body Part Examined terms of unpaired parts, for which Laterality must not be sent.
UNPAIRED_TAGS = frozenset({"CHEST", "PELVIS", "SKULL", "SPINE", "CSPINE", "LSPINE", "TSPINE"})
Rendered = anatomy.RenderedView | projection.ProjectedView


@dataclass(frozen=True)
class ArchiveSummary:
    """What was written, for the command line and the tests."""

    studies: int
    instances: int
    fractured_studies: int
    corrupt_instances: int


def generate_archive(
    out: Path,
    *,
    studies: int,
    seed: int,
    size: str = "small",
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
    syntaxes: tuple[str, ...] = (),
    renderer: str = "phantom",
    randomise: bool = False,
) -> ArchiveSummary:
    """Generate `studies` synthetic studies under `out`; deterministic for `seed`.

    `renderer`: "phantom" (the first world), "projection" (the second, independently designed
    one) or "mixed" (each study drawn by one of them). `randomise` redraws the look of every
    phantom image (`train.phantoms.appearance`); "mixed" always does. The projection renderer
    always samples its image chain over wide ranges."""
    if size not in ("small", "full"):
        raise ValueError(f"size must be 'small' or 'full', not {size!r}")
    out.mkdir(parents=True, exist_ok=True)
    n_patients = max(1, int(studies * 0.85))
    unknown = set(syntaxes) - set(TRANSFER_SYNTAXES)
    if unknown:
        raise ValueError(f"unknown transfer syntaxes {sorted(unknown)}")
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r}; expected one of {', '.join(RENDERERS)}")
    randomise = randomise or renderer == "mixed"
    jobs = [
        (out, seed, index, size, n_patients, syntaxes, renderer, randomise)
        for index in range(studies)
    ]
    rows: list[list[dict[str, str]]] = []
    plans: list[StudyPlan] = []
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for plan, truth in pool.map(_write_study, jobs, chunksize=2):
                plans.append(plan)
                rows.append(truth)
                if progress:
                    progress(1)
    else:
        for job in jobs:
            plan, truth = _write_study(job)
            plans.append(plan)
            rows.append(truth)
            if progress:
                progress(1)
    _write_labels(out / "labels.csv", plans)
    truth_rows = [row for study in rows for row in study]
    with (out / "truth.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=TRUTH_COLUMNS)
        writer.writeheader()
        writer.writerows(truth_rows)
    return ArchiveSummary(
        studies=sum(p.has_images for p in plans),
        instances=len(truth_rows),
        fractured_studies=sum(p.label for p in plans if p.has_images),
        corrupt_instances=sum(1 for r in truth_rows if r["corrupt"]),
    )


def _write_labels(path: Path, plans: list[StudyPlan]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["study_instance_uid", "accession_number", "label"])
        for plan in plans:
            if plan.has_labels:
                writer.writerow([plan.study_instance_uid, plan.accession_number, plan.label])


def _write_study(
    job: tuple[Path, int, int, str, int, tuple[str, ...], str, bool],
) -> tuple[StudyPlan, list[dict[str, str]]]:
    out, seed, index, size, n_patients, syntaxes, renderer, randomise = job
    plan = plan_study(
        seed, index, size=size, n_patients=n_patients, syntaxes=syntaxes, renderer=renderer
    )
    if not plan.has_images:
        return plan, []
    rng = np.random.default_rng(np.random.SeedSequence([seed, index, 7]))
    looks = np.random.default_rng(np.random.SeedSequence([seed, index, 11])) if randomise else None
    return plan, [
        write_instance_file(out, plan, instance, rng, looks) for instance in plan.instances
    ]


def render_instance(
    plan: StudyPlan,
    instance: InstancePlan,
    rng: np.random.Generator,
    looks: np.random.Generator | None = None,
) -> Rendered:
    """The planned instance drawn by its study's renderer; `looks`, when given, redraws the
    appearance of a phantom image (from its own stream: the anatomy does not change)."""
    if plan.renderer == "projection":
        return projection.render_view(instance.spec, rng)  # type: ignore[arg-type]
    rendered = anatomy.render_view(instance.spec, rng)  # type: ignore[arg-type]
    if looks is None:
        return rendered
    image, drawn = appearance.randomise(rendered.image, looks)
    return projection.ProjectedView(image, rendered.parts, (), drawn)


def write_instance_file(
    out: Path,
    plan: StudyPlan,
    instance: InstancePlan,
    rng: np.random.Generator,
    looks: np.random.Generator | None = None,
) -> dict[str, str]:
    """Render, encode and write one planned instance under `out`; returns its truth row."""
    rendered = render_instance(plan, instance, rng, looks)
    relative = Path("dicom", plan.patient_id, plan.study_instance_uid)
    relative /= f"{instance.sop_instance_uid}.dcm"
    path = out / relative
    ds, pixels = build_dataset(plan, instance, rendered, rng)
    write_instance(ds, pixels, instance.syntax, path)
    if instance.corrupt:
        _corrupt(path, instance.corrupt)
    return _truth_row(relative, plan, instance, rendered)


def build_dataset(
    plan: StudyPlan, instance: InstancePlan, rendered: Rendered, rng: np.random.Generator
) -> tuple[Dataset, np.ndarray]:
    """The instance's dataset (without Pixel Data) and its stored pixels."""
    pixels, image_pixel = to_stored(
        rendered.image,
        photometric=instance.photometric,
        bits_stored=instance.bits_stored,
        voi=instance.voi,
        rng=rng,
    )
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    sop_class = SOP_CLASSES[instance.sop_kind]
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = uid.UID(instance.sop_instance_uid)
    ds.file_meta.ImplementationClassUID = uid.PYDICOM_IMPLEMENTATION_UID
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = (
        ["ORIGINAL", "PRIMARY"]
        if not instance.sop_kind.startswith("SC")
        else [
            "DERIVED",
            "SECONDARY",
        ]
    )
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = instance.sop_instance_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = plan.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = (
        f"{9 + plan.index % 9:02d}{plan.index % 60:02d}00"
    )
    ds.AccessionNumber = plan.accession_number
    ds.Modality = "DX" if instance.sop_kind.startswith("DX") else "CR"
    if instance.sop_kind.startswith("SC"):
        ds.Modality = "OT"
        ds.ConversionType = "WSD"
    ds.Manufacturer = plan.manufacturer
    ds.InstitutionName = "Synthetic Hospital"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = plan.study_description
    ds.SeriesDescription = f"{plan.body_part_tag} {instance.spec.view}".strip()
    ds.PatientName = plan.patient_name
    ds.PatientID = plan.patient_id
    ds.PatientBirthDate = plan.birth_date
    ds.PatientSex = plan.patient_sex
    ds.StudyInstanceUID = plan.study_instance_uid
    ds.SeriesInstanceUID = instance.series_instance_uid
    ds.StudyID = str(plan.index + 1)
    ds.SeriesNumber = instance.series_number
    ds.InstanceNumber = instance.instance_number
    ds.BodyPartExamined = plan.body_part_tag
    if not instance.sop_kind.startswith("SC"):
        # PS3.3 defined terms: a lateral wrist is recorded as left or right lateral.
        lateral = "LL" if plan.laterality == "L" else "RL"
        positions = {"LAT": lateral, "PA": "PA", "OBL": ""}
        ds.ViewPosition = positions.get(instance.spec.view, "")
    if not instance.sop_kind.startswith("DX"):
        # Series Laterality (Type 2C) where no Image Laterality is sent: empty when unpaired,
        # which dciodvfy accepts with a warning, while its absence can be an error; but where
        # the tag names a body part PS3.16 knows to be unpaired it must be absent.
        paired = plan.body_part == "wrist" or plan.mistagged
        if paired or plan.body_part_tag not in UNPAIRED_TAGS:
            ds.Laterality = plan.laterality if paired else ""
    ds.PatientOrientation = ["L", "F"] if instance.spec.view == "PA" else ["A", "F"]
    ds.BurnedInAnnotation = "NO"
    ds.update(image_pixel)
    spacing = f"{0.1 + 0.05 * (plan.index % 3):.2f}"
    if instance.sop_kind.startswith("DX"):
        _dx_attributes(ds, plan, instance)
        ds.ImagerPixelSpacing = [spacing, spacing]
    elif instance.sop_kind == "CR":
        ds.ImagerPixelSpacing = [spacing, spacing]
    if instance.sop_kind == "SC_RGB":
        pixels = _as_rgb_screenshot(pixels, image_pixel)
        for keyword in ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence"):
            if keyword in ds:
                del ds[keyword]
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
    return ds, pixels


def _dx_attributes(ds: Dataset, plan: StudyPlan, instance: InstancePlan) -> None:
    presentation = instance.sop_kind == "DX_PRESENTATION"
    ds.PresentationIntentType = "FOR PRESENTATION" if presentation else "FOR PROCESSING"
    ds.ImageLaterality = plan.laterality if plan.body_part == "wrist" else "U"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = -1 if ds.PhotometricInterpretation == "MONOCHROME1" else 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = (
        "INVERSE" if ds.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
    )
    ds.LossyImageCompression = "00"
    ds.DetectorType = "SCINTILLATOR"
    ds.PositionerType = "NONE"
    ds.AcquisitionContextSequence = Sequence()
    region = Dataset()
    region.CodeValue, region.CodeMeaning = ANATOMY_CODES[plan.body_part]
    region.CodingSchemeDesignator = "SCT"
    ds.AnatomicRegionSequence = Sequence([region])
    ds.PatientOrientation = ["L", "F"] if instance.spec.view == "PA" else ["A", "F"]


def _as_rgb_screenshot(pixels: np.ndarray, image_pixel: Dataset) -> np.ndarray:
    """An 8-bit RGB screenshot of the displayed image with a coloured measurement overlay."""
    full = (1 << int(image_pixel.BitsStored)) - 1
    grey = np.clip(pixels.astype(np.float32) * (255.0 / full), 0, 255).astype(np.uint8)
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    rows, cols = grey.shape
    r0 = rows // 12
    rgb[r0 : r0 + max(2, rows // 200), cols // 10 : cols // 3] = (255, 220, 0)
    return rgb


def _corrupt(path: Path, kind: str) -> None:
    data = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(data[: len(data) - max(len(data) // 3, 16)])
    else:
        # Garbage over the start of the dataset, just after the file meta: an unreadable header.
        start = 132 + 200
        junk = bytes((i * 37 + 11) % 256 for i in range(64))
        path.write_bytes(data[:start] + junk + data[start + 64 :])


def _truth_row(
    relative: Path, plan: StudyPlan, instance: InstancePlan, rendered: Rendered
) -> dict[str, str]:
    spec = instance.spec
    lines = [p.fracture_line for p in rendered.parts if p.fracture_line is not None]
    first_angle = rendered.parts[0].angle_deg if rendered.parts else float("nan")
    return {
        "path": relative.as_posix(),
        "patient_id": plan.patient_id,
        "study_instance_uid": plan.study_instance_uid,
        "sop_instance_uid": instance.sop_instance_uid,
        "accession_number": plan.accession_number,
        "study_label": str(plan.label),
        "body_part": plan.body_part,
        "body_part_tag": plan.body_part_tag,
        "study_description": plan.study_description,
        "view": spec.view,
        "sop_kind": instance.sop_kind,
        "transfer_syntax": instance.syntax,
        "photometric": instance.photometric,
        "bits_stored": str(instance.bits_stored),
        "voi": instance.voi,
        "rows": str(spec.height),
        "columns": str(spec.width),
        "parts": str(len(rendered.parts)),
        "part_boxes": json.dumps([list(p.bbox) for p in rendered.parts]),
        "arm_angle_deg": f"{first_angle:.2f}",
        "fingers_down": str(int(spec.fingers_down)),
        "fracture_visible": str(int(bool(lines))),
        "fracture_kind": spec.fracture.kind if spec.fracture else "",
        "fracture_subtle": str(int(spec.fracture.subtle)) if spec.fracture else "",
        "fracture_line": json.dumps([[list(a), list(b)] for a, b in lines]),
        "implant": str(int(spec.implant)),
        "cast": str(int(spec.cast)),
        "marker": spec.marker or "",
        "ruler": str(int(spec.ruler)),
        "frame": spec.frame or "",
        "corrupt": instance.corrupt,
        "conformant": str(int(plan.conformant)),
        "renderer": plan.renderer,
        "frame_shape": getattr(spec, "frame_shape", "full" if spec.frame else "none"),
        "part_angles_deg": json.dumps([round(p.angle_deg, 2) for p in rendered.parts]),
        "part_fingers_down": json.dumps([int(p.fingers_down) for p in rendered.parts]),
        "landmarks": json.dumps(
            [
                {k: [round(x, 2), round(y, 2)] for k, (x, y) in m.items()}
                for m in getattr(rendered, "landmarks", ())
            ]
        ),
        "appearance": json.dumps(getattr(rendered, "appearance", {}), sort_keys=True),
    }


def read_truth(archive: Path) -> Iterator[dict[str, str]]:
    """The rows of an archive's truth.csv."""
    with (archive / "truth.csv").open(newline="", encoding="utf-8") as handle:
        yield from csv.DictReader(handle)
