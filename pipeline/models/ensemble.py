"""An ensemble of single-view models: the mean of their logits for each view.

Members are trained separately (different architectures, or seeds) on the same input geometry
and normalisation; averaging their logits reduces the variance of the view score, which is what
limits a small model trained on a few thousand studies. The ensemble is itself a single-view
model, (N, C, H, W) -> (N,) logits, so evaluation, calibration and aggregation treat it like one;
Grad-CAM gives it the mean of its members' maps (`pipeline.gradcam`).

Its architecture name lists the members: ``ensemble:rx_large_bn+rx_lite_bn``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

ENSEMBLE_PREFIX = "ensemble:"


def ensemble_arch(member_archs: Sequence[str]) -> str:
    """The architecture name of an ensemble of `member_archs` (in order)."""
    return ENSEMBLE_PREFIX + "+".join(member_archs)


def member_archs(arch: str) -> tuple[str, ...]:
    """The members of an ensemble architecture name; () when `arch` is not an ensemble."""
    if not arch.startswith(ENSEMBLE_PREFIX):
        return ()
    members = tuple(arch[len(ENSEMBLE_PREFIX) :].split("+"))
    if len(members) < 2 or not all(members):
        raise ValueError(f"{arch!r}: an ensemble names at least two members, joined by '+'")
    return members


class ViewEnsemble(nn.Module):
    """Mean logit of its members; each member is a single-view model from `build_model`."""

    def __init__(self, members: Sequence[nn.Module], archs: Sequence[str]) -> None:
        super().__init__()
        if len(members) < 2 or len(members) != len(archs):
            raise ValueError("an ensemble needs at least two members, each with its arch")
        self.members = nn.ModuleList(members)
        self.arch = ensemble_arch(archs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([member(x) for member in self.members]).mean(dim=0)
