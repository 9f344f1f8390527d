"""Augmentations of thumbnail batches that keep the labels right.

Geometry: the eight flips and quarter turns of the square (the dihedral group), each applied to
the image and to the fingers' direction label (x right, y down) together. Look: gamma, contrast,
brightness and noise, mild enough that bone stays brighter than the background; and a workstation
inversion, which flips the `inverted` label.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges of the label-keeping augmentations (all per image)."""

    dihedral: bool = True
    gamma: float = 1.6
    """Gamma drawn log-uniformly in [1/gamma, gamma]."""
    contrast: float = 0.25
    brightness: float = 0.1
    noise: float = 0.03
    """Gaussian noise with a standard deviation drawn uniformly in [0, noise]."""
    invert: float = 0.15
    """Probability of inverting the image (and flipping its `inverted` label)."""


def hflip(images: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror left-right: x -> -x."""
    return images.flip(-1), direction * direction.new_tensor([-1.0, 1.0])


def vflip(images: torch.Tensor, direction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror top-bottom: y -> -y."""
    return images.flip(-2), direction * direction.new_tensor([1.0, -1.0])


def rot90(
    images: torch.Tensor, direction: torch.Tensor, k: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn k quarter turns counter-clockwise on screen: a direction (dx, dy) becomes (dy, -dx)
    per turn (right becomes up)."""
    k %= 4
    images = torch.rot90(images, k, dims=(-2, -1))
    for _ in range(k):
        direction = torch.stack([direction[..., 1], -direction[..., 0]], dim=-1)
    return images, direction


def dihedral(
    images: torch.Tensor, direction: torch.Tensor, code: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Element `code` (0-7) of the square's symmetry group: a mirror when code >= 4, then
    code % 4 quarter turns."""
    if code >= 4:
        images, direction = hflip(images, direction)
    return rot90(images, direction, code % 4)


def augment_batch(
    images: torch.Tensor,
    direction: torch.Tensor,
    inverted: torch.Tensor,
    settings: AugmentSettings,
    generator: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A randomly transformed copy of a batch ((n, 1, h, w) in [0, 1]) and its direction and
    inversion labels."""
    n = images.shape[0]
    images, direction, inverted = images.clone(), direction.clone(), inverted.clone()
    if settings.dihedral:
        codes = torch.randint(0, 8, (n,), generator=generator)
        for code in range(8):
            rows = torch.nonzero(codes == code).flatten()
            if rows.numel():
                images[rows], direction[rows] = dihedral(images[rows], direction[rows], code)
    flip = torch.rand(n, generator=generator) < settings.invert
    images[flip] = 1.0 - images[flip]
    inverted[flip] = 1.0 - inverted[flip]

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, generator=generator)).view(n, 1, 1, 1)

    log_gamma = math.log(settings.gamma)
    images = images.clamp(1e-4, 1.0) ** torch.exp(uniform(-log_gamma, log_gamma))
    images = (images - 0.5) * (1.0 + uniform(-settings.contrast, settings.contrast)) + 0.5
    images = images + uniform(-settings.brightness, settings.brightness)
    sigma = uniform(0.0, settings.noise)
    images = images + sigma * torch.randn(images.shape, generator=generator)
    return images.clamp(0.0, 1.0), direction, inverted
