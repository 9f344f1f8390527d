"""Grad-CAM explanation heat maps (Selvaraju et al.) for the single-view models.

An ensemble (`pipeline.models.ViewEnsemble`) gets the mean of its members' maps, scaled again to
a peak of 1, and the mean of their logits (its own output). A flip-averaged model
(`pipeline.models.FlipAveraged`) likewise gets the mean of the view's map and its mirror image's
map mirrored back, so the heat map stays in the view's own coordinates.

The activations of `model.target_layer` are captured by a forward hook that lives only for the
one forward pass, and their gradients come from `torch.autograd.grad`, so neither hooks nor the
parameters' `.grad` fields are touched beyond the call. The caller chooses the mode; call
`model.eval()` first for inference (in training mode BatchNorm would update its statistics).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from pipeline.models.ensemble import ViewEnsemble
from pipeline.models.flip import FlipAveraged, mirror


def _target_layer(model: nn.Module) -> nn.Module:
    layer = getattr(model, "target_layer", None)
    if not isinstance(layer, nn.Module):
        raise TypeError(f"{type(model).__name__} has no `target_layer` module for Grad-CAM")
    return layer


def grad_cam_batch(
    model: nn.Module, images: torch.Tensor
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Grad-CAM for a batch: (N, C, H, W) images -> ((N,) logits, (N, H, W) heat maps in [0, 1]).

    Each map is ReLU(sum_c mean_xy(d logit / d A_c) * A_c) of the target layer's activations A,
    upsampled bilinearly to the input size and divided by its maximum (all zeros if that is 0).
    The samples are independent as long as the model is in eval mode.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if isinstance(model, ViewEnsemble):
        return _mean_of_maps([grad_cam_batch(member, images) for member in model.members])
    if isinstance(model, FlipAveraged):
        return _flip_averaged_grad_cam(model, images)
    layer = _target_layer(model)
    captured: list[torch.Tensor] = []

    def keep_output(_module: nn.Module, _inputs: Any, output: Any) -> None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"target layer returned {type(output).__name__}, not a tensor")
        captured.append(output)

    height, width = images.shape[-2:]
    handle = layer.register_forward_hook(keep_output)
    try:
        # Inference mode or no_grad around the call would otherwise leave nothing to differentiate.
        with torch.inference_mode(False), torch.enable_grad():
            # A leaf input that requires grad makes the activations differentiable even when
            # every parameter is frozen.
            x = images.detach().clone().requires_grad_(True)
            logits = model(x)
            if len(captured) != 1:
                raise RuntimeError(
                    f"target layer ran {len(captured)} times in one forward pass, expected once"
                )
            activations = captured[0]
            if logits.shape != (images.shape[0],):
                raise ValueError(f"model must return (N,) logits, got {tuple(logits.shape)}")
            (gradients,) = torch.autograd.grad(logits.sum(), activations)
        with torch.no_grad():
            weights = gradients.mean(dim=(2, 3), keepdim=True)
            cam = torch.relu((weights * activations).sum(dim=1, keepdim=True))
            cam = nn.functional.interpolate(
                cam, size=(height, width), mode="bilinear", align_corners=False
            )[:, 0]
            peak = cam.amax(dim=(1, 2), keepdim=True)
            cam = torch.where(peak > 0, cam / peak.clamp_min(torch.finfo(cam.dtype).tiny), 0.0)
            cam = cam.clamp(0.0, 1.0)
    finally:
        handle.remove()
    heatmaps = cam.detach().to(device="cpu", dtype=torch.float32).numpy()
    scores = logits.detach().to(device="cpu", dtype=torch.float32).numpy()
    return scores, heatmaps


def _mean_of_maps(
    results: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Mean logits and mean maps of several Grad-CAM results, the maps scaled to a peak of 1."""
    scores = np.stack([s for s, _ in results]).mean(axis=0).astype(np.float32)
    mean_map = np.stack([m for _, m in results]).mean(axis=0).astype(np.float32)
    peak = mean_map.max(axis=(1, 2), keepdims=True)
    heatmaps = np.divide(mean_map, peak, out=np.zeros_like(mean_map), where=peak > 0)
    return scores, np.clip(heatmaps, 0.0, 1.0).astype(np.float32)


def _flip_averaged_grad_cam(
    model: FlipAveraged, images: torch.Tensor
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    # One backward pass over the batch of 2N: the samples are independent in eval mode.
    scores, heatmaps = grad_cam_batch(model.model, torch.cat([images, mirror(images)]))
    n = images.shape[0]
    mirrored_back = np.ascontiguousarray(heatmaps[n:, :, ::-1])
    return _mean_of_maps([(scores[:n], heatmaps[:n]), (scores[n:], mirrored_back)])


def grad_cam(model: nn.Module, image: torch.Tensor) -> tuple[float, npt.NDArray[np.float32]]:
    """Grad-CAM for one normalised image, (1, C, H, W) or (C, H, W) -> (logit, (H, W) map)."""
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] != 1:
        raise ValueError(f"image must be (1, C, H, W) or (C, H, W), got {tuple(image.shape)}")
    scores, heatmaps = grad_cam_batch(model, image)
    return float(scores[0]), heatmaps[0]
