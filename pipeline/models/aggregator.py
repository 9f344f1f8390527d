"""Study-level aggregator (thesis Section 5.3): a Multi-View CNN (MVCNN) over a study's views.

A shared single-view trunk turns every real view into a feature vector, a max over the views
("view pooling") gives one vector per study whatever its number of views, and a small MLP gives
one logit per study.

Padded views never reach the trunk: only the views selected by the mask are run through it. Beside
saving work this keeps BatchNorm's training-mode batch statistics free of padding, which masking
after the trunk alone would not.
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.models.registry import ARCHITECTURES, SingleViewModel, build_model


class MultiViewAggregator(nn.Module):
    """MVCNN: shared trunk features -> masked max over views -> MLP -> one logit per study."""

    def __init__(self, trunk: SingleViewModel, *, freeze_trunk: bool = False, hidden: int = 128):
        super().__init__()
        self.trunk = trunk
        self.freeze_trunk = freeze_trunk
        self.feature_dim: int = trunk.feature_dim
        self.classifier = nn.Sequential(
            nn.Linear(self.feature_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 1),
        )
        if freeze_trunk:
            for parameter in self.trunk.parameters():
                parameter.requires_grad_(False)
            self.trunk.eval()

    def train(self, mode: bool = True) -> MultiViewAggregator:
        """Set training mode; a frozen trunk stays in eval mode so its BatchNorm stats hold."""
        super().train(mode)
        if self.freeze_trunk:
            self.trunk.eval()
        return self

    def pooled_features(self, views: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, V, C, H, W) views and (N, V) bool mask -> (N, feature_dim) view-pooled features."""
        if views.dim() != 5:
            raise ValueError(f"views must be (N, V, C, H, W), got shape {tuple(views.shape)}")
        if mask.shape != views.shape[:2]:
            raise ValueError(
                f"mask shape {tuple(mask.shape)} does not match views' (N, V) "
                f"{tuple(views.shape[:2])}"
            )
        mask = mask.to(device=views.device, dtype=torch.bool)
        if not bool(mask.any(dim=1).all()):
            raise ValueError("every study needs at least one real view (a mask row is all False)")
        real_views = views[mask]
        if self.freeze_trunk:
            with torch.no_grad():
                real_features = self.trunk.features(real_views)
        else:
            real_features = self.trunk.features(real_views)
        n, v = mask.shape
        per_view = real_features.new_full((n, v, self.feature_dim), float("-inf"))
        per_view = per_view.index_put((mask,), real_features)
        return per_view.amax(dim=1)

    def forward(self, views: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, V, C, H, W) views and (N, V) bool mask (True = real view) -> (N,) logits."""
        logits: torch.Tensor = self.classifier(self.pooled_features(views, mask))
        return logits.squeeze(-1)


def build_aggregator(
    *,
    trunk_arch: str,
    trunk: nn.Module | None = None,
    freeze_trunk: bool = False,
    hidden: int = 128,
) -> MultiViewAggregator:
    """Build the MVCNN aggregator on a `trunk_arch` trunk.

    Pass a trained single-view model as `trunk` for transfer learning (its `features` are used,
    its classifier is ignored); `freeze_trunk=True` trains only the study classifier.
    """
    if trunk_arch not in ARCHITECTURES:
        raise ValueError(f"unknown trunk arch {trunk_arch!r}; valid: {', '.join(ARCHITECTURES)}")
    if hidden < 1:
        raise ValueError(f"hidden must be >= 1, got {hidden}")
    if trunk is None:
        trunk = build_model(arch=trunk_arch)
    if not isinstance(trunk, SingleViewModel):
        raise TypeError(f"trunk must be a model from build_model, got {type(trunk).__name__}")
    if trunk.arch != trunk_arch:
        raise ValueError(f"trunk is a {trunk.arch!r} model but trunk_arch is {trunk_arch!r}")
    return MultiViewAggregator(trunk, freeze_trunk=freeze_trunk, hidden=hidden)
