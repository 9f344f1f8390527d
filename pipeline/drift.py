"""What a model's outputs look like on data it was validated on, and how far production is.

A bundle's `drift_reference` (in `model.json`) holds the rate of each level and the distribution
of the calibrated study probability over fixed bins, on the bundle's validation (or held-out)
studies. The node counts the same figures per day and compares them (`dicomnode.drift`). Pure:
numpy and scipy only, no torch, so the node's main process can use it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

BINS = 20
"""Equal-width bins of the study probability on [0, 1]."""
LEVELS = ("likely", "possible", "negative")
PSI_LIMIT = 0.25
"""A population stability index above this is a shift (the usual rule of thumb)."""
RATE_DIFFERENCE = 0.10
"""A level's rate may differ from the reference by this much, or 3 binomial SEs if more."""
RATE_SE = 3.0
MIN_STUDIES = 30
"""Fewer analysed studies in a window are not judged: their figures are noise."""
MIN_GROUP_SHARE = 0.05
"""The PSI merges adjacent bins until each holds this share of the reference (see `groups`)."""
NOISE_QUANTILE = 0.999


def bin_index(probability: float) -> int:
    """The bin of a probability (1.0 falls in the last bin)."""
    return min(BINS - 1, max(0, math.floor(probability * BINS)))


def bin_counts(probabilities: Sequence[float]) -> list[int]:
    """How many of `probabilities` fall in each of the `BINS` bins."""
    counts = [0] * BINS
    for p in probabilities:
        counts[bin_index(float(p))] += 1
    return counts


def level_of(probability: float, thresholds: Mapping[str, float]) -> str:
    """The level the node reports for a probability (as `ModelBundle.level`)."""
    if probability >= thresholds["likely"]:
        return "likely"
    if probability >= thresholds["possible"]:
        return "possible"
    return "negative"


def reference_from_probabilities(
    probabilities: Sequence[float], thresholds: Mapping[str, float], *, source: str
) -> dict[str, Any]:
    """The `drift_reference` of `model.json` from calibrated study probabilities of validation
    studies; `source` says which data (kept in the reference)."""
    if not probabilities:
        raise ValueError("a drift reference needs at least one study probability")
    n = len(probabilities)
    levels = [level_of(float(p), thresholds) for p in probabilities]
    return {
        "source": source,
        "n_studies": n,
        "level_rates": {level: levels.count(level) / n for level in LEVELS},
        "bin_edges": [i / BINS for i in range(BINS + 1)],
        "bin_fractions": [c / n for c in bin_counts(probabilities)],
        "band": {
            "psi": PSI_LIMIT,
            "rate_difference": RATE_DIFFERENCE,
            "rate_se": RATE_SE,
            "min_studies": MIN_STUDIES,
        },
    }


@dataclass(frozen=True)
class DriftReference:
    """A bundle's `drift_reference`, read and checked."""

    source: str
    n_studies: int
    level_rates: dict[str, float]
    bin_fractions: tuple[float, ...]
    psi_limit: float = PSI_LIMIT
    rate_difference: float = RATE_DIFFERENCE
    rate_se: float = RATE_SE
    min_studies: int = MIN_STUDIES

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DriftReference:
        """Read `model.json`'s `drift_reference`; ValueError says what is wrong."""
        try:
            fractions = tuple(float(f) for f in raw["bin_fractions"])
            rates = {level: float(raw["level_rates"][level]) for level in LEVELS}
            band = raw.get("band", {})
            reference = cls(
                source=str(raw.get("source", "")),
                n_studies=int(raw["n_studies"]),
                level_rates=rates,
                bin_fractions=fractions,
                psi_limit=float(band.get("psi", PSI_LIMIT)),
                rate_difference=float(band.get("rate_difference", RATE_DIFFERENCE)),
                rate_se=float(band.get("rate_se", RATE_SE)),
                min_studies=int(band.get("min_studies", MIN_STUDIES)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"drift_reference is invalid ({type(exc).__name__}: {exc})") from exc
        if len(fractions) != BINS or abs(sum(fractions) - 1.0) > 1e-6 or reference.n_studies < 1:
            raise ValueError(f"drift_reference needs {BINS} bin fractions summing to 1 and "
                             "n_studies >= 1")  # fmt: skip
        return reference


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index: sum over bins of (actual - expected) * ln(actual / expected).
    Both are fractions summing to 1, none zero (smooth them first)."""
    e, a = np.asarray(expected, dtype=np.float64), np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or (e <= 0).any() or (a <= 0).any():
        raise ValueError("psi needs two distributions of the same bins, without empty bins")
    return float(np.sum((a - e) * np.log(a / e)))


def groups(reference: Sequence[float], min_share: float = MIN_GROUP_SHARE) -> list[list[int]]:
    """Adjacent bins merged, left to right, until each group holds `min_share` of the reference
    (a short remainder joins the last group). Validation probabilities crowd near 0 and 1: bins
    the reference leaves almost empty would make the PSI of a few studies explode."""
    merged: list[list[int]] = []
    current: list[int] = []
    share = 0.0
    for i, fraction in enumerate(reference):
        current.append(i)
        share += fraction
        if share >= min_share:
            merged.append(current)
            current, share = [], 0.0
    if current:
        if merged:
            merged[-1].extend(current)
        else:
            merged.append(current)
    return merged


def grouped_psi(reference: DriftReference, counts: Sequence[int]) -> tuple[float, float]:
    """The PSI of observed bin `counts` against the reference, and the limit it is judged by:
    the band's PSI, or what chance alone exceeds once in 1/(1 - NOISE_QUANTILE) for this many
    studies, whichever is larger (PSI ~ chi2(groups - 1) * (1/n + 1/N) without drift)."""
    merged = groups(reference.bin_fractions)
    n = sum(counts)
    observed = np.array([sum(counts[i] for i in g) for g in merged], dtype=np.float64)
    expected = np.array([sum(reference.bin_fractions[i] for i in g) for g in merged])
    # Half a study per group keeps a group nobody fell in finite (Jeffreys); the reference's
    # groups each hold at least MIN_GROUP_SHARE of it (but for a degenerate reference).
    actual = (observed + 0.5) / (n + 0.5 * len(merged))
    expected = np.maximum(expected, 0.5 / reference.n_studies)
    expected = expected / expected.sum()
    value = psi(expected.tolist(), actual.tolist())
    chance = stats.chi2.ppf(NOISE_QUANTILE, max(1, len(merged) - 1))
    noise = float(chance) * (1.0 / max(n, 1) + 1.0 / reference.n_studies)
    return value, max(reference.psi_limit, noise)


def rate_limit(reference: DriftReference, level: str, n: int) -> float:
    """How far a level's rate over `n` studies may be from the reference's."""
    p = reference.level_rates[level]
    return max(reference.rate_difference, reference.rate_se * math.sqrt(p * (1 - p) / max(n, 1)))
