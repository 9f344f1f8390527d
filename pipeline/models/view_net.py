"""A small learned view reader: is this a wrist, is it inverted, where do the fingers point.

The preprocessing's heuristics (thresholds on histograms and shapes) were tuned in one synthetic
world and fail in another; a network trained on several domain-randomised worlds is a second,
independent opinion. It sees the whole source image in display space, shrunk to a square
thumbnail with its aspect kept, and answers three questions at once:

- `wrist`: the image shows a wrist (forearm and hand), not another body part;
- `inverted`: bone is dark on a bright background (a workstation inverted the pixels);
- `direction`: the unit vector (x right, y down) from the forearm towards the fingers.

The node and the training package build it here, so both agree on its input and outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import nn

THUMBNAIL_SIDE = 128


def thumbnail(pixels: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """The image shrunk (area-averaged) to fit `side` x `side`, centred on a padding of its own
    border median, as float32 in [0, 1]."""
    h, w = pixels.shape
    scale = side / max(h, w)
    step = max(1, int(1 / scale))
    small = np.asarray(pixels, np.float32)
    if step > 1:  # block means first: cheap, and no aliasing of noise or grid lines
        hh, ww = (h // step) * step, (w // step) * step
        small = small[:hh, :ww].reshape(hh // step, step, ww // step, step).mean(axis=(1, 3))
    factor = side / max(small.shape)
    small = ndimage.zoom(small, factor, order=1, grid_mode=True, mode="nearest")
    small = small[:side, :side]
    border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    out = np.full((side, side), float(np.median(border)), np.float32)
    y0, x0 = (side - small.shape[0]) // 2, (side - small.shape[1]) // 2
    out[y0 : y0 + small.shape[0], x0 : x0 + small.shape[1]] = small
    return np.clip(out, 0.0, 1.0)


class ViewNet(nn.Module):
    """Five conv blocks (stride 2) and three heads; about 0.37 M parameters (1.5 MB of float32
    weights), a few ms per image on one CPU core."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for out in (width, width * 2, width * 4, width * 4, width * 8):
            layers += [
                nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.Conv2d(out, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.heads = nn.Linear(channels, 4)  # wrist, inverted, direction (x, y)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.pool(self.features(x)).flatten(1)
        out = self.heads(z)
        return {"wrist": out[:, 0], "inverted": out[:, 1], "direction": out[:, 2:4]}


@dataclass(frozen=True)
class ViewReading:
    """What the view reader saw in one image."""

    wrist_probability: float
    inverted_probability: float
    finger_angle_deg: float
    """Arm angle in the truth's convention: 0 = fingers up, counter-clockwise positive."""
    direction_confidence: float
    """Length of the raw direction output (near 1 when the reader is sure of the axis)."""


def reading_from_outputs(outputs: dict[str, torch.Tensor], index: int = 0) -> ViewReading:
    """One image's reading from a batch of network outputs."""
    dx, dy = (float(v) for v in outputs["direction"][index])
    return ViewReading(
        wrist_probability=float(torch.sigmoid(outputs["wrist"][index])),
        inverted_probability=float(torch.sigmoid(outputs["inverted"][index])),
        finger_angle_deg=direction_to_angle(dx, dy),
        direction_confidence=math.hypot(dx, dy),
    )


def direction_to_angle(dx: float, dy: float) -> float:
    """Fingers direction (x right, y down) -> arm angle (0 = up, counter-clockwise positive)."""
    return math.degrees(math.atan2(-dx, -dy))


def angle_to_direction(angle_deg: float, fingers_down: bool = False) -> tuple[float, float]:
    """Arm angle (and a fingers-down flip) -> the unit vector towards the fingers."""
    a = math.radians(angle_deg)
    dx, dy = -math.sin(a), -math.cos(a)
    return (-dx, -dy) if fingers_down else (dx, dy)
