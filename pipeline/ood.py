"""Out-of-distribution (OOD) scores: how unlike the model's validation images a view is.

A classifier answers every input with a probability, even an image of a kind it has never seen
(another body part that slipped past the scope check, a ruined exposure, a new detector). The
node must abstain there instead of guessing, so the bundle carries a detector fitted on views of
the training world (`dicomnode-train ood-fit`, on a new or an existing bundle):

- Features: the input of each view model's final linear layer ("penultimate"), or of its first
  ("pooled": the globally pooled convolutional features, the same layer for ResNets), captured
  with forward pre-hooks during the pass the node runs anyway (no second forward, no copy of the
  model code). An ensemble concatenates its members' features; with test-time flip the view and
  its mirror image both pass, and their features are averaged, as their logits are.
- `mahalanobis`: squared Mahalanobis distance to the mean of in-distribution features, with one
  covariance over all views (no class split: the fracture label is per study, not per view),
  shrunk by Ledoit-Wolf because a few hundred views do not pin down a 200-plus dimensional
  covariance. The features are scaled to unit variance first, so the shrinkage target (a
  multiple of the identity) does not favour the dimensions with the largest spread.
- `energy` and `confidence`: the baselines that need no features. For a one-logit model the
  energy is -log(1 + e^z) (the two-class energy with logits 0 and z), and the confidence score is
  -|z| (the max-softmax baseline of a binary classifier).

`bench/abstention.py` compares them; Mahalanobis on the pooled features separates decoys,
degraded images and another renderer's world best, and the logit baselines do worse than chance
(the model is most confident where it knows least). Every score is "higher is more unusual";
a view whose score exceeds the detector's threshold, fixed on validation data at a stated
in-distribution abstention rate, gets no probability.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pipeline.models.ensemble import ViewEnsemble
from pipeline.models.flip import without_test_time_flip

OOD_FILE = "ood.npz"
SCORE_KINDS = ("mahalanobis", "energy", "confidence")
FEATURE_LAYERS = ("penultimate", "pooled")
NOT_ANALYSABLE = "not analysable: the image is unlike those the model was validated on"
"""The reason every result gives for a view (or a study) the detector abstains on."""

FloatArray = npt.NDArray[np.float64]


def feature_layers(model: nn.Module, layer: str = "penultimate") -> list[nn.Linear]:
    """The linear layer of each view model whose input is the feature vector of `layer`."""
    if layer not in FEATURE_LAYERS:
        raise ValueError(f"unknown feature layer {layer!r}; valid: {', '.join(FEATURE_LAYERS)}")
    plain = without_test_time_flip(model)
    members = list(plain.members) if isinstance(plain, ViewEnsemble) else [plain]
    found = []
    for member in members:
        linears = [m for m in member.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise TypeError(f"{type(member).__name__} has no linear layer to take features from")
        found.append(linears[-1] if layer == "penultimate" else linears[0])
    return found


class FeatureCapture:
    """Collects the inputs of the feature layers over one or more forward passes of a batch.

    A layer may run several times on copies of the same batch (test-time flip runs the view and
    its mirror image as one batch of 2N); `features(n)` averages the copies.
    """

    def __init__(self, layers: list[nn.Linear]) -> None:
        self.layers = layers
        self.captured: list[list[torch.Tensor]] = [[] for _ in layers]

    def _hook(self, index: int) -> Any:
        def keep_input(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            self.captured[index].append(inputs[0].detach().to("cpu", torch.float64))

        return keep_input

    @contextmanager
    def recording(self) -> Iterator[FeatureCapture]:
        """Hooks live only inside the `with` block."""
        handles = [
            layer.register_forward_pre_hook(self._hook(i)) for i, layer in enumerate(self.layers)
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def features(self, n: int) -> FloatArray:
        """(n, D) features of the n images of the batch: copies averaged, members concatenated."""
        parts = []
        for index, chunks in enumerate(self.captured):
            if not chunks:
                raise RuntimeError(f"feature layer {index} did not run")
            stacked = torch.cat(chunks)
            if stacked.shape[0] % n:
                raise RuntimeError(f"feature layer {index} saw {stacked.shape[0]} rows for {n}")
            parts.append(stacked.reshape(-1, n, stacked.shape[-1]).mean(dim=0))
        return torch.cat(parts, dim=1).numpy()


def view_features(
    model: nn.Module, images: torch.Tensor, layer: str = "penultimate"
) -> tuple[FloatArray, FloatArray]:
    """(N, C, H, W) normalised images -> ((N, D) features, (N,) logits), one no-grad pass."""
    capture = FeatureCapture(feature_layers(model, layer))
    with capture.recording(), torch.no_grad():
        logits = model(images)
    return capture.features(images.shape[0]), logits.detach().to("cpu", torch.float64).numpy()


def ledoit_wolf(features: FloatArray) -> tuple[FloatArray, float]:
    """Ledoit-Wolf covariance of (n, d) samples: (1 - s) S + s mu I, with the sample covariance
    S (divided by n), mu its mean eigenvalue and s the shrinkage that minimises the expected
    squared error (Ledoit and Wolf 2004, their estimate of the optimal intensity)."""
    x = np.asarray(features, dtype=np.float64)
    n, d = x.shape
    if n < 2:
        raise ValueError(f"a covariance needs at least 2 samples, got {n}")
    x = x - x.mean(axis=0)
    sample = x.T @ x / n
    mu = float(np.trace(sample)) / d
    target_gap = float(np.sum((sample - mu * np.eye(d)) ** 2)) / d
    # The mean squared distance of each sample's outer product from S: the noise in S.
    squares = x**2
    spread = (float(np.sum(squares.T @ squares)) / n - float(np.sum(sample**2))) / (d * n)
    shrinkage = 0.0 if target_gap == 0 else min(spread, target_gap) / target_gap
    shrinkage = max(shrinkage, 0.0)
    return (1.0 - shrinkage) * sample + shrinkage * mu * np.eye(d), shrinkage


def mahalanobis(features: FloatArray, mean: FloatArray, precision: FloatArray) -> FloatArray:
    """Squared Mahalanobis distance of each row of (n, d) `features`."""
    centred = np.asarray(features, dtype=np.float64) - mean
    distances: FloatArray = np.einsum("ij,jk,ik->i", centred, precision, centred)
    return distances


def logit_scores(kind: str, logits: FloatArray) -> FloatArray:
    """The feature-free baselines: 'energy' -log(1 + e^z) or 'confidence' -|z|."""
    z = np.asarray(logits, dtype=np.float64)
    if kind == "energy":
        return -np.logaddexp(0.0, z)
    if kind == "confidence":
        return -np.abs(z)
    raise ValueError(f"{kind!r} is not a logit score; valid: energy, confidence")


def gaussian_fit(features: FloatArray) -> tuple[FloatArray, FloatArray, float]:
    """Mean, precision and shrinkage of in-distribution features, fitted at unit variance and
    mapped back, so `mahalanobis` takes raw features."""
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    covariance, shrinkage = ledoit_wolf((x - mean) / scale)
    precision = np.linalg.inv(covariance) / np.outer(scale, scale)
    return mean, (precision + precision.T) / 2, shrinkage


def threshold_at(scores: FloatArray, max_rate: float) -> float:
    """The smallest threshold from `scores` that leaves at most `max_rate` of them above it."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    if ordered.size == 0:
        raise ValueError("no validation scores to set a threshold on")
    if not 0.0 <= max_rate < 1.0:
        raise ValueError(f"max_rate must be in [0, 1), got {max_rate}")
    allowed = math.floor(max_rate * ordered.size)
    return float(ordered[ordered.size - 1 - allowed])


@dataclass(frozen=True)
class OodDetector:
    """A fitted OOD score and its threshold, as the bundle carries it (`ood.npz` + the `ood`
    entry of model.json)."""

    kind: str
    """'mahalanobis', 'energy' or 'confidence'."""
    threshold: float
    """A view whose score is above it abstains."""
    layer: str = "penultimate"
    mean: FloatArray = field(default_factory=lambda: np.zeros(0))
    precision: FloatArray = field(default_factory=lambda: np.zeros((0, 0)))
    validation: dict[str, Any] = field(default_factory=dict)
    """How the threshold was fixed: target rate, measured in-distribution abstention rate with
    its Wilson interval, views, data (for the model card and `dicomnode-train ood-fit`)."""

    def __post_init__(self) -> None:
        if self.kind not in SCORE_KINDS:
            raise ValueError(f"unknown OOD score {self.kind!r}; valid: {', '.join(SCORE_KINDS)}")
        if self.kind == "mahalanobis" and self.precision.shape != (self.mean.size,) * 2:
            raise ValueError("a Mahalanobis detector needs a mean and a square precision")

    @property
    def needs_features(self) -> bool:
        return self.kind == "mahalanobis"

    def scores(self, features: FloatArray | None, logits: FloatArray) -> FloatArray:
        """Scores of a batch: (n, D) features (Mahalanobis) or (n,) logits (the baselines)."""
        if self.kind == "mahalanobis":
            if features is None:
                raise ValueError("the Mahalanobis score needs the view features")
            return mahalanobis(features, self.mean, self.precision)
        return logit_scores(self.kind, logits)

    def abstains(self, score: float) -> bool:
        return bool(score > self.threshold)

    def save(self, folder: Path) -> dict[str, Any]:
        """Write `ood.npz` into the bundle `folder`; returns the model.json `ood` entry."""
        np.savez_compressed(folder / OOD_FILE, mean=self.mean, precision=self.precision)
        return {
            "kind": self.kind,
            "layer": self.layer,
            "threshold": self.threshold,
            "file": OOD_FILE,
            "validation": self.validation,
        }

    @classmethod
    def load(cls, folder: Path, entry: dict[str, Any]) -> OodDetector:
        """The detector a bundle's model.json `ood` entry describes."""
        with np.load(folder / str(entry.get("file", OOD_FILE))) as arrays:
            mean = arrays["mean"].astype(np.float64)
            precision = arrays["precision"].astype(np.float64)
        return cls(
            kind=str(entry["kind"]),
            threshold=float(entry["threshold"]),
            layer=str(entry.get("layer", "penultimate")),
            mean=mean,
            precision=precision,
            validation=dict(entry.get("validation", {})),
        )
