"""Fit a bundle's out-of-distribution detector (`pipeline.ood`) on archived studies.

The features come from in-distribution views: wrist images of the training world that pass the
node's own preprocessing (scope check included). The Gaussian is fitted on one set of studies and
the threshold fixed on another, disjoint one (a second archive, or the other half of the studies
of one). The threshold leaves at most the stated share of in-distribution views abstaining, and
by default it is the share's upper Wilson 95% bound that is held to it, not the share measured
on the validation views: a threshold set at exactly 2% of them abstained on 2.9% of a fresh
held-out set of the same world (bench/cross_world.py --abstention), within the interval the
point estimate ignored. The share measured is recorded with its Wilson interval either way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.dicomio import DicomImageError, Radiograph, read_radiograph
from pipeline.inference import ModelBundle
from pipeline.ood import (
    FEATURE_LAYERS,
    FeatureCapture,
    FloatArray,
    OodDetector,
    feature_layers,
    gaussian_fit,
)
from pipeline.preprocess.study import PreprocessParams, View, preprocess_radiograph
from train.evaluation.metrics import wilson_interval
from train.phantoms.archive import read_truth

DEFAULT_MAX_RATE = 0.02
RATE_BOUNDS = ("upper", "point")
"""What `max_rate` holds: the upper Wilson 95% bound of the validation share (the default),
or the share itself."""
DEFAULT_LAYER = "pooled"
"""Chosen by measurement (bench/abstention.py): Mahalanobis on the pooled features separates
every out-of-distribution set better than on the last hidden layer."""
BATCH = 8

PixelTransform = Callable[[np.ndarray, int], np.ndarray]
"""(display pixels, instance index) -> changed pixels: how a bench degrades images."""


@dataclass(frozen=True)
class ArchiveViews:
    """The views the preprocessing made from an archive, with the study each came from."""

    views: tuple[View, ...]
    studies: tuple[str, ...]
    """Study Instance UID of each view."""
    refused: int
    """Instances the preprocessing made no view of (out of scope, unreadable)."""


@dataclass(frozen=True)
class ViewScores:
    """Features (per layer) and logits of a set of views."""

    features: dict[str, FloatArray]
    logits: FloatArray

    def subset(self, keep: np.ndarray) -> ViewScores:
        return ViewScores({k: v[keep] for k, v in self.features.items()}, self.logits[keep])


def forced_wrist_params(params: PreprocessParams) -> PreprocessParams:
    """The preprocessing with the image checks of the scope decision switched off, for images
    retagged as wrists: how a bench pushes decoy body parts past the scope check."""
    return replace(
        params,
        wrist=replace(params.wrist, check_image=False),
        view_reader=replace(params.view_reader, path=""),
    )


def as_wrist(radiograph: Radiograph) -> Radiograph:
    """The radiograph retagged as a wrist study (Body Part Examined and descriptions)."""
    return replace(
        radiograph,
        body_part_examined="WRIST",
        study_description="XR WRIST",
        series_description="WRIST PA",
    )


def archive_views(
    archive: Path,
    params: PreprocessParams,
    *,
    rows: Callable[[dict[str, str]], bool] = lambda row: True,
    force_wrist: bool = False,
    transform: PixelTransform | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> ArchiveViews:
    """Every view the node's preprocessing makes from the archive's truth rows that `rows`
    keeps, the first `limit` of them when given (deliberately corrupt instances are skipped, as
    the node cannot read them)."""
    if force_wrist:
        params = forced_wrist_params(params)
    chosen = [r for r in read_truth(archive) if not r.get("corrupt") and rows(r)][:limit]
    views: list[View] = []
    studies: list[str] = []
    refused = 0
    for index, row in enumerate(
        tqdm(chosen, desc=f"preprocess {archive.name}", unit="image", disable=not progress)
    ):
        try:
            radiograph = read_radiograph(archive / row["path"])
        except (DicomImageError, OSError, ValueError):
            refused += 1
            continue
        if transform is not None:
            radiograph = replace(radiograph, pixels=transform(radiograph.pixels, index))
        if force_wrist:
            radiograph = as_wrist(radiograph)
        made = preprocess_radiograph(radiograph, params).views
        refused += not made
        views.extend(made)
        studies.extend(row["study_instance_uid"] for _ in made)
    return ArchiveViews(tuple(views), tuple(studies), refused)


def score_views(
    bundle: ModelBundle,
    views: Sequence[View],
    *,
    layers: Iterable[str] = FEATURE_LAYERS,
    progress: bool = True,
) -> ViewScores:
    """Features of each layer and logits of every view, in batches, with no gradients."""
    names = list(layers)
    collected: dict[str, list[FloatArray]] = {name: [] for name in names}
    logits: list[FloatArray] = []
    with tqdm(total=len(views), desc="features", unit="view", disable=not progress) as bar:
        for start in range(0, len(views), BATCH):
            batch = torch.cat([bundle.tensor(v) for v in views[start : start + BATCH]])
            captures = {name: FeatureCapture(feature_layers(bundle.model, name)) for name in names}
            with ExitStack() as stack, torch.no_grad():
                for capture in captures.values():
                    stack.enter_context(capture.recording())
                out = bundle.model(batch)
            for name, capture in captures.items():
                collected[name].append(capture.features(batch.shape[0]))
            logits.append(out.to("cpu", torch.float64).numpy())
            bar.update(batch.shape[0])
    if not views:
        return ViewScores({n: np.zeros((0, 0)) for n in names}, np.zeros(0))
    return ViewScores({n: np.concatenate(c) for n, c in collected.items()}, np.concatenate(logits))


def fit_detector(
    fit: ViewScores,
    validation: ViewScores,
    *,
    kind: str = "mahalanobis",
    layer: str = DEFAULT_LAYER,
    max_rate: float = DEFAULT_MAX_RATE,
    rate_bound: str = "upper",
    source: str = "",
) -> OodDetector:
    """A detector fitted on `fit`, its threshold set on `validation` so that the in-distribution
    abstention share (its upper Wilson bound, or with `rate_bound="point"` the share itself) is
    at most `max_rate`."""
    if kind == "mahalanobis":
        mean, precision, shrinkage = gaussian_fit(fit.features[layer])
        probe = OodDetector(kind, 0.0, layer, mean, precision)
    else:
        shrinkage = 0.0
        probe = OodDetector(kind, 0.0, layer)
    scores = probe.scores(validation.features.get(layer), validation.logits)
    allowed = allowed_abstentions(int(scores.size), max_rate, rate_bound)
    threshold = float(np.sort(np.asarray(scores, dtype=np.float64))[scores.size - 1 - allowed])
    abstained = int(np.sum(scores > threshold))
    n = int(scores.size)
    low, high = wilson_interval(abstained, n)
    summary: dict[str, Any] = {
        "target_rate": max_rate,
        "rate_bound": rate_bound,
        "rate": abstained / n,
        "rate_ci95": [low, high],
        "abstained": abstained,
        "views": n,
        "fit_views": int(fit.logits.size),
        "shrinkage": shrinkage,
        "source": source,
    }
    return replace(probe, threshold=threshold, validation=summary)


def allowed_abstentions(n: int, max_rate: float, rate_bound: str = "upper") -> int:
    """How many of `n` validation views may abstain: floor(max_rate * n) for the point share,
    else the most whose upper Wilson 95% bound stays at or under `max_rate`."""
    if rate_bound not in RATE_BOUNDS:
        raise ValueError(f"rate bound must be one of {', '.join(RATE_BOUNDS)}, got {rate_bound!r}")
    if n <= 0:
        raise ValueError("no validation scores to set a threshold on")
    allowed = math.floor(max_rate * n)
    if rate_bound == "point":
        return allowed
    while allowed >= 0 and wilson_interval(allowed, n)[1] > max_rate:
        allowed -= 1
    if allowed < 0:
        raise ValueError(
            f"{n} validation views cannot show an abstention share of at most {max_rate:.1%} "
            "with 95% confidence, even with none abstaining: give more validation views "
            "(or --rate-bound point)"
        )
    return allowed


def split_by_study(studies: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Two disjoint halves of the views, never splitting a study: alternate sorted UIDs."""
    order = {uid: i for i, uid in enumerate(sorted(set(studies)))}
    first = np.array([order[uid] % 2 == 0 for uid in studies], dtype=bool)
    return first, ~first


def in_distribution(row: dict[str, str]) -> bool:
    """Truth rows of the training world's wrists (decoy body parts excluded)."""
    return row.get("body_part", "wrist") == "wrist"


def _scored(
    bundle: ModelBundle, archives: Sequence[Path], layer: str
) -> tuple[ViewScores, list[str]]:
    """Features and logits of the in-distribution views of `archives`, and each view's study."""
    views: list[View] = []
    studies: list[str] = []
    for archive in archives:
        found = archive_views(archive, bundle.preprocess_params, rows=in_distribution)
        views.extend(found.views)
        studies.extend(f"{archive}/{uid}" for uid in found.studies)
    return score_views(bundle, views, layers=[layer]), studies


def fit_bundle_detector(
    bundle_path: Path,
    archives: Sequence[Path],
    validation_archives: Sequence[Path] = (),
    *,
    kind: str = "mahalanobis",
    layer: str = DEFAULT_LAYER,
    max_rate: float = DEFAULT_MAX_RATE,
    rate_bound: str = "upper",
    source: str = "",
) -> OodDetector:
    """Fit the detector on `archives`, set its threshold on `validation_archives` (or, without
    them, on every other study of `archives`), and write it into the bundle (`ood.npz` and the
    `ood` entry of model.json, every other key as it was)."""
    bundle = ModelBundle.load(bundle_path)
    bundle.ood = None  # score with the plain model, whatever an earlier fit left
    if not archives:
        raise ValueError("no archive to fit on")
    scores, studies = _scored(bundle, archives, layer)
    names = ", ".join(a.name for a in archives)
    if not validation_archives:
        first, second = split_by_study(studies)
        fit, validation = scores.subset(first), scores.subset(second)
        where = f"{names}: alternate studies (fit / threshold)"
    else:
        fit, (validation, _) = scores, _scored(bundle, validation_archives, layer)
        where = f"fit on {names}, threshold on {', '.join(a.name for a in validation_archives)}"
    detector = fit_detector(
        fit,
        validation,
        kind=kind,
        layer=layer,
        max_rate=max_rate,
        rate_bound=rate_bound,
        source=source or where,
    )
    entry = detector.save(bundle_path)
    path = bundle_path / "model.json"
    info = json.loads(path.read_text(encoding="utf-8"))
    info["ood"] = entry
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return detector
