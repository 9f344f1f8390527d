"""The Grayscale Softcopy Presentation State (GSPS) of one analysed image: the suspected regions
as boxes a radiologist can switch off, drawn by the viewer over the untouched original.

Unlike the Secondary Capture, nothing is burned in and no pixels are copied: the GSPS references
the source image and carries vector graphics and text in graphic layers.

- Layer POSSIBLE (drawn first) and LIKELY: per view at or above "possible", the suspected region
  (`pipeline.localisation.suspected_region`) as a closed POLYLINE and a text such as
  "fracture likely, p = 0.93" beside it. A view whose heat map gives no region still gets its
  text, in the top-left corner. highdicom has no parameter for line styles, so each box carries
  the standard Line Style Sequence (PS3.3 C.10.5, Type 3) itself: "likely" solid and thicker,
  "possible" dashed and thinner. A viewer that ignores line styles still tells them apart by
  layer name, recommended grey (white, light grey) and colour, and text.
- Layer RESULT (drawn last): the not-for-diagnostic disclaimer, and for an image with no view at
  or above "possible" the study's result ("study: no fracture detected, p = 0.05"), so an
  image without marks says it was analysed.

The image keeps its look: highdicom copies the source's Modality LUT (rescale) and VOI (window
or VOI LUT) into the presentation state. The presentation state's Presentation LUT Shape
decides polarity, the image's Photometric Interpretation no longer does (PS3.4 Annex N), so a
MONOCHROME1 source gets INVERSE (highdicom's default is IDENTITY, which would show it
inverted); a source stating its own Presentation LUT Shape (DX) keeps that.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian

from dicomnode.identity import DISCLAIMER, MANUFACTURER, MODEL_NAME
from dicomnode.reports.sr import (
    LEVEL_TEXT,
    PROBABILITY_DIGITS,
    ReportContext,
    level_of,
    model_version,
    series_description,
    view_region,
)
from dicomnode.reports.uids import result_uid
from pipeline.inference import StudyPrediction, ViewPrediction
from pipeline.ood import NOT_ANALYSABLE

GSPS_SERIES_NUMBER = 9903
CONTENT_LABEL = "FRACTURE_MARKS"
CONTENT_DESCRIPTION = f"Suspected fracture regions - {DISCLAIMER}"
RESULT_LAYER = "RESULT"
LAYER_NAMES = {"possible": "POSSIBLE", "likely": "LIKELY"}
_LAYER_ORDER = {"POSSIBLE": 1, "LIKELY": 2, RESULT_LAYER: 3}
_LAYER_DESCRIPTIONS = {
    "POSSIBLE": "Fracture possible: dashed box and probability",
    "LIKELY": "Fracture likely: solid box and probability",
    RESULT_LAYER: "Study result and disclaimer",
}
_LAYER_RGB = {"POSSIBLE": (255, 200, 0), "LIKELY": (255, 40, 40), RESULT_LAYER: (255, 255, 255)}
_LAYER_GREY = {"POSSIBLE": 0xC000, "LIKELY": 0xFFFF, RESULT_LAYER: 0xFFFF}
"""Recommended grey (P-value) for monochrome displays: likely brightest, possible dimmer."""
_LINE_STYLE = {"likely": ("SOLID", 2.0), "possible": ("DASHED", 1.0)}
"""Line Dashing Style and Line Thickness (display pixels) of each level's box."""
_DASH_PATTERN = 0xFF00FF00
"""Line Pattern of a dashed box: 8 display pixels on, 8 off (PS3.3 C.10.5.1.2)."""
_TEXT_LINE = 0.045
"""Height of a text line in DISPLAY units (fractions of the displayed area)."""


def build_gsps(
    views: Sequence[ViewPrediction],
    prediction: StudyPrediction,
    source: Dataset,
    context: ReportContext,
    *,
    instance_number: int,
) -> Dataset:
    """The presentation state of `source` marking `views` (the views cut from it)."""
    if not views:
        raise ValueError("a presentation state needs at least one view of its image")
    sop_uid = str(source.SOPInstanceUID)
    for v in views:
        if v.view.sop_instance_uid != sop_uid:
            raise ValueError(
                f"view of SOP Instance {v.view.sop_instance_uid} cannot be marked on "
                f"SOP Instance {sop_uid}"
            )
    header = _header(source)
    annotations = _annotations(views, prediction, header, context)
    used = sorted({a.GraphicLayer for a in annotations}, key=_LAYER_ORDER.__getitem__)
    study_uid = str(source.StudyInstanceUID)
    version = model_version(context.bundle)
    inputs = [str(ds.SOPInstanceUID) for ds in context.sources] or [sop_uid]
    parts = "+".join(str(v.view.part) for v in sorted(views, key=lambda v: v.view.part))
    created = context.created or datetime.now()
    common: dict[str, Any] = dict(
        referenced_images=[header],
        series_instance_uid=result_uid("gsps-series", study_uid, version, ()),
        series_number=GSPS_SERIES_NUMBER,
        sop_instance_uid=result_uid("gsps", study_uid, version, inputs, f"{sop_uid}/{parts}"),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=MODEL_NAME,
        software_versions=version,
        device_serial_number=None,  # Type 3: omitted when None
        content_label=CONTENT_LABEL,
        content_description=CONTENT_DESCRIPTION,
        content_creator_name=f"{MODEL_NAME}^",  # a family name alone, not a person's
        graphic_annotations=annotations,
        graphic_layers=[_layer(name) for name in used],
        institution_name=context.institution or None,
        transfer_syntax_uid=ExplicitVRLittleEndian,
        series_description=series_description("gsps"),
        series_date=created.date(),
        series_time=created.time(),
    )
    gsps: Dataset
    if int(source.get("SamplesPerPixel", 1)) > 1:
        # A colour image (an RGB Secondary Capture) takes a Color Softcopy Presentation State:
        # the same layers and marks, with the image's ICC profile (sRGB when it states none).
        gsps = hd.pr.ColorSoftcopyPresentationState(icc_profile=_icc_profile(source), **common)
    else:
        gsps = hd.pr.GrayscaleSoftcopyPresentationState(
            presentation_lut_transformation=hd.PresentationLUTTransformation(
                presentation_lut_shape=_presentation_lut_shape(source)
            ),
            **common,
        )
    # highdicom stamps the creation with the clock; the node's objects carry `created`.
    gsps.PresentationCreationDate = created.strftime("%Y%m%d")
    gsps.PresentationCreationTime = created.strftime("%H%M%S.%f")
    # General Series Laterality (Type 2C): the wrist's side, or empty when the source says none.
    gsps.Laterality = _laterality(source)
    return gsps


def _icc_profile(source: Dataset) -> bytes:
    """The colour image's own ICC profile, else sRGB (what untagged RGB is taken to be)."""
    if "ICCProfile" in source:
        return bytes(source.ICCProfile)
    from PIL import ImageCms

    profile = bytearray(ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes())
    # littleCMS makes a display ("mntr") profile; DICOM takes input or colour-space profiles.
    # The same sRGB transform as a colour-space ("spac") profile, its MD5 profile ID left
    # unset (zero: "not computed", ICC.1 7.2.18) as it no longer matches the header.
    profile[12:16] = b"spac"
    profile[84:100] = bytes(16)
    return bytes(profile)


def probability_text(probability: float) -> str:
    """A probability as the marks show it: two decimals of the value the SR stores."""
    return f"p = {round(probability, PROBABILITY_DIGITS):.2f}"


def _annotations(
    views: Sequence[ViewPrediction],
    prediction: StudyPrediction,
    header: Dataset,
    context: ReportContext,
) -> list[hd.pr.GraphicAnnotation]:
    rows, columns = int(header.Rows), int(header.Columns)
    graphics: dict[str, list[hd.pr.GraphicObject]] = {}
    texts: dict[str, list[hd.pr.TextObject]] = {}
    unplaced = 0  # texts of views without a region, stacked in the top-left corner
    abstained = [view for view in views if view.abstained]  # no result to mark: said in text
    for view in sorted(views, key=lambda v: v.view.part):
        if view.abstained:
            continue
        level = level_of(view.probability, context.bundle)
        if level == "negative":
            continue
        layer = LAYER_NAMES[level]
        text = f"{LEVEL_TEXT[level].lower()}, {probability_text(view.probability)}"
        region = view_region(view, context.bundle)
        if region is None:
            texts.setdefault(layer, []).append(_display_text(text, unplaced))
            unplaced += 1
            continue
        points = _inside(region.dicom_points(), rows, columns)
        graphics.setdefault(layer, []).append(_box(points, level))
        box = _text_box(points, text, rows, columns)
        texts.setdefault(layer, []).append(hd.pr.TextObject(text, "PIXEL", bounding_box=box))
    result = []
    if not graphics and not texts:
        study = f"study: {LEVEL_TEXT[prediction.finding].lower()}, "
        result.append(_display_text(study + probability_text(prediction.probability), 0))
    for line, view in enumerate(abstained, start=max(unplaced, len(result))):
        several = view.view.n_parts > 1
        part = f"part {view.view.part + 1} of {view.view.n_parts}: " if several else ""
        result.append(_display_text(f"{part}{NOT_ANALYSABLE}", line))
    result.append(_display_text(DISCLAIMER, 0, from_bottom=True))
    texts[RESULT_LAYER] = result
    return [
        hd.pr.GraphicAnnotation(
            referenced_images=[header],
            graphic_layer=_layer(name),
            graphic_objects=graphics.get(name) or None,
            text_objects=texts.get(name) or None,
        )
        for name in sorted(texts, key=_LAYER_ORDER.__getitem__)
    ]


def _layer(name: str) -> hd.pr.GraphicLayer:
    layer = hd.pr.GraphicLayer(
        layer_name=name,
        order=_LAYER_ORDER[name],
        description=_LAYER_DESCRIPTIONS[name],
        display_color=hd.color.CIELabColor.from_rgb(*_LAYER_RGB[name]),
    )
    layer.GraphicLayerRecommendedDisplayGrayscaleValue = _LAYER_GREY[name]
    return layer


def _box(points: npt.NDArray[np.float32], level: str) -> hd.pr.GraphicObject:
    """The closed POLYLINE of a region, with its level's line style."""
    box = hd.pr.GraphicObject("POLYLINE", points, "PIXEL")
    dashing, thickness = _LINE_STYLE[level]
    colour = hd.color.CIELabColor.from_rgb(*_LAYER_RGB[LAYER_NAMES[level]]).value
    style = Dataset()
    style.PatternOnColorCIELabValue = list(colour)
    style.PatternOnOpacity = 1.0
    style.LineThickness = thickness
    style.LineDashingStyle = dashing
    if dashing == "DASHED":
        style.LinePattern = _DASH_PATTERN
        style.PatternOffColorCIELabValue = list(colour)
        style.PatternOffOpacity = 0.0
    style.ShadowStyle = "OFF"
    style.ShadowOffsetX = 0.0
    style.ShadowOffsetY = 0.0
    style.ShadowColorCIELabValue = list(hd.color.CIELabColor.from_rgb(0, 0, 0).value)
    style.ShadowOpacity = 0.0
    box.LineStyleSequence = [style]
    return box


def _inside(points: npt.NDArray[np.float32], rows: int, columns: int) -> npt.NDArray[np.float32]:
    """Points kept within the image (a box cut at the image edge): PIXEL units are never
    negative, and a viewer may refuse graphics outside the image."""
    limits = np.array([columns, rows], dtype=np.float32)
    return np.clip(points, 0.0, limits).astype(np.float32)


def _text_box(
    points: npt.NDArray[np.float32], text: str, rows: int, columns: int
) -> tuple[float, float, float, float]:
    """Left, top, right, bottom (PIXEL units) of a text beside the box: right of it, else left
    of it (level with its top), else below or above it; inside the image."""
    height = max(rows * _TEXT_LINE * 0.6, 8.0)
    width = min(height * 0.6 * len(text), float(columns))
    gap = height / 2
    x0, y0 = float(points[:, 0].min()), float(points[:, 1].min())
    x1, y1 = float(points[:, 0].max()), float(points[:, 1].max())
    candidates = [
        (x1 + gap, y0),  # right
        (x0 - gap - width, y0),  # left
        (x0, y1 + gap),  # below
        (x0, y0 - gap - height),  # above
    ]
    fits = [(x, y) for x, y in candidates if 0 <= x <= columns - width and 0 <= y <= rows - height]
    left, top = fits[0] if fits else candidates[0]
    left = min(max(left, 0.0), columns - width)
    top = min(max(top, 0.0), rows - height)
    return left, top, left + width, top + height


def _display_text(text: str, line: int, *, from_bottom: bool = False) -> hd.pr.TextObject:
    """A text on line `line` of the displayed area, counted from the top (or the bottom)."""
    top = 0.01 + line * _TEXT_LINE
    if from_bottom:
        top = 0.99 - (line + 1) * _TEXT_LINE
    box = (0.01, top, 0.99, top + _TEXT_LINE)
    return hd.pr.TextObject(text, "DISPLAY", bounding_box=box, text_justification="LEFT")


def _laterality(source: Dataset) -> str | None:
    value = str(source.get("Laterality", "") or source.get("ImageLaterality", "") or "")
    return value if value in ("R", "L") else None


def _presentation_lut_shape(source: Dataset) -> str:
    stated = str(source.get("PresentationLUTShape", "") or "")
    if stated in ("IDENTITY", "INVERSE"):
        return stated
    return "INVERSE" if source.get("PhotometricInterpretation") == "MONOCHROME1" else "IDENTITY"


_TYPE_2_SOURCE = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyID", "ReferringPhysicianName",
)  # fmt: skip
_PIXEL_DATA = 0x7FE00010


def _header(source: Dataset) -> Dataset:
    """The source's header without its pixels; Type 2 patient and study attributes a PACS left
    out are present and empty, as highdicom copies them by name."""
    header = Dataset()
    for element in source:
        if element.tag != _PIXEL_DATA:
            header.add(element)
    for keyword in _TYPE_2_SOURCE:
        if keyword not in header:
            setattr(header, keyword, None)
    return header
