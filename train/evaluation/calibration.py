"""Temperature scaling (Guo et al. 2017): one scalar T fitted on validation logits."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize_scalar

TEMPERATURE_BOUNDS = (0.05, 20.0)
ECE_BINS = 10
"""Equal-width bins of [0, 1] for the expected calibration error everywhere it is reported."""

FloatArray = npt.NDArray[np.float64]


def _as_logits_and_labels(
    logits: npt.ArrayLike, labels: npt.ArrayLike
) -> tuple[FloatArray, FloatArray]:
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels)
    if z.ndim != 1 or z.size == 0 or y.shape != z.shape:
        raise ValueError(
            f"logits and labels must be non-empty 1-D of one shape, got {z.shape}, {y.shape}"
        )
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be binary (0/1 or False/True)")
    return z, y.astype(np.float64)


def _nll(z: FloatArray, y: FloatArray) -> float:
    """Mean binary cross-entropy of sigmoid(z), written with logaddexp so it never overflows."""
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


def fit_temperature(logits: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """The T in ``TEMPERATURE_BOUNDS`` minimising the NLL of ``sigmoid(logits / T)``."""
    z, y = _as_logits_and_labels(logits, labels)
    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    # Searching log T makes the search scale-free: 0.1 -> 0.2 weighs like 5 -> 10.
    result = minimize_scalar(
        lambda log_t: _nll(z / math.exp(log_t), y),
        bounds=(low, high),
        method="bounded",
        options={"xatol": 1e-6},
    )
    return float(math.exp(float(result.x)))


def apply_temperature(logits: npt.ArrayLike, temperature: float) -> FloatArray:
    """``sigmoid(logits / temperature)``, accurate for large logits of either sign."""
    if not (math.isfinite(temperature) and temperature > 0.0):
        raise ValueError(f"temperature must be positive and finite, got {temperature}")
    z = np.asarray(logits, dtype=np.float64) / temperature
    probabilities: FloatArray = np.exp(-np.logaddexp(0.0, -z))
    return probabilities


def expected_calibration_error(
    probabilities: npt.ArrayLike, labels: npt.ArrayLike, *, bins: int = ECE_BINS
) -> float:
    """ECE of the positive-class probability over ``bins`` equal-width bins of [0, 1].

    Sum over bins of (bin share) * |observed positive rate - mean probability|; bin k holds
    k/bins <= p < (k+1)/bins and the last bin is closed so that p = 1 is counted. `evaluate`
    reports it (key `ece`) for a bundle's calibrated study probabilities: 0 when, in every bin,
    the share of fractured studies equals the mean probability. Sparse bins make it noisy on
    small sets, and it tends to overstate the error there.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels)
    if p.ndim != 1 or p.size == 0 or y.shape != p.shape:
        raise ValueError(
            f"probabilities and labels must be non-empty 1-D of one shape, got {p.shape}, {y.shape}"
        )
    if not (np.isfinite(p).all() and (p >= 0.0).all() and (p <= 1.0).all()):
        raise ValueError("probabilities must lie in [0, 1]")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be binary (0/1 or False/True)")
    index = np.minimum((p * bins).astype(np.intp), bins - 1)
    gap = np.bincount(index, weights=y.astype(np.float64) - p, minlength=bins)
    return float(np.abs(gap).sum() / p.size)
