"""Study-level aggregation of per-view probabilities (thesis Section 6.2.2).

The label belongs to the study, and a fracture is often visible in only some of its views, so
the views' probabilities are combined into one study score. Every method returns a score whose
``>= 0.5`` decision is the method's decision at the default view threshold, and which also ranks
studies so that a study-level ROC/AUC is meaningful.

- ``alo`` (thesis "At Least One"): the study is positive when at least one view is positive.
  Its score is ``max(p)``: "some view >= t" is exactly "max(p) >= t" at *every* t, so the ALO
  decision the thesis reported and the ALO ROC curve come from one score. Noisy-OR
  (``1 - prod(1 - p)``) was rejected: it assumes the views err independently (they show the
  same wrist, so they do not) and it inflates with the number of views (four views at 0.3 give
  0.76, a positive study the thesis's ALO calls negative). ``max`` is therefore the same score
  under its plain name; both are kept so reports can use either vocabulary.
- ``majority``: the study takes the class of the majority of its views, a tie (e.g. one of two
  views) counting as positive, since missing a fracture costs more than a second look. Score:
  the fraction of views with ``p >= threshold`` plus ``1e-3 * mean(p)`` to break ties between
  studies with equal fractions; the score can exceed 1 by at most 1e-3.
- ``mean``: mean of p.
- ``learned`` (a model over the views) is computed elsewhere and passed in as study scores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

AGGREGATIONS = ("alo", "majority", "mean", "max")

# Small enough that the tie-break never changes the majority decision (below 500 views a study,
# the fraction of a minority is at least 1/(2n) below one half) nor the order of fractions.
_MAJORITY_TIE_BREAK = 1e-3


def _check_method(method: str) -> None:
    if method not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {method!r}, expected one of {AGGREGATIONS}")


def aggregate(
    view_probabilities: Sequence[float] | npt.NDArray[np.floating],
    method: str,
    *,
    threshold: float = 0.5,
) -> float:
    """One study score from its views' probabilities; ``threshold`` is the view threshold."""
    _check_method(method)
    p = np.asarray(view_probabilities, dtype=np.float64)
    if p.ndim != 1 or p.size == 0:
        raise ValueError(
            f"view probabilities must be a non-empty 1-D sequence, got shape {p.shape}"
        )
    if not (np.isfinite(p).all() and (p >= 0.0).all() and (p <= 1.0).all()):
        raise ValueError("view probabilities must lie in [0, 1]")
    if method in ("alo", "max"):
        return float(p.max())
    if method == "majority":
        return float(np.mean(p >= threshold)) + _MAJORITY_TIE_BREAK * float(p.mean())
    return float(p.mean())


def aggregate_studies(
    study_ids: Sequence[str],
    view_probabilities: npt.ArrayLike,
    method: str,
    *,
    threshold: float = 0.5,
) -> tuple[list[str], npt.NDArray[np.float64]]:
    """Sorted unique study ids and their aggregated scores, from one row per view."""
    _check_method(method)
    ids = np.asarray(list(study_ids), dtype=str)
    p = np.asarray(view_probabilities, dtype=np.float64)
    if p.shape != ids.shape:
        raise ValueError(
            f"view_probabilities must have shape {ids.shape} like study_ids, got {p.shape}"
        )
    unique, inverse = np.unique(ids, return_inverse=True)
    inverse = inverse.ravel()
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(unique.size))
    scores = np.array(
        [aggregate(views, method, threshold=threshold) for views in np.split(p[order], starts[1:])],
        dtype=np.float64,
    )
    return [str(study) for study in unique], scores
