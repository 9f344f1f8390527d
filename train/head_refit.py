"""Group-balanced refit of the last layer of a view model (deep feature reweighting).

A model trained on an archive where a confounder travels with the label - implants and casts are
far more common on fractured wrists than on intact ones - learns part of the confounder as a
shortcut, and then flags intact wrists with an implant. Kirichenko, Izmailov and Wilson (ICLR
2023, "Last layer re-training is sufficient for robustness to spurious correlations") found that
the trunk's features usually still hold the real signal, and that refitting only the last linear
layer on data where every group weighs the same removes much of the shortcut. This does that,
for a single model or for each member of an ensemble:

- the features the last layer sees are computed for every view of a head-fitting dataset (one
  the model did not train on), averaged over the view and its mirror image when the bundle
  averages flips (the layer is affine, so that is exactly what the flip-averaged logit uses);
- a group is a label and the study's values of the chosen attribute columns (`implant`,
  `cast`, ...; study attributes as in `train.evaluation.subgroups`). Each label weighs one half,
  shared equally among its groups, and within a group equally among its views;
- the layer is a weighted logistic regression on the standardised features, pulled towards the
  trained layer by an L2 penalty on the difference; the penalty is chosen by cross-validated
  group-balanced log-loss with folds by study, so a dataset that cannot support a change leaves
  the layer close to where training put it.

Calibration and thresholds must be fixed afterwards, on other data, as for any export.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.models import RxNet, ViewEnsemble, without_test_time_flip
from pipeline.models.flip import mirror
from pipeline.models.resnet import ResNet18Classifier
from train.data.augment import AugmentParams, evaluation_transform
from train.data.datasets import ViewDataset, ViewRow, read_views
from train.evaluation.subgroups import SubgroupSpec
from train.fit import dataset_hash

PENALTIES: tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
"""Candidate strengths of the pull towards the trained layer (standardised features)."""
FOLDS = 5


@dataclass(frozen=True)
class HeadRefitSpec:
    """Which prepared dataset (all of it) the last layer is refitted on, grouped by what."""

    dataset: Path
    groups: SubgroupSpec


@dataclass(frozen=True)
class Head:
    """A single-logit linear layer: logit = features @ weight + bias."""

    weight: np.ndarray
    bias: float


def last_linear(model: nn.Module) -> nn.Linear:
    """The layer that turns a single-view model's features into its logit."""
    if isinstance(model, ResNet18Classifier):
        return model.fc
    if isinstance(model, RxNet):
        layer = model.classifier[-1]
        assert isinstance(layer, nn.Linear)
        return layer
    raise ValueError(f"no known last layer in {type(model).__name__}")


def members_of(view_model: nn.Module) -> list[nn.Module]:
    """The single-view models whose last layers a refit changes (one, or an ensemble's)."""
    plain = without_test_time_flip(view_model)
    return list(plain.members) if isinstance(plain, ViewEnsemble) else [plain]


@torch.no_grad()
def penultimate_features(
    model: nn.Module,
    rows: Sequence[ViewRow],
    augment: AugmentParams,
    *,
    flip: bool,
    batch_size: int = 16,
) -> np.ndarray:
    """(views, features) the last layer of the single-view `model` sees for `rows`, in order;
    the mean over each view and its mirror image when `flip`."""
    layer = last_linear(model)
    captured: list[torch.Tensor] = []
    hook = layer.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0]))
    device = next(model.parameters()).device
    loader = DataLoader(ViewDataset(list(rows), evaluation_transform(augment)),
                        batch_size=batch_size, num_workers=0)  # fmt: skip
    model.eval()
    out: list[torch.Tensor] = []
    try:
        for images, _ in tqdm(loader, desc="features", unit="batch", leave=False):
            images = images.to(device)
            captured.clear()
            model(torch.cat([images, mirror(images)]) if flip else images)
            features = captured[0].double().cpu()
            if flip:
                plain, mirrored = features.chunk(2)
                features = (plain + mirrored) / 2
            out.append(features)
    finally:
        hook.remove()
    return torch.cat(out).numpy() if out else np.zeros((0, layer.in_features))


def group_names(labels: Sequence[int], attributes: Sequence[dict[str, str]]) -> list[str]:
    """Each view's group: its label and its study's attribute values, as one readable name."""
    return [
        f"label={label}" + "".join(f" {k}={v}" for k, v in sorted(values.items()))
        for label, values in zip(labels, attributes, strict=True)
    ]


def group_weights(labels: np.ndarray, groups: Sequence[str]) -> np.ndarray:
    """Per-view weights summing to 1: each label one half (or all when only one is present),
    shared equally among that label's groups, and within a group equally among its views."""
    counts = Counter(groups)
    groups_per_label = {
        label: len({g for g, lab in zip(groups, labels, strict=True) if lab == label})
        for label in set(labels.tolist())
    }
    share = 1.0 / len(groups_per_label)
    return np.array([
        share / groups_per_label[int(label)] / counts[group]
        for label, group in zip(labels, groups, strict=True)
    ])  # fmt: skip


def _fit_standardised(
    z: np.ndarray, y: np.ndarray, w: np.ndarray, anchor: Head, penalty: float
) -> Head:
    """Minimise sum(w * log-loss) / sum(w) + penalty * |weight - anchor.weight|^2 (L-BFGS)."""
    zt, yt = torch.from_numpy(z), torch.from_numpy(y.astype(np.float64))
    wt = torch.from_numpy(w / w.sum())
    start = torch.from_numpy(anchor.weight.copy())
    weight = start.clone().requires_grad_(True)
    bias = torch.tensor(anchor.bias, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=500, tolerance_grad=1e-9,
                                  line_search_fn="strong_wolfe")  # fmt: skip

    def objective() -> torch.Tensor:
        optimiser.zero_grad()
        loss = (wt * nn.functional.binary_cross_entropy_with_logits(
            zt @ weight + bias, yt, reduction="none")).sum()  # fmt: skip
        loss = loss + penalty * ((weight - start) ** 2).sum()
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimiser.step(objective)  # type: ignore[no-untyped-call]
    return Head(weight.detach().numpy(), float(bias.detach()))


def _weighted_log_loss(z: np.ndarray, y: np.ndarray, w: np.ndarray, head: Head) -> float:
    logits = torch.from_numpy(z @ head.weight + head.bias)
    losses = nn.functional.binary_cross_entropy_with_logits(
        logits, torch.from_numpy(y.astype(np.float64)), reduction="none").numpy()  # fmt: skip
    return float((w * losses).sum() / w.sum())


def study_folds(studies: Sequence[str], folds: int = FOLDS) -> np.ndarray:
    """A fold number per view, the same for all views of a study (stable across runs)."""
    return np.array([
        int(hashlib.sha256(s.encode("utf-8")).hexdigest(), 16) % folds for s in studies
    ])  # fmt: skip


def refit_head(
    features: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    folds: np.ndarray,
    trained: Head,
    penalties: Sequence[float] = PENALTIES,
) -> tuple[Head, dict[str, Any]]:
    """The refitted layer (in the original feature space) and a record of how it was chosen."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    z = (features - mean) / scale
    # The trained layer in standardised coordinates: w_z = w * scale, b_z = b + w . mean.
    anchor = Head(trained.weight * scale, trained.bias + float(trained.weight @ mean))
    cv_loss: dict[float, float] = {}
    for penalty in penalties:
        losses = []
        for fold in sorted(set(folds.tolist())):
            fit, held = folds != fold, folds == fold
            if len(set(labels[fit].tolist())) < 2:
                continue
            head = _fit_standardised(z[fit], labels[fit], weights[fit], anchor, penalty)
            losses.append(_weighted_log_loss(z[held], labels[held], weights[held], head))
        cv_loss[penalty] = float(np.mean(losses)) if losses else float("inf")
    best = min(penalties, key=lambda p: (cv_loss[p], -p))
    fitted = _fit_standardised(z, labels, weights, anchor, best)
    weight = fitted.weight / scale
    refitted = Head(weight, fitted.bias - float(weight @ mean))
    change = np.linalg.norm(fitted.weight - anchor.weight) / np.linalg.norm(anchor.weight)
    record = {
        "penalty": best,
        "cv_group_balanced_log_loss": {f"{p:g}": round(v, 5) for p, v in cv_loss.items()},
        "trained_group_balanced_log_loss": round(_weighted_log_loss(z, labels, weights, anchor), 5),
        "relative_weight_change": round(float(change), 4),
    }
    return refitted, record


def set_head(model: nn.Module, head: Head) -> None:
    """Write `head` into the single-view `model`'s last layer."""
    layer = last_linear(model)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(head.weight).reshape(layer.weight.shape))
        layer.bias.fill_(head.bias)


def trained_head(model: nn.Module) -> Head:
    layer = last_linear(model)
    return Head(layer.weight.detach().double().cpu().numpy().reshape(-1),
                float(layer.bias.detach().double().cpu()))  # fmt: skip


def refit_view_model(
    view_model: nn.Module,
    rows: Sequence[ViewRow],
    attributes: dict[str, dict[str, str]],
    columns: Sequence[str],
    augment: AugmentParams,
    *,
    flip: bool,
) -> dict[str, Any]:
    """Refit the last layer of `view_model` (each member of an ensemble) in place on `rows`,
    grouped by label and the study `attributes` in `columns`; returns what was done."""
    if not columns:
        raise ValueError("a group-balanced refit needs the attribute columns to group by")
    missing = sorted({r.study for r in rows} - set(attributes))
    if missing:
        raise ValueError(
            f"{len(missing)} studies of the head-fitting data have no attributes "
            f"(first: {missing[0]}); every study needs its row in the attribute CSV"
        )
    labels = np.array([r.label for r in rows])
    if len(set(labels.tolist())) < 2:
        raise ValueError("the head-fitting data needs fractured and intact studies")
    groups = group_names(labels.tolist(), [
        {c: attributes[r.study][c] for c in columns} for r in rows])  # fmt: skip
    weights = group_weights(labels, groups)
    folds = study_folds([r.study for r in rows])
    counts = Counter(groups)
    share: dict[str, float] = defaultdict(float)
    for group, weight in zip(groups, weights, strict=True):
        share[group] += float(weight)
    record: dict[str, Any] = {
        "columns": list(columns),
        "views": len(rows),
        "studies": len({r.study for r in rows}),
        "groups": {
            g: {"views": counts[g], "weight": round(float(share[g]), 4)} for g in sorted(counts)
        },
        "test_time_flip": flip,
        "members": [],
    }
    for member in members_of(view_model):
        features = penultimate_features(member, rows, augment, flip=flip)
        head, fitted = refit_head(features, labels, weights, folds, trained_head(member))
        set_head(member, head)
        record["members"].append({"arch": getattr(member, "arch", type(member).__name__),
                                  **fitted})  # fmt: skip
    return record


def refit_for_export(
    view_model: nn.Module,
    spec: HeadRefitSpec,
    augment: AugmentParams,
    *,
    flip: bool,
    calibration: Path,
) -> dict[str, Any]:
    """`refit_view_model` on all of `spec.dataset`, which must not be the calibration data."""
    if spec.dataset.resolve() == calibration.resolve():
        raise ValueError(
            f"{spec.dataset}: the head-fitting data must not be the calibration data "
            "(thresholds fixed on the data the layer was fitted to would be optimistic)"
        )
    rows = read_views(spec.dataset, ("all",))
    record = refit_view_model(view_model, rows, spec.groups.read(), spec.groups.columns,
                              augment, flip=flip)  # fmt: skip
    return {"dataset": spec.dataset.name, "dataset_hash": dataset_hash(spec.dataset), **record}


def refit_line(metrics: dict[str, Any]) -> str:
    """The model card's line on a group-balanced refit, empty when there was none."""
    refit = metrics.get("head_refit")
    if refit is None:
        return ""
    penalties = ", ".join(f"{m['arch']} {m['penalty']:g}" for m in refit["members"])
    return (
        f"\n- Last layer refitted with group balance (deep feature reweighting) on dataset"
        f"\n  `{refit['dataset']}` ({refit['studies']} studies, {refit['views']} views), groups"
        f"\n  label x {', '.join(refit['columns'])} ({len(refit['groups'])} groups, each label"
        f"\n  weighing one half); pull towards the trained layer chosen by {FOLDS}-fold CV:"
        f" {penalties}."
    )
