"""Training data held in device memory: each view decoded once, augmented on the device.

On a GPU the small models train faster than DataLoader workers can decode PNGs and augment them
(`bench/training.py`). `DeviceViews` decodes every view once, applies the evaluation geometry
(pad to the model's aspect, resize to its input) and keeps it as uint8 on the device: 175 KB a
view at 341x512, 1.8 GB for 10,000 views. `augment_on_device` then applies the training preset
to a whole batch with one `grid_sample`: a random crop of 90-100% of each side resized back to
the input, horizontal flip, optional inversion, normalisation. On prepared views (already at the
input size) it equals `training_transform` except in the crop's outermost pixels, where
`grid_sample` interpolates with the pixel just outside the crop and `resized_crop` repeats the
edge.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from train.data.augment import AugmentParams, evaluation_geometry
from train.data.datasets import ViewRow, load_view


class DeviceViews:
    """The views of `rows` as a (N, 1, H, W) uint8 tensor on `device`, with their labels."""

    def __init__(
        self, rows: list[ViewRow], params: AugmentParams, device: torch.device, *,
        threads: int = 0,
    ) -> None:  # fmt: skip
        geometry = evaluation_geometry(params)

        def decode(row: ViewRow) -> torch.Tensor:
            image: torch.Tensor = geometry(load_view(row.path))
            return image.mul(255).round_().clamp_(0, 255).to(torch.uint8)

        threads = threads or min(16, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL and torch release the GIL
            images = list(pool.map(decode, rows))
        shape = (0, 1, params.height, params.width)
        self.images = (torch.stack(images) if images else torch.zeros(shape, dtype=torch.uint8)).to(
            device
        )
        self.labels = torch.tensor([r.label for r in rows], dtype=torch.float32, device=device)
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def batches(
        self,
        order: Iterable[int],
        *,
        batch_size: int,
        params: AugmentParams,
        generator: torch.Generator,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Augmented, normalised (images, labels) batches in the sampler's `order`."""
        indices = torch.as_tensor(list(order), dtype=torch.long, device=self.images.device)
        for start in range(0, len(indices), batch_size):
            chosen = indices[start : start + batch_size]
            yield augment_on_device(self.images[chosen], params, generator), self.labels[chosen]

    def normalised(self, start: int, stop: int, params: AugmentParams) -> torch.Tensor:
        """Views [start, stop) as the evaluation preset gives them (no randomness)."""
        return (self.images[start:stop].float() / 255 - params.mean) / params.std


class CropWindows(NamedTuple):
    """Per-sample crop windows in input pixels, and -1 where the sample is mirrored."""

    top: torch.Tensor
    left: torch.Tensor
    height: torch.Tensor
    width: torch.Tensor
    mirror: torch.Tensor


def random_windows(
    n: int, height: int, width: int, params: AugmentParams, generator: torch.Generator
) -> CropWindows:
    """The preset's random crops (`crop_min`-100% of each side) and flips, as `RandomCropResize`
    and `RandomHorizontalFlip` draw them."""
    device = generator.device

    def uniform() -> torch.Tensor:
        return torch.rand(n, generator=generator, device=device)

    fraction = params.crop_min + (1.0 - params.crop_min) * uniform()
    crop_h = (height * fraction).round().clamp(min=1)
    crop_w = (width * fraction).round().clamp(min=1)
    top = torch.minimum(torch.floor(uniform() * (height - crop_h + 1)), height - crop_h)
    left = torch.minimum(torch.floor(uniform() * (width - crop_w + 1)), width - crop_w)
    mirror = torch.where(uniform() < params.flip, -1.0, 1.0)
    return CropWindows(top, left, crop_h, crop_w, mirror)


def crop_resize(images: torch.Tensor, windows: CropWindows) -> torch.Tensor:
    """Each (1, H, W) image's window resized back to (H, W), mirrored where asked; in [0, 1]."""
    n, _, height, width = images.shape
    # Output pixel centres map onto the window as resize maps them: affine_grid works in [-1, 1]
    # over the whole image, so scale by the window's share and shift to its centre.
    theta = torch.zeros((n, 2, 3), device=images.device)
    theta[:, 0, 0] = windows.width / width * windows.mirror
    theta[:, 0, 2] = (2 * windows.left + windows.width) / width - 1
    theta[:, 1, 1] = windows.height / height
    theta[:, 1, 2] = (2 * windows.top + windows.height) / height - 1
    grid = F.affine_grid(theta, [n, 1, height, width], align_corners=False)
    source = images.float() / 255 if images.dtype == torch.uint8 else images.float()
    return F.grid_sample(source, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)  # fmt: skip


def augment_on_device(
    images: torch.Tensor, params: AugmentParams, generator: torch.Generator
) -> torch.Tensor:
    """The training preset on a (N, 1, H, W) uint8 batch at the model's input size."""
    n, _, height, width = images.shape
    out = crop_resize(images, random_windows(n, height, width, params, generator))
    if params.invert:
        flip = torch.rand(n, generator=generator, device=images.device) < 0.5
        out = torch.where(flip[:, None, None, None], 1 - out, out)
    return (out - params.mean) / params.std


@torch.no_grad()
def predict_device_views(
    model: nn.Module, views: DeviceViews, params: AugmentParams, batch_size: int = 128
) -> np.ndarray:
    """Logits of a single-view model for every view in `views`, in order, no augmentation."""
    model.eval()
    out = [
        model(views.normalised(start, start + batch_size, params)).float().cpu()
        for start in range(0, len(views), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros(0)
