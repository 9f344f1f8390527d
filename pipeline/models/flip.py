"""Test-time flip averaging: a view model's logit as the mean over the view and its mirror image.

The models train with random horizontal flips (left and right wrists, mirrored exposures), so a
radiograph and its mirror image are equally valid inputs; averaging the two logits removes part
of the model's variance at the cost of a second forward pass. Both go through the model as one
batch of 2N. The wrapper is applied when a bundle says `test_time_flip`, after its weights are
loaded, so the weights file holds the plain model. Grad-CAM gives it the mean of the map of the
view and the mirrored-back map of its mirror image (`pipeline.gradcam`).
"""

from __future__ import annotations

import torch
from torch import nn


def mirror(images: torch.Tensor) -> torch.Tensor:
    """(…, H, W) images flipped left-right."""
    return torch.flip(images, dims=(-1,))


class FlipAveraged(nn.Module):
    """(N, C, H, W) -> (N,) mean of `model`'s logits on the images and on their mirror images."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        both: torch.Tensor = self.model(torch.cat([x, mirror(x)]))
        plain, mirrored = both.chunk(2)
        return (plain + mirrored) / 2


def with_test_time_flip(model: nn.Module, enabled: bool) -> nn.Module:
    """`model` wrapped in `FlipAveraged` when `enabled` (never twice), else `model` itself."""
    if not enabled or isinstance(model, FlipAveraged):
        return model
    return FlipAveraged(model)


def without_test_time_flip(model: nn.Module) -> nn.Module:
    """The plain view model inside a `FlipAveraged` (or `model` itself)."""
    return model.model if isinstance(model, FlipAveraged) else model
