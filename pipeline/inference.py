"""Model bundles and study predictions: what the node runs.

A bundle is a folder: `weights.pt` (state dicts), `model.json` (everything needed to reproduce
training-time behaviour: architecture, input size, normalisation, preprocessing parameters,
aggregation, temperatures, operating points, name and version) and `MODEL_CARD.md`; with an
out-of-distribution detector (`pipeline.ood`), also `ood.npz`, and a view it finds unlike the
validation images abstains: no probability, left out of the study result.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.aggregation import aggregate
from pipeline.dicomio import Radiograph
from pipeline.gradcam import grad_cam_batch
from pipeline.models import build_aggregator, build_view_model, with_test_time_flip
from pipeline.ood import NOT_ANALYSABLE, FeatureCapture, OodDetector, feature_layers
from pipeline.preprocess.params_io import params_from_dict
from pipeline.preprocess.study import (
    PreprocessedInstance,
    PreprocessParams,
    View,
    preprocess_radiograph,
)
from pipeline.preprocess.view_reader import reader_in_bundle

BUNDLE_FORMAT = 1
LEVELS = ("negative", "possible", "likely")


class BundleError(ValueError):
    """A model bundle that cannot be loaded; the message says which file and why."""


VIEW_BATCH = 8
"""Views scored in one forward pass (a study's views; more would only add memory)."""


@dataclass(frozen=True)
class BundleInfo:
    """The contents of `model.json`."""

    name: str
    version: str
    arch: str
    """A single-view architecture, or `ensemble:A+B` (the mean logit of several models)."""
    input_height: int
    input_width: int
    mean: float
    std: float
    aggregation: str
    """'alo', 'majority', 'mean', 'max' or 'learned' (the aggregator in the bundle)."""
    view_temperature: float
    study_temperature: float
    thresholds: dict[str, float]
    """Calibrated study probability for 'possible' (high sensitivity) and 'likely' (high
    specificity), fixed on validation data."""
    preprocess: dict[str, Any]
    trunk_arch: str = ""
    test_time_flip: bool = False
    """Whether the view logit is the mean over the view and its mirror image (two passes)."""
    created: str = ""
    git_commit: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)
    format: int = BUNDLE_FORMAT
    drift_reference: dict[str, Any] = field(default_factory=dict)
    """Level rates and probability bins on validation data (`pipeline.drift`); empty in older
    bundles, whose drift the node counts but does not judge."""
    ood: dict[str, Any] = field(default_factory=dict)
    """The out-of-distribution detector (`pipeline.ood.OodDetector.save`: score, threshold,
    validation figures; arrays in `ood.npz`); empty in older bundles, which never abstain."""


@dataclass(frozen=True)
class ViewPrediction:
    """The model's output for one view."""

    view: View
    logit: float
    probability: float
    """Calibrated (temperature-scaled) probability of a visible fracture."""
    heatmap: np.ndarray | None
    """Grad-CAM in model-input coordinates, float32 (height, width) in [0, 1]."""
    ood_score: float | None = None
    """The bundle's out-of-distribution score (higher: more unlike the validation images);
    None when the bundle has no detector."""
    abstained: bool = False
    """The score is beyond the detector's threshold: the view is not analysable, its logit and
    probability are NaN and its heat map None, so nothing can report them by mistake."""


NEGATIVE_INCOMPLETE = "negative_incomplete"
"""A study's finding when the views the model read show no fracture but others abstained
(`StudyPrediction.finding`): never reported as "No fracture detected"."""


@dataclass(frozen=True)
class StudyPrediction:
    """The study-level result the node reports."""

    probability: float
    """Calibrated study probability of a fracture."""
    level: str
    """'likely', 'possible' or 'negative'."""
    views: tuple[ViewPrediction, ...]
    instances: tuple[PreprocessedInstance, ...]
    in_scope: bool
    reason: str
    """Why out of scope (no wrist view), or a one-line summary."""
    abstained: bool = False
    """Every view abstained (`pipeline.ood`): the study is not analysable (`in_scope` False,
    `reason` NOT_ANALYSABLE) although its images are wrists, so the node reports it."""

    @property
    def analysed_views(self) -> tuple[ViewPrediction, ...]:
        """The views that have a probability (those the detector did not abstain on)."""
        return tuple(v for v in self.views if not v.abstained)

    @property
    def unanalysed_views(self) -> int:
        """How many views of an analysed study the detector abstained on."""
        return sum(1 for v in self.views if v.abstained) if self.in_scope else 0

    @property
    def finding(self) -> str:
        """What the study's result may claim: its level, except that a negative result on only
        some of the views is NEGATIVE_INCOMPLETE. A fracture may show in one projection only
        (the scaphoid on the oblique), so views the model could not read never let the study
        be cleared; a fracture found on the views it did read stands."""
        if self.level == "negative" and self.unanalysed_views:
            return NEGATIVE_INCOMPLETE
        return self.level


class ModelBundle:
    """A loaded bundle: models in eval mode on the CPU (or `device`)."""

    def __init__(self, path: Path, info: BundleInfo, model: nn.Module,
                 aggregator: nn.Module | None, device: torch.device) -> None:  # fmt: skip
        self.path, self.info, self.model, self.aggregator = path, info, model, aggregator
        self.device = device
        self.preprocess_params: PreprocessParams = params_from_dict(info.preprocess)
        self.ood: OodDetector | None = None

    @classmethod
    def load(cls, path: Path | str, *, device: str = "cpu") -> ModelBundle:
        """Load a bundle folder; raises BundleError with a clear message when it is unusable."""
        folder = Path(path)
        try:
            raw = json.loads((folder / "model.json").read_text(encoding="utf-8"))
            info = BundleInfo(**raw)
        except FileNotFoundError as exc:
            raise BundleError(f"{folder}: not a model bundle (no model.json)") from exc
        except (json.JSONDecodeError, TypeError) as exc:
            raise BundleError(f"{folder / 'model.json'}: invalid ({exc})") from exc
        if info.format != BUNDLE_FORMAT:
            raise BundleError(f"{folder}: bundle format {info.format}, expected {BUNDLE_FORMAT}")
        if info.aggregation == "learned" and info.test_time_flip:
            raise BundleError(f"{folder}: test_time_flip does not apply to a learned aggregator")
        try:
            weights = torch.load(folder / "weights.pt", map_location=device, weights_only=True)
        except FileNotFoundError as exc:
            raise BundleError(f"{folder}: weights.pt is missing") from exc
        model: nn.Module = build_view_model(arch=info.arch)
        model.load_state_dict(weights["model"])
        model = with_test_time_flip(model, info.test_time_flip)
        aggregator = None
        if "aggregator" in weights:
            aggregator = build_aggregator(trunk_arch=info.trunk_arch or info.arch)
            aggregator.load_state_dict(weights["aggregator"])
            aggregator.to(device).eval()
        if info.aggregation == "learned" and aggregator is None:
            raise BundleError(f"{folder}: aggregation 'learned' but no aggregator weights")
        bundle = cls(folder, info, model.to(device).eval(), aggregator, torch.device(device))
        try:
            reader = reader_in_bundle(folder, bundle.preprocess_params.view_reader)
        except FileNotFoundError as exc:
            raise BundleError(f"{folder}: {exc}") from exc
        bundle.preprocess_params = replace(bundle.preprocess_params, view_reader=reader)
        if info.ood:
            try:
                bundle.ood = OodDetector.load(folder, info.ood)
            except (OSError, KeyError, ValueError) as exc:
                raise BundleError(f"{folder}: OOD detector unusable ({exc})") from exc
        return bundle

    def predict(self, radiographs: Sequence[Radiograph], *, heatmaps: bool = True,
                timings: dict[str, float] | None = None) -> StudyPrediction:  # fmt: skip
        """Preprocess, classify and aggregate one study; `timings`, when given, receives the
        seconds spent in 'preprocess' and 'inference' (heat maps included)."""
        started = time.perf_counter()
        instances = tuple(preprocess_radiograph(r, self.preprocess_params) for r in radiographs)
        preprocessed = time.perf_counter()
        if timings is not None:
            timings["preprocess"] = preprocessed - started
        views = [v for instance in instances for v in instance.views]
        if not views:
            reasons = "; ".join(sorted({i.refusal for i in instances})) or "no images"
            return StudyPrediction(0.0, "negative", (), instances, False,
                                   f"no wrist view to analyse: {reasons}")  # fmt: skip
        predictions = self._predict_views(views, heatmaps)
        kept = [(v, p) for v, p in zip(views, predictions, strict=True) if not p.abstained]
        if not kept:
            if timings is not None:
                timings["inference"] = time.perf_counter() - preprocessed
            return StudyPrediction(0.0, "negative", predictions, instances, False, NOT_ANALYSABLE,
                                   abstained=True)  # fmt: skip
        study_logit = self._study_logit([v for v, _ in kept], tuple(p for _, p in kept))
        if timings is not None:
            timings["inference"] = time.perf_counter() - preprocessed
        probability = _sigmoid(study_logit / self.info.study_temperature)
        level = self.level(probability)
        summary = f"{len(kept)} view(s) analysed, study probability {probability:.3f} ({level})"
        if len(kept) < len(views):
            summary += f"; {len(views) - len(kept)} view(s) {NOT_ANALYSABLE}"
        return StudyPrediction(probability, level, predictions, instances, True, summary)

    def level(self, probability: float) -> str:
        """'likely' at the high-specificity point, 'possible' at the high-sensitivity one."""
        if probability >= self.info.thresholds["likely"]:
            return "likely"
        if probability >= self.info.thresholds["possible"]:
            return "possible"
        return "negative"

    def tensor(self, view: View) -> torch.Tensor:
        """A view as the normalised (1, 1, H, W) model input."""
        x = torch.from_numpy(np.ascontiguousarray(view.pixels, dtype=np.float32))[None, None]
        return ((x - self.info.mean) / self.info.std).to(self.device)

    def _predict_views(self, views: Sequence[View], heatmap: bool) -> tuple[ViewPrediction, ...]:
        """Every view of a study, in batches of up to VIEW_BATCH views of one size: one forward
        (and one Grad-CAM backward) per batch instead of per view. The views are independent
        (the model is in eval mode), so a view scores as it would alone, to float rounding."""
        predictions: dict[int, ViewPrediction] = {}
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, view in enumerate(views):
            by_shape.setdefault(tuple(view.pixels.shape), []).append(i)
        for indices in by_shape.values():
            for start in range(0, len(indices), VIEW_BATCH):
                chunk = indices[start : start + VIEW_BATCH]
                batch = [views[i] for i in chunk]
                predictions.update(zip(chunk, self._predict_batch(batch, heatmap), strict=True))
        return tuple(predictions[i] for i in range(len(views)))

    def _predict_batch(self, views: Sequence[View], heatmap: bool) -> list[ViewPrediction]:
        x = torch.cat([self.tensor(v) for v in views])
        detector = self.ood
        # The detector's features come from the very pass that scores the views (hooks).
        capture = FeatureCapture(
            feature_layers(self.model, detector.layer)
            if detector is not None and detector.needs_features
            else []
        )
        cams: list[np.ndarray | None]
        with capture.recording():
            if heatmap:
                raw, maps = grad_cam_batch(self.model, x)
                logits, cams = [float(v) for v in raw], list(maps)
            else:
                with torch.no_grad():
                    logits = [float(v) for v in self.model(x)]
                cams = [None] * len(views)
        if detector is None:
            return [ViewPrediction(view, logit, _sigmoid(logit / self.info.view_temperature), cam)
                    for view, logit, cam in zip(views, logits, cams, strict=True)]  # fmt: skip
        features = capture.features(len(views)) if detector.needs_features else None
        scores = detector.scores(features, np.array(logits))
        result = []
        for view, logit, cam, score in zip(views, logits, cams, scores, strict=True):
            if detector.abstains(float(score)):
                result.append(ViewPrediction(view, math.nan, math.nan, None, float(score),
                                             abstained=True))  # fmt: skip
                continue
            probability = _sigmoid(logit / self.info.view_temperature)
            result.append(ViewPrediction(view, logit, probability, cam, float(score)))
        return result

    def _study_logit(self, views: list[View], predictions: tuple[ViewPrediction, ...]) -> float:
        if self.info.aggregation == "learned" and self.aggregator is not None:
            stacked = torch.cat([self.tensor(v) for v in views])[None]
            mask = torch.ones((1, len(views)), dtype=torch.bool, device=self.device)
            with torch.no_grad():
                return float(self.aggregator(stacked, mask)[0])
        from_views = [_sigmoid(p.logit) for p in predictions]
        return _logit(aggregate(from_views, self.info.aggregation))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return math.log(p / (1 - p))
