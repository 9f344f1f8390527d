"""The view reader's figures on a sample set: wrist-vs-decoy, body part, inversion and finger
direction.

Decisions are taken at probability 0.5 (fixed before any test set is seen). The direction is
scored on every wrist with exactly one part, whatever the reader said about it being a wrist.
The body part is the head's most probable class. A part the reader has no class for (a world it
was not trained on draws it) cannot be named right: such rows are scored apart, by whether the
head at least did not call them a wrist, and never count in the body-part accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.models.view_net import ViewNet, load_view_net
from train.view_reader.data import SampleSet, load_or_draw

THRESHOLD = 0.5
CONFIDENT_LENGTH = 0.7
"""The raw direction length from which the node trusts the reader's direction."""
EVAL_BATCH = 256


def load_model(run: Path) -> ViewNet:
    """The ViewNet saved in a view-reader folder (weights.pt + model.json), in eval mode."""
    return load_view_net(run)[0]


def as_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 thumbnails (n, h, w) -> the network's input (n, 1, h, w) in [0, 1], channels-last
    (several times faster on CPU than the default layout for this network)."""
    batch = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    return batch.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict(model: ViewNet, images: np.ndarray) -> dict[str, np.ndarray]:
    """Raw outputs for uint8 thumbnails: wrist and inverted logits, direction vectors, and the
    body-part logits when the model has that head."""
    model.eval().to(memory_format=torch.channels_last)
    chunks: dict[str, list[np.ndarray]] = {"wrist": [], "inverted": [], "direction": []}
    if model.body_parts:
        chunks["body_part"] = []
    for start in range(0, len(images), EVAL_BATCH):
        out = model(as_batch(images[start : start + EVAL_BATCH]))
        for key, values in chunks.items():
            values.append(out[key].numpy())
    return {key: np.concatenate(values) for key, values in chunks.items()}


def angle_errors(predicted: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Angles (degrees, 0-180) between predicted and true direction vectors, row by row."""
    norm = np.linalg.norm(predicted, axis=1) * np.linalg.norm(truth, axis=1)
    cos = np.sum(predicted * truth, axis=1) / np.maximum(norm, 1e-9)
    errors: np.ndarray = np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))
    return errors


def _share(hits: np.ndarray) -> float | None:
    return round(float(np.mean(hits)), 4) if hits.size else None


def named_parts(outputs: dict[str, np.ndarray], classes: tuple[str, ...]) -> np.ndarray | None:
    """The body part the head names for each row (its most probable class), or None when the
    outputs have no body-part head."""
    if not classes or "body_part" not in outputs:
        return None
    named: np.ndarray = np.asarray(classes)[np.argmax(outputs["body_part"], axis=1)]
    return named


def _part_row(
    truth: str, wrist_correct: np.ndarray, named: np.ndarray | None, classes: tuple[str, ...]
) -> dict[str, Any]:
    """One body part's row: wrist-vs-decoy accuracy and, with the head, what it was named."""
    row: dict[str, Any] = {"n": int(wrist_correct.size), "accuracy": _share(wrist_correct)}
    if named is None:
        return row
    kinds, counts = np.unique(named, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    row["named_as"] = {str(kinds[i]): int(counts[i]) for i in order}
    row["trained_on"] = truth in classes
    row["named_right"] = _share(named == truth) if truth in classes else None
    row["named_not_wrist"] = None if truth == "wrist" else _share(named != "wrist")
    return row


def figures(
    samples: SampleSet, outputs: dict[str, np.ndarray], classes: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Accuracy of each answer, overall and per body part, for one set's network outputs;
    `classes` are the body-part head's classes (none: a reader without the head)."""
    wrist_call = outputs["wrist"] > 0.0  # logit 0 = probability THRESHOLD
    correct = wrist_call == samples.wrist
    named = named_parts(outputs, classes)
    by_part = {}
    for part in sorted(set(samples.body_part.tolist())):
        rows = samples.body_part == part
        by_part[str(part)] = _part_row(
            str(part), correct[rows], None if named is None else named[rows], classes
        )
    body_part: dict[str, Any] | None = None
    if named is not None:
        known = np.isin(samples.body_part, classes)
        decoys_unknown = ~known & ~samples.wrist
        body_part = {
            "classes": list(classes),
            "accuracy": _share(named[known] == samples.body_part[known]),
            "decoy_accuracy": _share(
                named[known & ~samples.wrist] == samples.body_part[known & ~samples.wrist]
            ),
            "unknown_decoys": int(np.sum(decoys_unknown)),
            "unknown_decoys_named_not_wrist": _share(named[decoys_unknown] != "wrist"),
        }
    single = samples.has_direction
    errors = angle_errors(outputs["direction"][single], samples.direction[single])
    confident = np.linalg.norm(outputs["direction"][single], axis=1) >= CONFIDENT_LENGTH
    return {
        "images": len(samples),
        "wrist_accuracy": _share(correct),
        "wrist_sensitivity": _share(wrist_call[samples.wrist]),
        "decoy_specificity": _share(~wrist_call[~samples.wrist]),
        "by_body_part": by_part,
        "body_part": body_part,
        "inversion_accuracy": _share((outputs["inverted"] > 0.0) == samples.inverted),
        "direction": {
            "n": int(errors.size),
            "within_10_deg": _share(errors <= 10.0),
            "within_20_deg": _share(errors <= 20.0),
            "median_error_deg": round(float(np.median(errors)), 2) if errors.size else None,
            "p90_error_deg": round(float(np.percentile(errors, 90)), 2) if errors.size else None,
            "confident_share": _share(confident),
            "confident_within_20_deg": _share(errors[confident] <= 20.0),
            "unsure_within_20_deg": _share(errors[~confident] <= 20.0),
        },
    }


def evaluate(
    run: Path, world: str, images: int, seed: int, *, cache_dir: Path | None, workers: int = 2
) -> dict[str, Any]:
    """The run's figures on a fresh set of `images` drawn from `world` with `seed`; refuses the
    seed a world's training set was drawn with."""
    info = json.loads((run / "model.json").read_text(encoding="utf-8"))
    training = info.get("training", {})
    if world in training.get("worlds", ()) and seed == training.get("seed"):
        raise ValueError(
            f"seed {seed} drew the {world} training set of {run}; evaluate with another seed"
        )
    samples = load_or_draw(world, seed, images, cache_dir, workers=workers)
    model = load_model(run)
    outputs = predict(model, samples.images)
    return {"world": world, "seed": seed, **figures(samples, outputs, model.body_parts)}
