"""Binary classification metrics in plain numpy: ROC, AUC, bootstrap intervals, operating points.

Sensitivity and specificity carry Wilson 95% intervals: on a few hundred studies they are wide
(130 fractured studies give about +-0.05 around 0.92), which decides how large a test set must be.

Convention everywhere: a sample is predicted positive when ``score >= threshold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.stats import binomtest

from train.evaluation.calibration import ECE_BINS, expected_calibration_error

HIGH_SENSITIVITY = "high_sensitivity"
HIGH_SPECIFICITY = "high_specificity"
OPERATING_POINT_NAMES = (HIGH_SENSITIVITY, HIGH_SPECIFICITY)
DEFAULT_THRESHOLD = 0.5

# Bootstrap weights are built in batches of about this many cells to bound memory.
_BOOTSTRAP_BATCH_CELLS = 2_000_000

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.intp]


def _as_labels(labels: npt.ArrayLike) -> BoolArray:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {array.shape}")
    if array.size and not np.isin(array, (0, 1)).all():
        raise ValueError("labels must be binary (0/1 or False/True)")
    return array.astype(bool)


def _as_scores(scores: npt.ArrayLike, n: int, what: str = "scores") -> FloatArray:
    array = np.asarray(scores, dtype=np.float64)
    if array.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},) like labels, got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} must be finite")
    return array


def _validated(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[BoolArray, FloatArray]:
    """Labels and scores as arrays; both classes must be present."""
    y = _as_labels(labels)
    s = _as_scores(scores, y.size)
    positives = int(y.sum())
    if positives == 0 or positives == y.size:
        raise ValueError(
            f"both classes are needed, got {positives} positives among {y.size} samples"
        )
    return y, s


def _as_weights(sample_weight: npt.ArrayLike | None, y: BoolArray) -> FloatArray:
    """Sample weights (ones when None); both classes must keep a positive total weight."""
    if sample_weight is None:
        return np.ones(y.size)
    w = _as_scores(sample_weight, y.size, "sample_weight")
    if (w < 0).any():
        raise ValueError("sample_weight must not be negative")
    if not (w[y].sum() > 0 and w[~y].sum() > 0):
        raise ValueError("sample_weight must give both classes a positive total weight")
    return w


def _roc_counts(
    y: BoolArray, s: FloatArray, w: FloatArray | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """False and true positive counts (sums of weights, if given) at +inf and then at every
    distinct score, descending."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    w_sorted = np.ones(y.size) if w is None else w[order]
    # Last index of every run of equal scores: the curve only has a point after a whole tie.
    ends = np.append(np.flatnonzero(np.diff(s_sorted) != 0), s_sorted.size - 1)
    tp = np.concatenate(([0.0], np.cumsum(w_sorted * y[order])[ends]))
    fp = np.concatenate(([0.0], np.cumsum(w_sorted * ~y[order])[ends]))
    thresholds = np.concatenate(([np.inf], s_sorted[ends]))
    return fp, tp, thresholds


def roc_curve(
    labels: npt.ArrayLike, scores: npt.ArrayLike, *, sample_weight: npt.ArrayLike | None = None
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """ROC curve: (fpr, tpr, thresholds), thresholds descending.

    The first point is (0, 0) at threshold +inf; then one point per distinct score, so tied
    scores move the curve diagonally instead of in an order-dependent staircase. With
    ``sample_weight`` the rates are weighted fractions of each class.
    """
    y, s = _validated(labels, scores)
    fp, tp, thresholds = _roc_counts(y, s, _as_weights(sample_weight, y))
    return fp / fp[-1], tp / tp[-1], thresholds


def _weighted_auc(
    weights: FloatArray, positive: BoolArray, value_index: IntArray, n_values: int
) -> FloatArray:
    """Mann-Whitney AUC for each row of sample weights (ties count 1/2); NaN for one-class rows.

    ``value_index`` maps every sample to the rank of its score among the distinct scores.
    """
    rows = weights.shape[0]
    cells = (np.arange(rows)[:, None] * n_values + value_index[None, :]).ravel()
    size = rows * n_values
    pos = np.bincount(cells, (weights * positive).ravel(), minlength=size).reshape(rows, n_values)
    neg = np.bincount(cells, (weights * ~positive).ravel(), minlength=size).reshape(rows, n_values)
    negatives_below = np.cumsum(neg, axis=1) - neg
    wins = (pos * (negatives_below + 0.5 * neg)).sum(axis=1)
    pairs = pos.sum(axis=1) * neg.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc: FloatArray = np.where(pairs > 0, wins / pairs, np.nan)
    return auc


def roc_auc(
    labels: npt.ArrayLike, scores: npt.ArrayLike, *, sample_weight: npt.ArrayLike | None = None
) -> float:
    """AUC as P(positive scores higher) + P(tie) / 2 (Mann-Whitney), each pair weighted by the
    product of its samples' weights when ``sample_weight`` is given; ValueError if one class."""
    y, s = _validated(labels, scores)
    weights = _as_weights(sample_weight, y)[None, :]
    values, value_index = np.unique(s, return_inverse=True)
    return float(_weighted_auc(weights, y, value_index.ravel(), values.size)[0])


def bootstrap_auc_ci(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    n_boot: int = 2000,
    level: float = 0.95,
    seed: int = 0,
    groups: npt.ArrayLike | None = None,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the AUC.

    With ``groups`` (e.g. study ids of views) whole groups are resampled, because samples of
    one group are correlated and resampling them one by one understates the uncertainty.
    Resamples holding a single class are skipped.
    """
    y, s = _validated(labels, scores)
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if groups is None:
        unit_of_sample = np.arange(y.size)
        n_units = y.size
    else:
        group_array = np.asarray(groups)
        if group_array.shape != y.shape:
            raise ValueError(
                f"groups must have shape {y.shape} like labels, got {group_array.shape}"
            )
        units, inverse = np.unique(group_array, return_inverse=True)
        unit_of_sample = inverse.ravel()
        n_units = units.size
    values, value_index = np.unique(s, return_inverse=True)
    value_index = value_index.ravel()

    rng = np.random.default_rng(seed)
    batch = max(1, min(n_boot, _BOOTSTRAP_BATCH_CELLS // max(y.size, n_units)))
    aucs: list[FloatArray] = []
    done = 0
    while done < n_boot:
        rows = min(batch, n_boot - done)
        draws = rng.integers(0, n_units, size=(rows, n_units))
        offsets = np.arange(rows)[:, None] * n_units
        counts = np.bincount((draws + offsets).ravel(), minlength=rows * n_units)
        weights = counts.reshape(rows, n_units)[:, unit_of_sample].astype(np.float64)
        aucs.append(_weighted_auc(weights, y, value_index, values.size))
        done += rows
    all_aucs = np.concatenate(aucs)
    all_aucs = all_aucs[~np.isnan(all_aucs)]
    if all_aucs.size == 0:
        raise ValueError("every bootstrap resample held a single class")
    alpha = (1.0 - level) / 2.0
    low, high = np.quantile(all_aucs, [alpha, 1.0 - alpha])
    return float(low), float(high)


def wilson_interval(hits: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval of the proportion ``hits / n`` (``n`` > 0)."""
    if n <= 0 or not 0 <= hits <= n:
        raise ValueError(f"need 0 <= hits <= n and n > 0, got hits={hits}, n={n}")
    interval = binomtest(hits, n).proportion_ci(confidence_level=level, method="wilson")
    return float(interval.low), float(interval.high)


@dataclass(frozen=True)
class OperatingPoint:
    """A named decision threshold and what it achieves on some data."""

    name: str
    threshold: float
    sensitivity: float
    specificity: float
    sensitivity_ci95: tuple[float, float]
    specificity_ci95: tuple[float, float]

    def to_json(self) -> dict[str, Any]:
        """Threshold, sensitivity, specificity and their Wilson 95% intervals (the name is the
        key outside)."""
        return {
            "threshold": self.threshold,
            "sensitivity": self.sensitivity,
            "specificity": self.specificity,
            "sensitivity_ci95": list(self.sensitivity_ci95),
            "specificity_ci95": list(self.specificity_ci95),
        }


def format_rates(point: dict[str, Any]) -> str:
    """ "sens [CI] / spec [CI]" of an operating point's JSON (``OperatingPoint.to_json``);
    without intervals for reports recorded before they existed."""
    parts = []
    for rate in ("sensitivity", "specificity"):
        text = f"{point[rate]:.3f}"
        if f"{rate}_ci95" in point:
            low, high = point[f"{rate}_ci95"]
            text += f" [{low:.2f}, {high:.2f}]"
        parts.append(text)
    return " / ".join(parts)


def _check_target(target: float) -> None:
    if not 0.0 < target <= 1.0:
        raise ValueError(f"target must be in (0, 1], got {target}")


def threshold_for_sensitivity(labels: npt.ArrayLike, scores: npt.ArrayLike, target: float) -> float:
    """The highest threshold whose sensitivity is at least ``target`` (a positive's score)."""
    _check_target(target)
    y, s = _validated(labels, scores)
    _, tp, thresholds = _roc_counts(y, s)
    # Sensitivity only grows as the threshold falls, so the first hit is the highest threshold.
    first = int(np.argmax(tp / tp[-1] >= target))
    return float(thresholds[first])


def threshold_for_specificity(labels: npt.ArrayLike, scores: npt.ArrayLike, target: float) -> float:
    """The lowest threshold, among the observed scores, whose specificity is at least ``target``.

    Every threshold in (previous score, this score] classifies the data alike; the observed score
    is returned. When only "everything negative" reaches the target, the result is the smallest
    float above the highest score (not +inf, so that it stays JSON-serialisable).
    """
    _check_target(target)
    y, s = _validated(labels, scores)
    fp, _, thresholds = _roc_counts(y, s)
    # Specificity only falls as the threshold falls: take the last threshold that reaches it.
    last = int(np.flatnonzero((fp[-1] - fp) / fp[-1] >= target)[-1])
    if last == 0:
        return float(np.nextafter(s.max(), np.inf))
    return float(thresholds[last])


def operating_point(
    labels: npt.ArrayLike, scores: npt.ArrayLike, threshold: float, name: str
) -> OperatingPoint:
    """Sensitivity and specificity of ``scores >= threshold``."""
    y, s = _validated(labels, scores)
    predicted = s >= threshold
    found, cleared = int(np.count_nonzero(predicted & y)), int(np.count_nonzero(~predicted & ~y))
    positives, negatives = int(y.sum()), int((~y).sum())
    return OperatingPoint(
        name=name,
        threshold=float(threshold),
        sensitivity=found / positives,
        specificity=cleared / negatives,
        sensitivity_ci95=wilson_interval(found, positives),
        specificity_ci95=wilson_interval(cleared, negatives),
    )


def confusion(labels: npt.ArrayLike, predictions: npt.ArrayLike) -> list[list[int]]:
    """Confusion matrix ``[[tn, fp], [fn, tp]]`` (rows: truth, columns: prediction)."""
    y = _as_labels(labels)
    p = np.asarray(predictions)
    if p.shape != y.shape:
        raise ValueError(f"predictions must have shape {y.shape} like labels, got {p.shape}")
    p = _as_labels(p)
    return [
        [int(np.count_nonzero(~y & ~p)), int(np.count_nonzero(~y & p))],
        [int(np.count_nonzero(y & ~p)), int(np.count_nonzero(y & p))],
    ]


@dataclass(frozen=True)
class LevelReport:
    """Metrics of one level (instance or study) of one aggregation."""

    n: int
    positives: int
    auc: float
    auc_ci95: tuple[float, float]
    accuracy: float
    balanced_accuracy: float
    confusion: list[list[int]]
    operating_points: dict[str, OperatingPoint]
    ece: float
    """Expected calibration error of the scores over 10 equal-width bins of [0, 1]."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types, with exactly the documented keys."""
        return {
            "n": self.n,
            "positives": self.positives,
            "auc": self.auc,
            "auc_ci95": [self.auc_ci95[0], self.auc_ci95[1]],
            "accuracy": self.accuracy,
            "balanced_accuracy": self.balanced_accuracy,
            "confusion": [list(row) for row in self.confusion],
            "operating_points": {
                name: point.to_json() for name, point in self.operating_points.items()
            },
            "ece": self.ece,
        }


def level_report(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    thresholds: dict[str, float],
    groups: npt.ArrayLike | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> LevelReport:
    """Report of one level of calibrated probabilities; accuracy and confusion at 0.5, and the
    expected calibration error over 10 equal-width bins (`calibration.ECE_BINS`).

    ``thresholds`` maps "high_sensitivity" and "high_specificity" to thresholds fixed beforehand
    on validation data: choosing them on the data being reported would flatter the result.
    """
    if set(thresholds) != set(OPERATING_POINT_NAMES):
        raise ValueError(
            f"thresholds must have exactly the keys {list(OPERATING_POINT_NAMES)}, "
            f"got {sorted(thresholds)}"
        )
    y, s = _validated(labels, scores)
    predicted = s >= DEFAULT_THRESHOLD
    sensitivity = float(predicted[y].mean())
    specificity = float((~predicted[~y]).mean())
    return LevelReport(
        n=int(y.size),
        positives=int(y.sum()),
        auc=roc_auc(y, s),
        auc_ci95=bootstrap_auc_ci(y, s, n_boot=n_boot, seed=seed, groups=groups),
        accuracy=float((predicted == y).mean()),
        balanced_accuracy=(sensitivity + specificity) / 2.0,
        confusion=confusion(y, predicted),
        operating_points={
            name: operating_point(y, s, thresholds[name], name) for name in OPERATING_POINT_NAMES
        },
        ece=expected_calibration_error(s, y, bins=ECE_BINS),
    )
