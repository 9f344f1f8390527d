"""ResNet18 baseline (thesis Section 5.1) for one-channel radiographs and one logit.

The modules keep torchvision's names (conv1, bn1, layer1..layer4, fc), so a state dict lines up
with torchvision's resnet18 apart from conv1's input channels and fc's output size.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import resnet18

FEATURE_DIM = 512


class ResNet18Classifier(nn.Module):
    """torchvision ResNet18 with a `in_channels`-channel stem and a single-logit head."""

    def __init__(self, *, in_channels: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        net = resnet18(weights=None, num_classes=1)
        self.arch = "resnet18"
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        # Same initialisation torchvision applies to every conv in ResNet.__init__.
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1: nn.Module = net.bn1
        self.relu: nn.Module = net.relu
        self.maxpool: nn.Module = net.maxpool
        self.layer1: nn.Module = net.layer1
        self.layer2: nn.Module = net.layer2
        self.layer3: nn.Module = net.layer3
        self.layer4: nn.Module = net.layer4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(FEATURE_DIM, 1)
        self.feature_dim: int = FEATURE_DIM

    @property
    def target_layer(self) -> nn.Module:
        """The layer Grad-CAM explains (a property, so it adds nothing to the state dict)."""
        return self.layer4

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N, 512) pooled features before the classifier."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, H, W) -> (N,) logits."""
        logits: torch.Tensor = self.fc(self.dropout(self.features(x)))
        return logits.squeeze(-1)


def resnet18_classifier(*, in_channels: int = 1, dropout: float = 0.0) -> ResNet18Classifier:
    """ResNet18 baseline: random (Kaiming) initialisation, no pretrained weights."""
    return ResNet18Classifier(in_channels=in_channels, dropout=dropout)
