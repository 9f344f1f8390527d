"""Datasets over a prepared dataset folder (`dicomnode-train prepare` output).

`ViewDataset` yields one view at a time (the single-view models); `StudyDataset` yields every
view of a study (the study-level aggregator), padded per batch by `collate_studies`.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from train.dataset.records import read_png

THESIS_MEAN, THESIS_STD = 0.34587, 0.22898  # thesis Section 4.4, only a fallback

Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class ViewRow:
    """One view of the prepared dataset."""

    path: Path
    study: str
    sop_instance_uid: str
    part: int
    label: int
    split: str


def read_views(dataset: Path, splits: tuple[str, ...]) -> list[ViewRow]:
    """The views of `dataset` in the given splits ("all" means every split)."""
    with (dataset / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return [
        ViewRow(dataset / r["path"], r["study_instance_uid"], r["sop_instance_uid"],
                int(r["part"]), int(r["label"]), r["split"])
        for r in rows
        if "all" in splits or r["split"] in splits
    ]  # fmt: skip


def normalisation(dataset: Path) -> tuple[float, float]:
    """The dataset's own mean and std (stats.json), or the thesis's values if absent."""
    stats = dataset / "stats.json"
    if stats.exists():
        values = json.loads(stats.read_text(encoding="utf-8"))["normalisation"]
        if values["std"] > 0:
            return float(values["mean"]), float(values["std"])
    return THESIS_MEAN, THESIS_STD


def load_view(path: Path) -> torch.Tensor:
    """A PNG view as a (1, H, W) float tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(read_png(path)))[None]


class ViewDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(image (1, H, W), label) per view; the label is the study's (thesis Section 4.1)."""

    def __init__(self, rows: list[ViewRow], transform: Transform) -> None:
        self.rows = rows
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        row = self.rows[index]
        return self.transform(load_view(row.path)), torch.tensor(float(row.label))

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.rows]


class StudyDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """(views (V, 1, H, W), label) per study, views in a stable order."""

    def __init__(self, rows: list[ViewRow], transform: Transform, max_views: int = 8) -> None:
        grouped: dict[str, list[ViewRow]] = {}
        for row in sorted(rows, key=lambda r: (r.study, r.sop_instance_uid, r.part)):
            grouped.setdefault(row.study, []).append(row)
        self.studies = [(study, views[:max_views]) for study, views in grouped.items()]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.studies)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        _, views = self.studies[index]
        images = torch.stack([self.transform(load_view(v.path)) for v in views])
        return images, torch.tensor(float(views[0].label))

    @property
    def labels(self) -> list[int]:
        return [views[0].label for _, views in self.studies]


def collate_studies(
    batch: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pad studies to the batch's largest view count: (views, mask, labels)."""
    most = max(views.shape[0] for views, _ in batch)
    shape = batch[0][0].shape[1:]
    views = torch.zeros((len(batch), most, *shape))
    mask = torch.zeros((len(batch), most), dtype=torch.bool)
    for i, (study, _) in enumerate(batch):
        views[i, : study.shape[0]] = study
        mask[i, : study.shape[0]] = True
    return views, mask, torch.stack([label for _, label in batch])
