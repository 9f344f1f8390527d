"""The view reader's figures on a sample set: wrist-vs-decoy, inversion and finger direction.

Decisions are taken at probability 0.5 (fixed before any test set is seen). The direction is
scored on every wrist with exactly one part, whatever the reader said about it being a wrist.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.models.view_net import ViewNet
from train.view_reader.data import SampleSet, load_or_draw

THRESHOLD = 0.5
CONFIDENT_LENGTH = 0.7
"""The raw direction length from which the node trusts the reader's direction."""
EVAL_BATCH = 256


def load_model(run: Path) -> ViewNet:
    """The ViewNet saved in a view-reader folder (weights.pt + model.json), in eval mode."""
    info = json.loads((run / "model.json").read_text(encoding="utf-8"))
    model = ViewNet(width=int(info.get("width", 16)))
    model.load_state_dict(torch.load(run / "weights.pt", map_location="cpu", weights_only=True))
    return model.eval()


def as_batch(images: np.ndarray) -> torch.Tensor:
    """uint8 thumbnails (n, h, w) -> the network's input (n, 1, h, w) in [0, 1], channels-last
    (several times faster on CPU than the default layout for this network)."""
    batch = torch.from_numpy(images).float().div_(255.0).unsqueeze(1)
    return batch.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def predict(model: ViewNet, images: np.ndarray) -> dict[str, np.ndarray]:
    """Raw outputs for uint8 thumbnails: wrist and inverted logits, direction vectors."""
    model.eval().to(memory_format=torch.channels_last)
    chunks: dict[str, list[np.ndarray]] = {"wrist": [], "inverted": [], "direction": []}
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


def figures(samples: SampleSet, outputs: dict[str, np.ndarray]) -> dict[str, Any]:
    """Accuracy of each answer, overall and per body part, for one set's network outputs."""
    wrist_call = outputs["wrist"] > 0.0  # logit 0 = probability THRESHOLD
    correct = wrist_call == samples.wrist
    by_part = {
        str(part): {
            "n": int(np.sum(samples.body_part == part)),
            "accuracy": _share(correct[samples.body_part == part]),
        }
        for part in sorted(set(samples.body_part.tolist()))
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
    return {"world": world, "seed": seed, **figures(samples, predict(model, samples.images))}
