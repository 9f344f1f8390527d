"""The study-level preprocessor: the thesis steps in order, with every view's transform kept.

For each instance: wrist filter -> colour inversion -> anatomic part splitter -> rotation
alignment -> pad/resize to the model input. Every output view knows the composed map from its
pixels to the source image's pixels (`View.to_source`) and back (`View.from_source`), which the
node uses to draw heat maps on the image the radiologist sees.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np

from pipeline.dicomio import Radiograph
from pipeline.models.view_net import ViewReading
from pipeline.preprocess.analysis import AnalysisParams, reduce
from pipeline.preprocess.evidence import (
    Cue,
    collimation_cue,
    inversion_cues,
    orientation_cue,
    parts_cue,
    reader_cue,
    scope_cues,
)
from pipeline.preprocess.geometry import OutputGeometry, fit_part, render
from pipeline.preprocess.inversion import InversionDecision, InversionParams, correct_inversion
from pipeline.preprocess.part_splitter import Box, SplitterParams, split_parts
from pipeline.preprocess.rotation import RotationParams, align
from pipeline.preprocess.transforms import Affine
from pipeline.preprocess.view_reader import (
    ViewReaderParams,
    load_view_reader,
    reconcile_inversion,
    reconcile_rotation,
)
from pipeline.preprocess.wrist_filter import (
    WristDecision,
    WristFilterParams,
    WristVocabulary,
    decide_wrist,
)


def _default_wrist_params() -> WristFilterParams:
    return WristFilterParams(vocabulary=WristVocabulary.load())


@dataclass(frozen=True)
class PreprocessParams:
    """Every parameter of the preprocessing; model bundles carry them so node and training agree."""

    wrist: WristFilterParams = field(default_factory=_default_wrist_params)
    inversion: InversionParams = field(default_factory=InversionParams)
    analysis: AnalysisParams = field(default_factory=AnalysisParams)
    splitter: SplitterParams = field(default_factory=SplitterParams)
    rotation: RotationParams = field(default_factory=RotationParams)
    output: OutputGeometry = field(default_factory=OutputGeometry)
    view_reader: ViewReaderParams = field(default_factory=ViewReaderParams)


@dataclass(frozen=True)
class View:
    """One model-input image cut from a source instance, and how it maps back."""

    sop_instance_uid: str
    part: int
    n_parts: int
    pixels: np.ndarray
    """float32 (height, width) in [0, 1]: bone bright, arm vertical, fingers up."""
    transform: Affine
    """View pixel -> source pixel."""
    bbox: Box
    """The part's box in source pixels (x0, y0, x1, y1)."""
    rotation_deg: float
    """Counter-clockwise turn on screen applied to the source, fingers flip included."""
    fingers_flipped: bool
    inverted: bool

    def to_source(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) view pixels (x, y) -> source pixels."""
        return self.transform.apply(points)

    def from_source(self, points: np.ndarray) -> np.ndarray:
        """(N, 2) source pixels (x, y) -> view pixels."""
        return self.transform.inverse().apply(points)


@dataclass(frozen=True)
class PreprocessedInstance:
    """What the preprocessing decided for one instance, and the views it produced."""

    sop_instance_uid: str
    source_shape: tuple[int, int]
    wrist: WristDecision
    inversion: InversionDecision | None
    views: tuple[View, ...]
    evidence: tuple[str, ...] = ()
    """The learned view reader's opinions and how each was reconciled with the heuristics."""
    cues: tuple[Cue, ...] = ()
    """Which cues decided each step, with their values (`pipeline.preprocess.evidence`)."""

    @property
    def refusal(self) -> str:
        """Why the instance gave no view, naming the deciding cue; '' when it gave views. A
        wrist in which no part was found says so, not why it was taken for a wrist."""
        if not self.wrist.is_wrist:
            return self.wrist.reason
        if self.views:
            return ""
        parts = next((c.cue for c in self.cues if c.step == "parts"), "")
        return f"no anatomic part found in the image ({parts})" if parts else "no view"


def preprocess_radiograph(
    radiograph: Radiograph,
    params: PreprocessParams,
    *,
    timings: dict[str, float] | None = None,
) -> PreprocessedInstance:
    """Run every step on one radiograph. `timings`, when given, accumulates seconds per step."""
    clock = _Stopwatch(timings)
    reading = None
    evidence: list[str] = []
    if params.view_reader.path:
        with clock("view_reader"):
            reader = load_view_reader(params.view_reader.path)
            reading = reader.read(radiograph.pixels)
        seen = (
            f"view reader {reader.name}: wrist p={reading.wrist_probability:.2f}, inverted "
            f"p={reading.inverted_probability:.2f}, fingers at {reading.finger_angle_deg:.0f} deg"
        )
        if reading.body_part:
            seen += f", body part {reading.body_part} p={reading.body_part_probability:.2f}"
        evidence.append(seen)
    with clock("wrist_filter"):
        wrist = decide_wrist(
            radiograph,
            body_part=radiograph.body_part_examined,
            study_description=radiograph.study_description,
            series_description=radiograph.series_description,
            params=params.wrist,
            reader_wrist=None if reading is None else reading.wrist_probability,
            reader_thresholds=(params.view_reader.refuse_below, params.view_reader.accept_above),
            reader_body_part=_body_part(reading),
        )
    shape = (int(radiograph.pixels.shape[0]), int(radiograph.pixels.shape[1]))
    uid = radiograph.sop_instance_uid
    scope = _scope_cues(wrist, params, reader=reading is not None)
    if not wrist.is_wrist:
        return PreprocessedInstance(uid, shape, wrist, None, (), tuple(evidence), scope)
    with clock("inversion"):
        pixels, inversion = correct_inversion(radiograph.pixels, params.inversion)
    inverted = inversion_cues(inversion, radiograph.photometric_interpretation, params.inversion)
    cues = [*scope, *inverted, collimation_cue(inversion.collimation)]
    if reading is not None:
        agreed = reconcile_inversion(inversion.inverted, reading, params.view_reader)
        evidence.append(f"{agreed.rule}: {agreed.evidence}")
        cues.append(reader_cue("inversion", agreed.rule, agreed.evidence))
        if agreed.value is None:
            refused = replace(wrist, is_wrist=False, rule="image:inversion-disagree",
                              reason=f"not analysable: {agreed.evidence}")  # fmt: skip
            cues[: len(scope)] = _scope_cues(refused, params, reader=True)
            return PreprocessedInstance(uid, shape, refused, inversion, (), tuple(evidence),
                                        tuple(cues))  # fmt: skip
    with clock("part_splitter"):
        reduced = reduce(pixels, params.analysis)
        split = split_parts(reduced, inversion.collimation.inner, shape, params.splitter)
    cues.append(parts_cue(split, params.splitter))
    level = inversion.background_level
    background = 1.0 - level if inversion.inverted else level  # after the correction
    views = []
    for part in split.parts:
        with clock("rotation"):
            alignment = align(part.mask, params.rotation)
        rotation_deg = alignment.rotation_deg
        if reading is not None and len(split.parts) == 1:
            turned = reconcile_rotation(rotation_deg, reading, params.view_reader)
            rotation_deg = float(turned.value)  # type: ignore[arg-type]
            evidence.append(f"{turned.rule}: {turned.evidence}")
            cues.append(reader_cue("orientation", turned.rule, turned.evidence, part.index))
        cues.append(orientation_cue(alignment, rotation_deg, part.index))
        with clock("geometry"):
            transform = fit_part(part.mask, reduced, rotation_deg, params.output)
            several = len(split.parts) > 1
            view_pixels = render(
                pixels,
                transform,
                params.output,
                background=background,
                valid=inversion.collimation.inner,
                keep=part.mask if several else None,
                keep_to_source=reduced.to_source if several else None,
            )
        views.append(
            View(
                sop_instance_uid=radiograph.sop_instance_uid,
                part=part.index,
                n_parts=len(split.parts),
                pixels=view_pixels,
                transform=transform,
                bbox=part.box,
                rotation_deg=rotation_deg,
                fingers_flipped=alignment.fingers_flipped,
                inverted=inversion.inverted,
            )
        )
    return PreprocessedInstance(uid, shape, wrist, inversion, tuple(views), tuple(evidence),
                                tuple(cues))  # fmt: skip


def _body_part(reading: ViewReading | None) -> tuple[str, float] | None:
    """The reader's body part for the wrist filter; None without a reader or its head."""
    if reading is None or not reading.body_part:
        return None
    return reading.body_part, reading.body_part_probability


def _scope_cues(wrist: WristDecision, params: PreprocessParams, *, reader: bool) -> tuple[Cue, ...]:
    """The wrist filter's cues, with the image thresholds it used (the reader's, when read)."""
    reading = params.view_reader
    veto = reading.refuse_below if reader else params.wrist.veto_score
    accept = reading.accept_above if reader else params.wrist.accept_score
    return scope_cues(wrist, min_match=params.wrist.vocabulary.min_score, veto=veto,
                      accept=accept, reader=reader)  # fmt: skip


def preprocess_study(
    radiographs: Iterable[Radiograph], params: PreprocessParams
) -> tuple[PreprocessedInstance, ...]:
    """Preprocess every instance of a study (the thesis's study-level step applier)."""
    return tuple(preprocess_radiograph(r, params) for r in radiographs)


class _Stopwatch:
    """Accumulates wall time per step into a dict, or does nothing."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        if self.timings is None:
            yield
            return
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - start
