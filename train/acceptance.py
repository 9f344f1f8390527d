"""`accept`: does a bundle perform at this site as its model card says? (site acceptance)

Every labelled study of the hospital's archive is scored the way the node scores it
(`read_radiograph` on each file, then `ModelBundle.predict`). The local figures, each with a
95% interval, are set against the card's external-test figures and intervals:

- study AUC (percentile bootstrap over studies);
- sensitivity and specificity at "possible" and at "likely" (Wilson);
- ECE, the expected calibration error of the study probability over 10 bins (bootstrap);
- the share of studies the node did not analyse (no readable wrist view; Wilson).

The rule (RULE below): a metric FAILS only when the local interval lies wholly on the worse
side of the card's interval; overlapping intervals, or a local figure better than the card's,
PASS. A pass thus means "not shown to be worse", which a small local set says easily: that is
why at least `min_per_class` analysed fractured and intact studies are required, else the
acceptance fails as "insufficient local data". The card records no ECE or not-analysed figure
for older bundles; then a fixed limit stands in for the card's interval ([0, limit]).

Not-analysed studies are left out of the other metrics, as they were out of the card's test
set; the not-analysed rate is judged on its own.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom

from pipeline.aggregation import AGGREGATIONS, aggregate
from pipeline.dicomio import DicomImageError, read_radiograph
from pipeline.inference import BundleInfo, ModelBundle, StudyPrediction
from train.evaluation.calibration import ECE_BINS, apply_temperature, expected_calibration_error
from train.evaluation.metrics import (
    HIGH_SENSITIVITY,
    HIGH_SPECIFICITY,
    bootstrap_auc_ci,
    operating_point,
    roc_auc,
    wilson_interval,
)

MIN_PER_CLASS = 50
MAX_ECE = 0.10
MAX_NOT_ANALYSED = 0.05
RULE = (
    "a metric FAILS only when its local 95% interval lies wholly on the worse side of the"
    " card's 95% interval (AUC, sensitivity, specificity: local upper bound below the card's"
    " lower bound; ECE, not-analysed rate: local lower bound above the card's upper bound);"
    " otherwise it PASSES. A pass means 'not shown to be worse', not 'shown to be as good'."
)
LEVEL_POINTS = {"possible": HIGH_SENSITIVITY, "likely": HIGH_SPECIFICITY}


@dataclass(frozen=True)
class Metric:
    """One figure of the acceptance table."""

    key: str
    title: str
    higher_is_better: bool


METRICS = (
    Metric("auc", "study AUC", True),
    Metric("sensitivity_possible", "sensitivity at possible", True),
    Metric("specificity_possible", "specificity at possible", True),
    Metric("sensitivity_likely", "sensitivity at likely", True),
    Metric("specificity_likely", "specificity at likely", True),
    Metric("ece", f"ECE ({ECE_BINS} bins)", False),
    Metric("not_analysed", "not-analysed rate", False),
)


@dataclass(frozen=True)
class Figure:
    """A point estimate and its 95% interval; None where it cannot be computed."""

    value: float | None
    ci95: tuple[float, float] | None
    source: str = ""
    """For the card's side: 'card' or 'limit' (no card figure, a fixed limit stands in)."""


@dataclass(frozen=True)
class StudyScore:
    """One labelled study as the node scored it."""

    study_uid: str
    label: int
    analysed: bool
    probability: float
    """Calibrated study probability (0 when not analysed)."""
    raw_logit: float
    """The study logit before the study temperature (0 when not analysed)."""
    view_logits: tuple[float, ...]
    level: str
    reason: str


@dataclass(frozen=True)
class Check:
    """One metric: local and card figures, and the verdict."""

    metric: Metric
    local: Figure
    card: Figure
    verdict: str
    """'PASS', 'FAIL', 'INSUFFICIENT' (too few local studies) or 'NO CARD FIGURE'."""


@dataclass(frozen=True)
class AcceptanceReport:
    """The outcome of an acceptance run on one set of studies."""

    studies: int
    analysed: int
    positives: int
    negatives: int
    min_per_class: int
    checks: tuple[Check, ...]
    insufficient: str
    """Why the local data are too few ('' when enough)."""

    @property
    def passed(self) -> bool:
        """Whether every metric passed on enough data."""
        return not self.insufficient and all(c.verdict == "PASS" for c in self.checks)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types."""
        return {
            "studies": self.studies,
            "analysed": self.analysed,
            "positives": self.positives,
            "negatives": self.negatives,
            "min_per_class": self.min_per_class,
            "rule": RULE,
            "insufficient": self.insufficient or None,
            "passed": self.passed,
            "metrics": [
                {
                    "metric": c.metric.key,
                    "title": c.metric.title,
                    "local": _figure_json(c.local),
                    "card": _figure_json(c.card),
                    "verdict": c.verdict,
                }
                for c in self.checks
            ],
        }


def passes(local: Figure, card: Figure, *, higher_is_better: bool) -> bool:
    """The acceptance rule (RULE) for one metric; both figures need intervals."""
    if local.ci95 is None or card.ci95 is None:
        raise ValueError("both figures need a 95% interval")
    if higher_is_better:
        return local.ci95[1] >= card.ci95[0]
    return local.ci95[0] <= card.ci95[1]


def card_figures(
    info: BundleInfo, *, max_ece: float = MAX_ECE, max_not_analysed: float = MAX_NOT_ANALYSED
) -> dict[str, Figure]:
    """The card's external-test figures of the bundle's aggregation, by metric key."""
    external = info.metrics.get("external_test", {})
    selected = external.get("selected", info.aggregation)
    study = external.get("aggregations", {}).get(selected, {}).get("study", {})
    points = study.get("operating_points", {})
    figures = {"auc": _recorded(study, "auc", "auc_ci95")}
    for level, point in LEVEL_POINTS.items():
        for rate in ("sensitivity", "specificity"):
            figures[f"{rate}_{level}"] = _recorded(points.get(point, {}), rate, f"{rate}_ci95")
    for key, limit in (("ece", max_ece), ("not_analysed", max_not_analysed)):
        recorded = _recorded(study, key, f"{key}_ci95")
        figures[key] = (
            recorded if recorded.value is not None else Figure(limit, (0.0, limit), "limit")
        )
    return figures


def _recorded(record: Mapping[str, Any], key: str, ci_key: str) -> Figure:
    value = record.get(key)
    if value is None:
        return Figure(None, None, "card")
    low, high = record.get(ci_key) or (value, value)
    return Figure(float(value), (float(low), float(high)), "card")


def local_figures(
    labels: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    thresholds: Mapping[str, float],
    *,
    not_analysed: int,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Figure]:
    """The local figures of analysed studies' labels and calibrated probabilities at the
    bundle's `thresholds` ('possible', 'likely'); `not_analysed` more studies were refused."""
    y = np.asarray(labels, dtype=np.int64)
    p = np.asarray(probabilities, dtype=np.float64)
    total = y.size + not_analysed
    none = Figure(None, None)
    figures: dict[str, Figure] = {
        "not_analysed": Figure(not_analysed / total, wilson_interval(not_analysed, total))
        if total
        else none
    }
    figures["ece"] = _ece_figure(y, p, n_boot, seed) if y.size else none
    both = 0 < int(y.sum()) < y.size
    figures["auc"] = (
        Figure(roc_auc(y, p), bootstrap_auc_ci(y, p, n_boot=n_boot, seed=seed)) if both else none
    )
    for level, threshold in thresholds.items():
        found = operating_point(y, p, threshold, level) if both else None
        for rate in ("sensitivity", "specificity"):
            figures[f"{rate}_{level}"] = (
                Figure(getattr(found, rate), getattr(found, f"{rate}_ci95")) if found else none
            )
    return figures


def _ece_figure(
    y: npt.NDArray[np.int64], p: npt.NDArray[np.float64], n_boot: int, seed: int
) -> Figure:
    """ECE with a percentile bootstrap interval over studies."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, y.size, size=(n_boot, y.size))
    resampled = [expected_calibration_error(p[d], y[d]) for d in draws]
    low, high = np.quantile(resampled, [0.025, 0.975])
    return Figure(expected_calibration_error(p, y), (float(low), float(high)))


def assess(
    labels: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    thresholds: Mapping[str, float],
    card: Mapping[str, Figure],
    *,
    not_analysed: int,
    min_per_class: int = MIN_PER_CLASS,
    n_boot: int = 2000,
    seed: int = 0,
) -> AcceptanceReport:
    """Compare local figures with the card's, metric by metric (see RULE)."""
    y = np.asarray(labels, dtype=np.int64)
    positives, negatives = int(y.sum()), int(y.size - y.sum())
    local = local_figures(
        y, probabilities, thresholds, not_analysed=not_analysed, n_boot=n_boot, seed=seed
    )
    insufficient = ""
    if min(positives, negatives) < min_per_class:
        insufficient = (
            f"insufficient local data: {positives} fractured and {negatives} intact analysed"
            f" studies, at least {min_per_class} of each are needed"
        )
    checks = []
    for metric in METRICS:
        mine, theirs = local[metric.key], card[metric.key]
        if theirs.ci95 is None:
            verdict = "NO CARD FIGURE"
        elif insufficient or mine.ci95 is None:
            verdict = "INSUFFICIENT"
        else:
            ok = passes(mine, theirs, higher_is_better=metric.higher_is_better)
            verdict = "PASS" if ok else "FAIL"
        checks.append(Check(metric, mine, theirs, verdict))
    return AcceptanceReport(
        studies=int(y.size) + not_analysed,
        analysed=int(y.size),
        positives=positives,
        negatives=negatives,
        min_per_class=min_per_class,
        checks=tuple(checks),
        insufficient=insufficient,
    )


def assess_scores(
    scores: Sequence[StudyScore],
    info: BundleInfo,
    card: Mapping[str, Figure],
    *,
    study_temperature: float | None = None,
    thresholds: Mapping[str, float] | None = None,
    min_per_class: int = MIN_PER_CLASS,
    n_boot: int = 2000,
    seed: int = 0,
) -> AcceptanceReport:
    """`assess` on scored studies, with the bundle's calibration or the one given."""
    analysed = [s for s in scores if s.analysed]
    labels = [s.label for s in analysed]
    if study_temperature is None:
        probabilities = np.array([s.probability for s in analysed], dtype=np.float64)
    else:
        logits = np.array([s.raw_logit for s in analysed], dtype=np.float64)
        probabilities = apply_temperature(logits, study_temperature)
    return assess(
        labels,
        probabilities,
        thresholds or info.thresholds,
        card,
        not_analysed=len(scores) - len(analysed),
        min_per_class=min_per_class,
        n_boot=n_boot,
        seed=seed,
    )


def group_studies(archive: Path) -> tuple[dict[str, list[Path]], int]:
    """The archive's files (searched recursively) by Study Instance UID, from headers alone;
    and how many files had no readable header."""
    studies: dict[str, list[Path]] = {}
    unreadable = 0
    for path in sorted(archive.rglob("*")):
        if not path.is_file() or path.suffix.lower() not in (".dcm", ""):
            continue
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["StudyInstanceUID"])
            studies.setdefault(str(ds.StudyInstanceUID), []).append(path)
        except Exception:  # a broken header can raise almost anything
            unreadable += 1
    return studies, unreadable


def score_studies(
    bundle: ModelBundle,
    studies: Mapping[str, Sequence[Path]],
    labels: Mapping[str, int],
    *,
    progress: Callable[[int], None] | None = None,
) -> list[StudyScore]:
    """Score every labelled study of `studies` as the node would (no heat maps)."""
    scores = []
    for uid in sorted(set(studies) & set(labels)):
        radiographs = []
        for path in studies[uid]:
            try:
                radiographs.append(read_radiograph(path))
            except (DicomImageError, OSError):
                continue  # the node stores such an instance but cannot analyse it either
        if not radiographs:
            scores.append(
                StudyScore(uid, labels[uid], False, 0.0, 0.0, (), "negative", "no readable image")
            )
        else:
            prediction = bundle.predict(radiographs, heatmaps=False)
            scores.append(_study_score(uid, labels[uid], bundle.info, prediction))
        if progress:
            progress(1)
    return scores


def _study_score(uid: str, label: int, info: BundleInfo, prediction: StudyPrediction) -> StudyScore:
    if not prediction.in_scope:
        return StudyScore(uid, label, False, 0.0, 0.0, (), prediction.level, prediction.reason)
    return StudyScore(
        uid,
        label,
        True,
        prediction.probability,
        raw_study_logit(info, prediction),
        tuple(v.logit for v in prediction.analysed_views),
        prediction.level,
        prediction.reason,
    )


def raw_study_logit(info: BundleInfo, prediction: StudyPrediction) -> float:
    """The study logit before the study temperature, as `ModelBundle.predict` computed it."""
    if info.aggregation in AGGREGATIONS:
        views = [_sigmoid(v.logit) for v in prediction.analysed_views]
        p = min(max(aggregate(views, info.aggregation), 1e-7), 1 - 1e-7)
    else:  # a learned aggregator: undo the temperature on the reported probability
        p = min(max(prediction.probability, 1e-15), 1 - 1e-15)
        return math.log(p / (1 - p)) * info.study_temperature
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def format_report(report: AcceptanceReport, title: str) -> str:
    """The acceptance table as plain text."""
    lines = [
        title,
        f"{report.studies} studies, {report.analysed} analysed ({report.positives} fractured,"
        f" {report.negatives} intact); at least {report.min_per_class} of each needed",
        f"{'metric':<26}{'local [95% CI]':<24}{'card [95% CI]':<32}verdict",
    ]
    for check in report.checks:
        card = _format_figure(check.card)
        if check.card.source == "limit" and check.card.value is not None:
            card = f"<= {check.card.value:.3f} (limit, none on card)"
        lines.append(
            f"{check.metric.title:<26}{_format_figure(check.local):<24}{card:<32}{check.verdict}"
        )
    lines += textwrap.wrap(f"rule: {RULE}", width=100)
    if report.insufficient:
        lines.append(report.insufficient)
    lines.append(f"result: {'PASS' if report.passed else 'FAIL'}")
    return "\n".join(lines)


def _format_figure(figure: Figure) -> str:
    if figure.value is None:
        return "-"
    if figure.ci95 is None:
        return f"{figure.value:.3f}"
    return f"{figure.value:.3f} [{figure.ci95[0]:.3f}, {figure.ci95[1]:.3f}]"


def _figure_json(figure: Figure) -> dict[str, Any]:
    record = asdict(figure)
    record["ci95"] = list(figure.ci95) if figure.ci95 else None
    if not record["source"]:
        del record["source"]
    return record


def scores_json(scores: Iterable[StudyScore]) -> list[dict[str, Any]]:
    """Per-study results for the JSON report (to audit single studies)."""
    return [
        {
            "study_uid": s.study_uid,
            "label": s.label,
            "analysed": s.analysed,
            "probability": s.probability if s.analysed else None,
            "level": s.level,
            "reason": s.reason,
        }
        for s in scores
    ]
