"""ResNet18 (thesis Section 5.1) for one-channel radiographs and one logit, and a slim variant.

The modules keep torchvision's names (conv1, bn1, layer1..layer4, fc), so a state dict lines up
with torchvision's resnet18 apart from conv1's input channels and fc's output size.

`resnet18_slim` has ResNet18's layout (a 7x7 stem, four stages of two basic blocks) at 3/8 of
its width, 24-48-96-192 channels: 1.6 M parameters, 6.3 MB of float32 weights, so it fits the
10 MB bundle of the demo model where ResNet18 (11.2 M parameters, 45 MB) does not.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock, conv1x1

RESNET18_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
RESNET18_SLIM_WIDTHS: tuple[int, int, int, int] = (24, 48, 96, 192)


class ResNet18Classifier(nn.Module):
    """ResNet18's layout with a `in_channels`-channel stem and a single-logit head."""

    def __init__(
        self,
        *,
        in_channels: int = 1,
        dropout: float = 0.0,
        widths: tuple[int, int, int, int] = RESNET18_WIDTHS,
        arch: str = "resnet18",
    ) -> None:
        super().__init__()
        self.arch = arch
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3,
                               bias=False)  # fmt: skip
        self.bn1: nn.Module = nn.BatchNorm2d(widths[0])
        self.relu: nn.Module = nn.ReLU(inplace=True)
        self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        if widths == RESNET18_WIDTHS:
            net = resnet18(weights=None, num_classes=1)
            stages = [net.layer1, net.layer2, net.layer3, net.layer4]
        else:
            stages = [
                _stage(widths[max(i - 1, 0)], width, 1 if i == 0 else 2)
                for i, width in enumerate(widths)
            ]
        self.layer1: nn.Module = stages[0]
        self.layer2: nn.Module = stages[1]
        self.layer3: nn.Module = stages[2]
        self.layer4: nn.Module = stages[3]
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(widths[3], 1)
        self.feature_dim: int = widths[3]
        # The initialisation torchvision's ResNet.__init__ applies.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    @property
    def target_layer(self) -> nn.Module:
        """The layer Grad-CAM explains (a property, so it adds nothing to the state dict)."""
        return self.layer4

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, feature_dim) pooled features before the classifier."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N,) logits."""
        logits: torch.Tensor = self.fc(self.dropout(self.features(x)))
        return logits.squeeze(-1)


def _stage(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Two basic blocks; the first changes width and stride through a 1x1 projection."""
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(
            conv1x1(in_channels, out_channels, stride), nn.BatchNorm2d(out_channels)
        )
    return nn.Sequential(
        BasicBlock(in_channels, out_channels, stride, downsample),
        BasicBlock(out_channels, out_channels),
    )


def resnet18_classifier(*, in_channels: int = 1, dropout: float = 0.0) -> ResNet18Classifier:
    """ResNet18 baseline: random (Kaiming) initialisation, no pretrained weights."""
    return ResNet18Classifier(in_channels=in_channels, dropout=dropout)


def resnet18_slim(*, in_channels: int = 1, dropout: float = 0.0) -> ResNet18Classifier:
    """ResNet18's layout at 3/8 width (24-48-96-192): small enough for the demo bundle."""
    return ResNet18Classifier(
        in_channels=in_channels, dropout=dropout, widths=RESNET18_SLIM_WIDTHS,
        arch="resnet18_slim",
    )  # fmt: skip
