"""Train the view reader on sample sets drawn from one or more worlds.

Losses: binary cross-entropy for `wrist` and `inverted`; cross-entropy for the body part (the
classes are the training worlds' body parts, `sampling.body_parts`), weighted by
`BODY_PART_WEIGHT` so that the three original answers keep most of the gradient; for the
direction, on single-part wrists only, 1 - cosine similarity plus a small squared distance to
the unit target. That distance is (|d| - 1)^2 + 2|d|(1 - cos): it pulls a sure reading's length
to 1 like a plain length penalty, but its best length for an unsure one is the expected cosine of
its error (the cosine term does not depend on length), so the length the node reads as
`direction_confidence` means something.
The validation rows are chosen by index, and the epoch with the lowest validation loss is kept.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from pipeline.models.view_net import ViewNet
from train.view_reader.augment import AugmentSettings, augment_batch
from train.view_reader.data import SampleSet, load_or_draw
from train.view_reader.evaluate import as_batch, figures, predict
from train.view_reader.sampling import body_parts as world_body_parts

DISTANCE_WEIGHT = 0.25
BODY_PART_WEIGHT = 0.5


@dataclass(frozen=True)
class FitSettings:
    """One training run."""

    worlds: tuple[str, ...]
    images: int
    """Images drawn per world."""
    seed: int = 0
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    width: int = 16
    val_every: int = 8
    """Every `val_every`-th index of each world is a validation image."""
    threads: int = 2
    workers: int = 2
    body_parts: bool = True
    """Train the body-part head (classes: `sampling.body_parts(worlds)`)."""
    augment: AugmentSettings = field(default_factory=AugmentSettings)


@dataclass(frozen=True)
class FitResult:
    """The best epoch's model and what the run measured."""

    model: ViewNet
    history: list[dict[str, float]]
    best_epoch: int
    validation: dict[str, Any]
    counts: dict[str, int]
    seconds: dict[str, float]


def losses(
    outputs: dict[str, torch.Tensor],
    wrist: torch.Tensor,
    inverted: torch.Tensor,
    direction: torch.Tensor,
    has_direction: torch.Tensor,
    body_part: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Each head's loss and their sum (`total`); `body_part` holds class indices, and counts
    only when the net has the body-part head."""
    out = {
        "wrist": F.binary_cross_entropy_with_logits(outputs["wrist"], wrist),
        "inverted": F.binary_cross_entropy_with_logits(outputs["inverted"], inverted),
    }
    body = body_part is not None and "body_part" in outputs
    raw = outputs["direction"][has_direction]
    if raw.shape[0]:
        target = direction[has_direction]
        cosine = (raw * target).sum(dim=1) / raw.norm(dim=1).clamp_min(1e-6)
        distance = ((raw - target) ** 2).sum(dim=1)
        out["direction"] = (1.0 - cosine).mean() + DISTANCE_WEIGHT * distance.mean()
    else:
        out["direction"] = outputs["direction"].sum() * 0.0
    out["total"] = out["wrist"] + out["inverted"] + out["direction"]
    if body and body_part is not None:
        out["body_part"] = F.cross_entropy(outputs["body_part"], body_part)
        out["total"] = out["total"] + BODY_PART_WEIGHT * out["body_part"]
    return out


def split(samples: SampleSet, val_every: int) -> tuple[SampleSet, SampleSet]:
    """(training, validation) rows: validation is every `val_every`-th index of each world."""
    val = samples.index % val_every == 0
    return samples.take(~val), samples.take(val)


def _labels(samples: SampleSet, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
    return (
        torch.from_numpy(samples.wrist[rows].astype(np.float32)),
        torch.from_numpy(samples.inverted[rows].astype(np.float32)),
        torch.from_numpy(samples.direction[rows]),
        torch.from_numpy(samples.has_direction[rows]),
    )


def body_part_labels(samples: SampleSet, classes: tuple[str, ...]) -> torch.Tensor:
    """Each row's body part as an index into `classes`; a part outside them is an error (the
    classes come from the same worlds as the rows)."""
    index = {part: i for i, part in enumerate(classes)}
    unknown = sorted(set(samples.body_part.tolist()) - set(index))
    if unknown:
        raise ValueError(f"body parts {unknown} are not among the classes {list(classes)}")
    return torch.tensor([index[part] for part in samples.body_part.tolist()], dtype=torch.long)


@torch.no_grad()
def validation_loss(model: ViewNet, samples: SampleSet) -> float:
    """Mean total loss over a set (no augmentation), weighted by batch size."""
    model.eval()
    total, rows = 0.0, np.arange(len(samples))
    parts = body_part_labels(samples, model.body_parts) if model.body_parts else None
    for start in range(0, len(samples), 256):
        chunk = rows[start : start + 256]
        wrist, inverted, direction, has = _labels(samples, chunk)
        out = model(as_batch(samples.images[chunk]))
        part = None if parts is None else parts[chunk]
        total += float(losses(out, wrist, inverted, direction, has, part)["total"]) * len(chunk)
    return total / max(len(samples), 1)


def draw_training_data(
    settings: FitSettings, cache_dir: Path | None, *, progress: bool = True
) -> SampleSet:
    """Every world's set for this run, from the cache when it holds them."""
    sets = [
        load_or_draw(
            world,
            settings.seed,
            settings.images,
            cache_dir,
            workers=settings.workers,
            progress=progress,
        )
        for world in settings.worlds
    ]
    return SampleSet.concat(sets)


def fit(settings: FitSettings, cache_dir: Path | None, *, progress: bool = True) -> FitResult:
    """Draw (or load) the data, train, and return the epoch with the lowest validation loss."""
    torch.set_num_threads(settings.threads)
    start = time.perf_counter()
    samples = draw_training_data(settings, cache_dir, progress=progress)
    drawn = time.perf_counter()
    train_set, val_set = split(samples, settings.val_every)
    torch.manual_seed(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    classes = world_body_parts(settings.worlds) if settings.body_parts else ()
    model = ViewNet(width=settings.width, body_parts=classes)
    model = model.to(memory_format=torch.channels_last)
    parts = body_part_labels(train_set, classes) if classes else None
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr)
    steps_per_epoch = -(-len(train_set) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimiser, T_max=max(settings.epochs * steps_per_epoch, 1)
    )
    history: list[dict[str, float]] = []
    best: tuple[float, int, dict[str, Any]] = (float("inf"), 0, {})
    bar = tqdm(
        total=settings.epochs * steps_per_epoch, desc="fitting", unit="step", disable=not progress
    )
    for epoch in range(1, settings.epochs + 1):
        model.train()
        order = torch.randperm(len(train_set), generator=generator).numpy()
        running, seen = 0.0, 0
        for begin in range(0, len(order), settings.batch_size):
            rows = order[begin : begin + settings.batch_size]
            wrist, inverted, direction, has = _labels(train_set, rows)
            images, direction, inverted = augment_batch(
                as_batch(train_set.images[rows]), direction, inverted, settings.augment, generator
            )
            images = images.contiguous(memory_format=torch.channels_last)
            part = None if parts is None else parts[torch.from_numpy(rows)]
            loss = losses(model(images), wrist, inverted, direction, has, part)["total"]
            optimiser.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            schedule.step()
            running += loss.item() * len(rows)
            seen += len(rows)
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{running / seen:.3f}")
        val_loss = validation_loss(model, val_set)
        history.append({"epoch": epoch, "train_loss": running / seen, "val_loss": val_loss})
        if val_loss < best[0]:
            best = (val_loss, epoch, copy.deepcopy(model.state_dict()))
    bar.close()
    model.load_state_dict(best[2])
    model.eval()
    validation: dict[str, Any] = {"all": figures(val_set, predict(model, val_set.images), classes)}
    for world in settings.worlds:
        subset = val_set.take(val_set.world == world)
        validation[world] = figures(subset, predict(model, subset.images), classes)
    validation["loss"] = round(best[0], 4)
    return FitResult(
        model=model,
        history=history,
        best_epoch=best[1],
        validation=validation,
        counts={"train_images": len(train_set), "validation_images": len(val_set)},
        seconds={
            "drawing": round(drawn - start, 1),
            "training": round(time.perf_counter() - drawn, 1),
        },
    )


def settings_record(settings: FitSettings) -> dict[str, Any]:
    """The settings as plain JSON values."""
    record = asdict(settings)
    record["worlds"] = list(settings.worlds)
    return record
