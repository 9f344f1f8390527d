"""The thesis's class balancing (Section 4.3, Equation 4.3) as a sampler.

Each sample is drawn with probability proportional to the size of the *other* class,
P(s) = n_opposite(s) / (2 n_b n_nb), without replacement, 2 x n_minority samples per epoch.
The first draws are balanced; as the minority is used up without replacement its remaining mass
shrinks faster, so over a whole epoch about 40% of the samples are minority (at 31% prevalence)
rather than the thesis's "approximately n and n", which holds only with replacement.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class BalancedSampler(Sampler[int]):
    """Equation 4.3 sampling; with `world_size` > 1 each rank takes its own slice of the draw."""

    def __init__(
        self,
        labels: Sequence[int],
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.labels = torch.as_tensor(list(labels), dtype=torch.long)
        positives = int(self.labels.sum())
        negatives = len(self.labels) - positives
        if positives == 0 or negatives == 0:
            raise ValueError("class balancing needs both classes in the training set")
        opposite = torch.where(self.labels == 1, negatives, positives).double()
        self.weights = opposite / (2.0 * positives * negatives)
        self.per_epoch = 2 * min(positives, negatives)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Draw a new sample for each epoch (the same on every rank)."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        drawn = torch.multinomial(
            self.weights, self.per_epoch, replacement=False, generator=generator
        )
        usable = (len(drawn) // self.world_size) * self.world_size
        return iter(drawn[self.rank : usable : self.world_size].tolist())

    def __len__(self) -> int:
        return self.per_epoch // self.world_size
