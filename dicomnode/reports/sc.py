"""The Secondary Capture of one analysed image: the radiograph as the radiologist sees it, the
Grad-CAM heat map mapped back onto it and a banner with the result and the disclaimer."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.identity import DISCLAIMER, MANUFACTURER, MODEL_NAME
from dicomnode.reports.overlay import (
    blend_heat,
    draw_banner,
    grey_to_rgb,
    heat_on_grid,
    output_shape,
)
from dicomnode.reports.sr import (
    LEVEL_TEXT,
    ReportContext,
    level_of,
    model_version,
    series_description,
)
from dicomnode.reports.uids import result_uid
from pipeline.inference import StudyPrediction, ViewPrediction
from pipeline.ood import NOT_ANALYSABLE

SC_SERIES_NUMBER = 9902
_BIPED = {"A", "P", "R", "L", "H", "F"}


def build_sc(
    view: ViewPrediction,
    prediction: StudyPrediction,
    source: Dataset,
    source_pixels: np.ndarray,
    context: ReportContext,
    *,
    instance_number: int,
    extra_views: Sequence[ViewPrediction] = (),
) -> Dataset:
    """An RGB Secondary Capture of `source` with the heat maps of `view` and `extra_views`
    (other parts of the same image), below a result banner strip added above the image.

    `source_pixels` are the display pixels of the source (`read_radiograph(...).pixels`).
    """
    views = (view, *extra_views)
    sop_uid = str(source.SOPInstanceUID)
    for v in views:
        if v.view.sop_instance_uid != sop_uid:
            raise ValueError(
                f"view of SOP Instance {v.view.sop_instance_uid} cannot be drawn on "
                f"SOP Instance {sop_uid}"
            )
    source_shape = (int(source_pixels.shape[0]), int(source_pixels.shape[1]))
    shape = output_shape(source_shape)
    rgb = grey_to_rgb(source_pixels, shape)
    painted = [(v.view, v.heatmap) for v in views if v.heatmap is not None]
    if painted:
        rgb = blend_heat(rgb, heat_on_grid(painted, source_shape, shape))
    rgb = draw_banner(rgb, *banner_text(views, prediction, context))

    study_uid = str(source.StudyInstanceUID)
    version = model_version(context.bundle)
    inputs = [str(ds.SOPInstanceUID) for ds in context.sources] or [sop_uid]
    parts = "+".join(str(v.view.part) for v in sorted(views, key=lambda v: v.view.part))
    orientation = _orientation(source)
    created = context.created or datetime.now()
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=rgb,
        photometric_interpretation="RGB",
        bits_allocated=8,
        coordinate_system="PATIENT",
        series_instance_uid=result_uid("sc-series", study_uid, version, ()),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=result_uid("sc", study_uid, version, inputs, f"{sop_uid}/{parts}"),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        # highdicom annotates the spacing as ints; it writes any number as DS.
        pixel_spacing=_pixel_spacing(source, source_shape, shape),  # type: ignore[arg-type]
        laterality=_laterality(source),
        patient_orientation=orientation or ("A", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description("sc"),
        manufacturer_model_name=MODEL_NAME,
        software_versions=version,
        institution_name=context.institution or None,
        content_date=created.date(),
        content_time=created.time(),
        series_date=created.date(),
        series_time=created.time(),
    )
    if orientation is None:
        # highdicom demands an orientation; unknown is Type 2 empty, never a guess.
        sc.PatientOrientation = []
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.ConversionType = "WSD"
    sc.BurnedInAnnotation = "YES"
    sc.DerivationDescription = "Fracture detection heat map (Grad-CAM) and result banner"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = sop_uid
    sc.SourceImageSequence = [reference]
    return sc


def banner_text(
    views: Sequence[ViewPrediction], prediction: StudyPrediction, context: ReportContext
) -> tuple[str, list[str]]:
    """The banner's headline and lines for the image of `views`. Views the model abstained on
    show no probability: the image (or its parts) is said to be not analysable."""
    headline = f"{LEVEL_TEXT[prediction.finding]} (study)"
    analysed = [v for v in views if not v.abstained]
    if analysed:
        image_probability = max(v.probability for v in analysed)
        image_level = LEVEL_TEXT[level_of(image_probability, context.bundle)]
        result = [f"Study p = {prediction.probability:.2f} | this image p = "
                  f"{image_probability:.2f} ({image_level.lower()})"]  # fmt: skip
        if len(analysed) < len(views):
            result.append(f"{len(views) - len(analysed)} part(s) of this image {NOT_ANALYSABLE}")
    else:
        result = [f"Study p = {prediction.probability:.2f}", f"This image: {NOT_ANALYSABLE}"]
    return headline, [*result, f"{context.bundle.name} {context.bundle.version}", DISCLAIMER]


def _orientation(source: Dataset) -> tuple[str, str] | None:
    value = source.get("PatientOrientation")
    if value is None or isinstance(value, str) or len(value) != 2:
        return None
    row, column = (str(v) for v in value)
    if not row or not column or not set(row) <= _BIPED or not set(column) <= _BIPED:
        return None
    return row, column


def _laterality(source: Dataset) -> str | None:
    value = str(source.get("Laterality", "") or source.get("ImageLaterality", "") or "")
    return value if value in ("R", "L") else None


def _pixel_spacing(
    source: Dataset, source_shape: tuple[int, int], shape: tuple[int, int]
) -> tuple[float, float] | None:
    """The source's Pixel (or Imager Pixel) Spacing, scaled by the downscaling."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = source.get(keyword)
        if value is not None and len(value) == 2:
            try:
                row, column = float(value[0]), float(value[1])
            except (TypeError, ValueError):
                return None
            return (
                row * source_shape[0] / shape[0],
                column * source_shape[1] / shape[1],
            )
    return None
