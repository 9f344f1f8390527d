"""Model Rx (thesis Section 5.2, Figure 5.3): a plain CNN without residual connections.

A block is a 3x3 convolution with unit stride, a ReLU and a 2x2 max pooling with stride 2 (the
thesis pools before the ReLU; both orders give the same output because ReLU is monotonic). The
blocks are followed by an adaptive average pooling to 1x1 and three fully connected layers
(C -> 128 -> 32 -> 1).

Channel widths:

- Lite (4 blocks): 16, 32, 64, 128 -> 128 features. All convolutions unpadded, as in the thesis.
  Smallest input side: 46 px.
- Large (8 blocks): 16, 32, 64, 64, 128, 128, 256, 256 -> 256 features. Eight unpadded blocks
  cannot take the thesis input (341x512): the short side underflows at block 7 (341 -> 169 -> 83
  -> 40 -> 19 -> 8 -> 3 -> 0), and even 512 px reaches 0 at block 8. So blocks 1-4 are unpadded
  (identical to Lite) and blocks 5-8 use padding=1 (the side only halves there):
  341x512 -> 1x1 at the end. Smallest input side: 286 px.

`rx_large` is the thesis model as it was: default PyTorch initialisation, no normalisation; it
never learned (vanishing gradients, thesis Section 6.2.3). `rx_large_bn` adds BatchNorm after
every convolution and He (Kaiming) initialisation.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn

RX_LITE_WIDTHS: tuple[int, ...] = (16, 32, 64, 128)
RX_LARGE_WIDTHS: tuple[int, ...] = (16, 32, 64, 64, 128, 128, 256, 256)
RX_LARGE_UNPADDED_BLOCKS = 4
RX_LARGE_CAM_BLOCK = 4
"""Grad-CAM layer of the Large models: the fifth block, about 9x15 at 341x512 (the last block is
1x1 there, which would make every heat map uniform)."""
RX_LITE_PADDINGS: tuple[int, ...] = (0,) * len(RX_LITE_WIDTHS)
RX_LARGE_PADDINGS: tuple[int, ...] = (0,) * RX_LARGE_UNPADDED_BLOCKS + (1,) * (
    len(RX_LARGE_WIDTHS) - RX_LARGE_UNPADDED_BLOCKS
)
CLASSIFIER_WIDTHS: tuple[int, int] = (128, 32)


def rx_output_side(side: int, paddings: Sequence[int]) -> int:
    """Spatial side after the Rx blocks with the given conv paddings (<= 0 means it underflows)."""
    for padding in paddings:
        side = side - 2 + 2 * padding
        if side < 1:
            return 0
        side //= 2
    return side


def rx_min_input_side(paddings: Sequence[int]) -> int:
    """Smallest input side for which every Rx block still has at least one pixel."""
    side = 1
    while rx_output_side(side, paddings) < 1:
        side += 1
    return side


def _block(in_channels: int, out_channels: int, padding: int, batch_norm: bool) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv"] = nn.Conv2d(
        in_channels, out_channels, kernel_size=3, stride=1, padding=padding, bias=not batch_norm
    )
    if batch_norm:
        layers["bn"] = nn.BatchNorm2d(out_channels)
    layers["relu"] = nn.ReLU(inplace=True)
    layers["pool"] = nn.MaxPool2d(kernel_size=2, stride=2)
    return nn.Sequential(layers)


class RxNet(nn.Module):
    """Model Rx: stacked conv blocks, global average pooling and a three-layer classifier."""

    def __init__(
        self,
        *,
        arch: str,
        widths: Sequence[int],
        paddings: Sequence[int],
        in_channels: int = 1,
        batch_norm: bool = False,
        he_init: bool = False,
        dropout: float = 0.0,
        global_max_pool: bool = False,
        cam_block: int = -1,
    ) -> None:
        super().__init__()
        if not widths or len(widths) != len(paddings):
            raise ValueError("RxNet needs one padding per block width and at least one block")
        self.arch = arch
        self.paddings: tuple[int, ...] = tuple(paddings)
        self.min_input_side = rx_min_input_side(self.paddings)
        channels = [in_channels, *widths]
        self.blocks = nn.Sequential(
            *(
                _block(channels[i], channels[i + 1], self.paddings[i], batch_norm)
                for i in range(len(widths))
            )
        )
        # A fracture is a small local finding: averaging over the whole view dilutes it, the
        # maximum keeps it (the thesis's Rx averages; rx_lite_bn takes the maximum).
        self.pool: nn.Module = (
            nn.AdaptiveMaxPool2d(1) if global_max_pool else nn.AdaptiveAvgPool2d(1)
        )
        self.feature_dim: int = widths[-1]
        hidden1, hidden2 = CLASSIFIER_WIDTHS
        self.classifier = nn.Sequential(
            nn.Linear(self.feature_dim, hidden1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden1, hidden2),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden2, 1),
        )
        self.cam_block = cam_block
        if he_init:
            self._he_init()

    @property
    def target_layer(self) -> nn.Module:
        """The block Grad-CAM explains: one whose output still has a spatial extent at the model
        input (a property, so it adds nothing to the state dict)."""
        layer: nn.Module = self.blocks[self.cam_block]
        return layer

    def _he_init(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(module.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, feature_dim) pooled features before the classifier."""
        side = min(x.shape[-2:])
        if side < self.min_input_side:
            raise ValueError(
                f"{self.arch} needs an input side of at least {self.min_input_side} px, "
                f"got {tuple(x.shape[-2:])}"
            )
        return torch.flatten(self.pool(self.blocks(x)), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N,) logits."""
        logits: torch.Tensor = self.classifier(self.features(x))
        return logits.squeeze(-1)


def rx_lite(*, in_channels: int = 1, dropout: float = 0.0) -> RxNet:
    """Model Rx Lite: 4 unpadded blocks, default initialisation (thesis)."""
    return RxNet(
        arch="rx_lite",
        widths=RX_LITE_WIDTHS,
        paddings=RX_LITE_PADDINGS,
        in_channels=in_channels,
        dropout=dropout,
    )


def rx_lite_bn(*, in_channels: int = 1, dropout: float = 0.0) -> RxNet:
    """Model Rx Lite with BatchNorm after every convolution, He initialisation and global max
    pooling: the small, CPU-trainable model of the bundled demo."""
    return RxNet(
        arch="rx_lite_bn",
        widths=RX_LITE_WIDTHS,
        paddings=RX_LITE_PADDINGS,
        in_channels=in_channels,
        batch_norm=True,
        he_init=True,
        dropout=dropout,
        global_max_pool=True,
    )


def rx_large(*, in_channels: int = 1, dropout: float = 0.0) -> RxNet:
    """Model Rx Large as in the thesis: 8 blocks, default initialisation, no normalisation."""
    return RxNet(
        arch="rx_large",
        widths=RX_LARGE_WIDTHS,
        paddings=RX_LARGE_PADDINGS,
        in_channels=in_channels,
        dropout=dropout,
        cam_block=RX_LARGE_CAM_BLOCK,
    )


def rx_large_bn(*, in_channels: int = 1, dropout: float = 0.0) -> RxNet:
    """Model Rx Large with BatchNorm after every convolution and He initialisation."""
    return RxNet(
        arch="rx_large_bn",
        widths=RX_LARGE_WIDTHS,
        paddings=RX_LARGE_PADDINGS,
        in_channels=in_channels,
        batch_norm=True,
        he_init=True,
        dropout=dropout,
        cam_block=RX_LARGE_CAM_BLOCK,
    )


def gradient_norms(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """L2 norm of d(BCE loss)/d(parameter) for every trainable parameter after one backward.

    Uses `torch.autograd.grad`, so the parameters' `.grad` fields are left untouched. The model
    runs in its current mode (in training mode BatchNorm updates its running statistics).
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    loss = nn.functional.binary_cross_entropy_with_logits(model(x), y.to(torch.float32))
    grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
    return {
        name: 0.0 if grad is None else float(grad.norm())
        for (name, _), grad in zip(named, grads, strict=True)
    }
