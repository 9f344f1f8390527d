"""A small learned view reader: is this a wrist, is it inverted, where do the fingers point.

The preprocessing's heuristics (thresholds on histograms and shapes) were tuned in one synthetic
world and fail in another; a network trained on several domain-randomised worlds is a second,
independent opinion. It sees the whole source image in display space, shrunk to a square
thumbnail with its aspect kept, and answers three questions at once:

- `wrist`: the image shows a wrist (forearm and hand), not another body part;
- `inverted`: bone is dark on a bright background (a workstation inverted the pixels);
- `direction`: the unit vector (x right, y down) from the forearm towards the fingers;
- `body_part` (readers trained with a class list): which body part the image shows, so that a
  refusal can say what the image looks like rather than only what it is not.

The node and the training package build it here, so both agree on its input and outputs.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    """Five conv blocks (stride 2) and three heads (four with `body_parts`); about 0.37 M
    parameters (1.5 MB of float32 weights), a few ms per image on one CPU core.

    The body-part head is one more slice of the same linear layer, so a reader without it keeps
    its old weights' shapes and loads as before."""

    def __init__(self, width: int = 16, body_parts: Sequence[str] = ()) -> None:
        super().__init__()
        self.body_parts = tuple(body_parts)
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
        # wrist, inverted, direction (x, y), then one logit per body part
        self.heads = nn.Linear(channels, 4 + len(self.body_parts))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.pool(self.features(x)).flatten(1)
        out = self.heads(z)
        answer = {"wrist": out[:, 0], "inverted": out[:, 1], "direction": out[:, 2:4]}
        if self.body_parts:
            answer["body_part"] = out[:, 4:]
        return answer


def load_view_net(folder: Path) -> tuple[ViewNet, dict[str, Any]]:
    """The ViewNet saved in `folder` (weights.pt, model.json) in eval mode, and its record. A
    record without `body_parts` (readers before the body-part head) builds the three-head net."""
    info: dict[str, Any] = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    net = ViewNet(width=int(info.get("width", 16)), body_parts=info.get("body_parts", ()))
    net.load_state_dict(torch.load(folder / "weights.pt", map_location="cpu", weights_only=True))
    return net.eval(), info


@dataclass(frozen=True)
class ViewReading:
    """What the view reader saw in one image."""

    wrist_probability: float
    inverted_probability: float
    finger_angle_deg: float
    """Arm angle in the truth's convention: 0 = fingers up, counter-clockwise positive."""
    direction_confidence: float
    """Length of the raw direction output (near 1 when the reader is sure of the axis)."""
    body_part: str = ""
    """The most probable body part (a class name such as "lower_leg"); "" for a reader
    without the body-part head."""
    body_part_probability: float = 0.0
    """Its softmax probability over the reader's classes; 0.0 without the head."""


def reading_from_outputs(
    outputs: dict[str, torch.Tensor], index: int = 0, body_parts: Sequence[str] = ()
) -> ViewReading:
    """One image's reading from a batch of network outputs; `body_parts` names the classes of
    the body-part head (the net's own list), when it has one."""
    dx, dy = (float(v) for v in outputs["direction"][index])
    part, part_p = "", 0.0
    if body_parts and "body_part" in outputs:
        probabilities = torch.softmax(outputs["body_part"][index], dim=0)
        best = int(torch.argmax(probabilities))
        part, part_p = body_parts[best], float(probabilities[best])
    return ViewReading(
        wrist_probability=float(torch.sigmoid(outputs["wrist"][index])),
        inverted_probability=float(torch.sigmoid(outputs["inverted"][index])),
        finger_angle_deg=direction_to_angle(dx, dy),
        direction_confidence=math.hypot(dx, dy),
        body_part=part,
        body_part_probability=part_p,
    )


def body_part_words(name: str) -> str:
    """A class name as people write it: "lower_leg" -> "lower leg"."""
    return name.replace("_", " ").strip()


def direction_to_angle(dx: float, dy: float) -> float:
    """Fingers direction (x right, y down) -> arm angle (0 = up, counter-clockwise positive)."""
    return math.degrees(math.atan2(-dx, -dy))


def angle_to_direction(angle_deg: float, fingers_down: bool = False) -> tuple[float, float]:
    """Arm angle (and a fingers-down flip) -> the unit vector towards the fingers."""
    a = math.radians(angle_deg)
    dx, dy = -math.sin(a), -math.cos(a)
    return (-dx, -dy) if fingers_down else (dx, dy)
