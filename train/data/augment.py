"""Augmentation presets (thesis Section 4.4, Figure 4.12) on (1, H, W) float tensors in [0, 1].

Training: pad to the model's aspect ratio, random crop of 90-100% of each side then resize,
horizontal flip with p = 0.5, optionally colour inversion with p = 0.5 (the thesis found it hurt,
Table 6.5; `invert=True` repeats that experiment), normalisation with the dataset's statistics.
Evaluation: pad, resize, normalise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F


@dataclass(frozen=True)
class AugmentParams:
    """The preset's parameters; they travel with a run so evaluation uses the same ones."""

    height: int = 512
    width: int = 341
    mean: float = 0.34587
    std: float = 0.22898
    crop_min: float = 0.9
    flip: float = 0.5
    invert: bool = False


class PadToAspect(torch.nn.Module):
    """Pad with black (background after inversion) to the width/height ratio of the model."""

    def __init__(self, width: int, height: int) -> None:
        super().__init__()
        self.ratio = width / height

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        if abs(w / h - self.ratio) < 1e-3:
            return image
        target_w, target_h = (
            (math.ceil(h * self.ratio), h) if w / h < self.ratio else (w, math.ceil(w / self.ratio))
        )
        left, top = (target_w - w) // 2, (target_h - h) // 2
        padded: torch.Tensor = F.pad(
            image, [left, top, target_w - w - left, target_h - h - top], fill=0.0
        )
        return padded


class RandomCropResize(torch.nn.Module):
    """Crop a random window of `crop_min`-100% of each side, then resize to (height, width)."""

    def __init__(self, height: int, width: int, crop_min: float) -> None:
        super().__init__()
        self.size, self.crop_min = (height, width), crop_min

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        h, w = image.shape[-2:]
        fraction = float(torch.empty(1).uniform_(self.crop_min, 1.0))
        ch, cw = max(1, round(h * fraction)), max(1, round(w * fraction))
        top = int(torch.randint(0, h - ch + 1, (1,)))
        left = int(torch.randint(0, w - cw + 1, (1,)))
        cropped: torch.Tensor = F.resized_crop(
            image, top, left, ch, cw, list(self.size), antialias=True
        )
        return cropped


def training_transform(params: AugmentParams) -> v2.Compose:
    """The training preset."""
    steps: list[torch.nn.Module] = [
        PadToAspect(params.width, params.height),
        RandomCropResize(params.height, params.width, params.crop_min),
        v2.RandomHorizontalFlip(params.flip),
    ]
    if params.invert:
        steps.append(v2.RandomInvert(0.5))
    steps.append(v2.Normalize([params.mean], [params.std]))
    return v2.Compose(steps)


def evaluation_geometry(params: AugmentParams) -> v2.Compose:
    """The evaluation preset's geometry alone: pad to the aspect, resize to the input."""
    return v2.Compose([
        PadToAspect(params.width, params.height),
        v2.Resize((params.height, params.width), antialias=True),
    ])  # fmt: skip


def evaluation_transform(params: AugmentParams) -> v2.Compose:
    """The evaluation preset: no randomness."""
    return v2.Compose([evaluation_geometry(params), v2.Normalize([params.mean], [params.std])])
