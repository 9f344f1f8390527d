"""Single-view model builders by architecture name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeAlias

from pipeline.models.ensemble import ViewEnsemble, member_archs
from pipeline.models.resnet import ResNet18Classifier, resnet18_classifier, resnet18_slim
from pipeline.models.rx import (
    RX_LARGE_PADDINGS,
    RX_LITE_PADDINGS,
    RxNet,
    rx_large,
    rx_large_bn,
    rx_lite,
    rx_lite_bn,
    rx_min_input_side,
)

SingleViewModel: TypeAlias = ResNet18Classifier | RxNet
"""Every single-view model: (N, C, H, W) -> (N,) logits, with `features`, `feature_dim`,
`target_layer` (for Grad-CAM) and `arch`."""

_BUILDERS: dict[str, Callable[..., SingleViewModel]] = {
    "resnet18": resnet18_classifier,
    "resnet18_slim": resnet18_slim,
    "rx_lite": rx_lite,
    "rx_lite_bn": rx_lite_bn,
    "rx_large": rx_large,
    "rx_large_bn": rx_large_bn,
}

ARCHITECTURES: tuple[str, ...] = tuple(_BUILDERS)
"""The architectures a run trains; an ensemble of trained ones is named `ensemble:A+B`."""


def build_model(*, arch: str, in_channels: int = 1, dropout: float = 0.0) -> SingleViewModel:
    """Build a freshly initialised single-view model (no pretrained weights exist here)."""
    builder = _BUILDERS.get(arch)
    if builder is None:
        raise ValueError(f"unknown model arch {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    return builder(in_channels=in_channels, dropout=dropout)


def build_view_model(*, arch: str) -> SingleViewModel | ViewEnsemble:
    """The view model a bundle names: one architecture, or `ensemble:A+B[+...]` of several
    (freshly initialised; the caller loads the bundle's weights)."""
    members = member_archs(arch)
    if members:
        return ViewEnsemble([build_model(arch=m) for m in members], members)
    return build_model(arch=arch)


def min_input_side(arch: str) -> int:
    """Smallest input height/width in pixels that the architecture accepts."""
    members = member_archs(arch)
    if members:
        return max(min_input_side(m) for m in members)
    if arch not in _BUILDERS:
        raise ValueError(f"unknown model arch {arch!r}; valid: {', '.join(ARCHITECTURES)}")
    if arch in ("rx_lite", "rx_lite_bn"):
        return rx_min_input_side(RX_LITE_PADDINGS)
    if arch in ("rx_large", "rx_large_bn"):
        return rx_min_input_side(RX_LARGE_PADDINGS)
    # The ResNets pad every strided layer and pool adaptively, so any side works.
    return 1
