"""Calibration that travels: a bundle's figures in a world, with and without its OOD detector.

The bundle's temperatures and thresholds were fixed in its training world; here they are only
applied. Each study gets two probabilities, computed as `ModelBundle.predict` computes them (the
raw view probabilities aggregated by the bundle's method, then the study temperature):

- detector off: from all its views, as the node answered before it could abstain;
- detector on: from the views the detector keeps; a study whose views all abstain is "not
  analysable" and has none.

Figures over all studies (detector off) and over the analysed studies only (detector on), side by
side with the abstention rates, show what abstaining buys: whether the studies the node still
answers are the ones it answers well. ECE uses 10 equal-width bins (`calibration.ECE_BINS`).

The subgroups are the weak groups of issue 18: scaphoid fractures (sensitivity at "possible"),
and intact wrists with an implant, with a cast, or with neither (specificity at "possible"). A
study is in the implant (cast) group when any of its images shows one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.aggregation import aggregate
from train.evaluation.calibration import ECE_BINS
from train.evaluation.metrics import (
    HIGH_SENSITIVITY,
    HIGH_SPECIFICITY,
    level_report,
    wilson_interval,
)

LEVELS = {"possible": HIGH_SENSITIVITY, "likely": HIGH_SPECIFICITY}
INTACT_GROUPS = ("implant", "cast", "neither")
"""Intact studies by confounder; a study with both is in the implant and in the cast group."""


@dataclass(frozen=True)
class StudyOutcome:
    """One study's results with the detector off and on."""

    study: str
    label: int
    probability_all: float
    """From all views (detector off)."""
    probability_analysed: float | None
    """From the views the detector keeps; None when every view abstained."""
    views: int
    abstained_views: int


def study_probability(logits: Sequence[float], aggregation: str, study_temperature: float) -> float:
    """The node's calibrated study probability from raw view logits (`ModelBundle.predict`)."""
    raw = [_sigmoid(z) for z in logits]
    return _sigmoid(_logit(aggregate(raw, aggregation)) / study_temperature)


def study_outcomes(
    view_studies: Sequence[str],
    view_logits: Sequence[float],
    abstained: Sequence[bool],
    labels: Mapping[str, int],
    *,
    aggregation: str,
    study_temperature: float,
) -> list[StudyOutcome]:
    """Per study (sorted by UID), from one entry per view; studies without views are absent."""
    if not len(view_studies) == len(view_logits) == len(abstained):
        raise ValueError("view_studies, view_logits and abstained must have the same length")
    grouped: dict[str, list[tuple[float, bool]]] = {}
    for study, logit, out in zip(view_studies, view_logits, abstained, strict=True):
        grouped.setdefault(study, []).append((float(logit), bool(out)))
    outcomes = []
    for study in sorted(grouped):
        views = grouped[study]
        kept = [z for z, out in views if not out]
        outcomes.append(StudyOutcome(
            study=study,
            label=int(labels[study]),
            probability_all=study_probability([z for z, _ in views], aggregation,
                                              study_temperature),
            probability_analysed=(study_probability(kept, aggregation, study_temperature)
                                  if kept else None),
            views=len(views),
            abstained_views=len(views) - len(kept),
        ))  # fmt: skip
    return outcomes


def _rate(hits: int, n: int) -> dict[str, Any]:
    low, high = wilson_interval(hits, n) if n else (math.nan, math.nan)
    return {"count": hits, "n": n, "value": hits / n if n else None, "ci95": [low, high]}


def level_figures(
    labels: np.ndarray, probabilities: np.ndarray, thresholds: Mapping[str, float], n_boot: int
) -> dict[str, Any] | None:
    """Study AUC [bootstrap 95%], ECE and sensitivity/specificity [Wilson 95%] at the bundle's
    "possible" and "likely" thresholds; None unless both classes are present."""
    y = np.asarray(labels).astype(bool)
    if y.size == 0 or y.all() or not y.any():
        return None
    named = {point: float(thresholds[level]) for level, point in LEVELS.items()}
    report = level_report(y, np.asarray(probabilities, dtype=np.float64), thresholds=named,
                          n_boot=n_boot).to_json()  # fmt: skip
    points = report["operating_points"]
    return {
        "n": report["n"],
        "positives": report["positives"],
        "auc": report["auc"],
        "auc_ci95": report["auc_ci95"],
        "ece": report["ece"],
        "ece_bins": ECE_BINS,
        **{level: points[point] for level, point in LEVELS.items()},
    }


def confounder_attributes(attributes: Mapping[str, Mapping[str, str]]) -> dict[str, dict[str, str]]:
    """Study attributes (`subgroups.read_study_attributes` of fracture_kind, implant, cast) ->
    the columns `scaphoid` ('1' when any image shows a scaphoid fracture), `implant` and `cast`
    ('1' when any image shows one: '0+1' counts)."""

    def any_of(value: str, wanted: str) -> str:
        return "1" if wanted in value.split("+") else "0"

    return {
        uid: {
            "scaphoid": any_of(a.get("fracture_kind", ""), "scaphoid"),
            "implant": any_of(a.get("implant", ""), "1"),
            "cast": any_of(a.get("cast", ""), "1"),
        }
        for uid, a in attributes.items()
    }


def weak_groups(
    outcomes: Sequence[StudyOutcome],
    attributes: Mapping[str, Mapping[str, str]],
    threshold: float,
    *,
    analysed: bool,
) -> dict[str, dict[str, Any]]:
    """Sensitivity of the scaphoid fractures and specificity of the intact implant, cast and
    neither groups at `threshold` ("possible"), over all studies or the analysed ones only.

    `attributes` are `confounder_attributes`; a study missing from them counts in no group."""
    chosen = [o for o in outcomes if not analysed or o.probability_analysed is not None]
    probability = [
        o.probability_analysed if analysed and o.probability_analysed is not None
        else o.probability_all
        for o in chosen
    ]  # fmt: skip
    called = [p >= threshold for p in probability]
    groups: dict[str, dict[str, Any]] = {}
    scaphoid = [c for o, c in zip(chosen, called, strict=True)
                if o.label and attributes.get(o.study, {}).get("scaphoid") == "1"]  # fmt: skip
    groups["scaphoid (sensitivity)"] = _rate(sum(scaphoid), len(scaphoid))
    for group in INTACT_GROUPS:
        cleared = [not c for o, c in zip(chosen, called, strict=True)
                   if not o.label and _intact_group(attributes.get(o.study), group)]  # fmt: skip
        groups[f"intact, {group} (specificity)"] = _rate(sum(cleared), len(cleared))
    return groups


def _intact_group(attributes: Mapping[str, str] | None, group: str) -> bool:
    if attributes is None:
        return False
    implant, cast = attributes.get("implant") == "1", attributes.get("cast") == "1"
    if group == "neither":
        return not (implant or cast)
    return implant if group == "implant" else cast


def transfer_entry(
    outcomes: Sequence[StudyOutcome],
    thresholds: Mapping[str, float],
    attributes: Mapping[str, Mapping[str, str]],
    *,
    studies_without_view: int,
    n_boot: int = 2000,
) -> dict[str, Any]:
    """Everything one (bundle, world) row reports; `attributes` as `confounder_attributes`."""
    labels = np.array([o.label for o in outcomes])
    everything = np.array([o.probability_all for o in outcomes])
    analysed = [o for o in outcomes if o.probability_analysed is not None]
    kept_labels = np.array([o.label for o in analysed])
    kept = np.array([o.probability_analysed for o in analysed], dtype=np.float64)
    views = sum(o.views for o in outcomes)
    abstained_views = sum(o.abstained_views for o in outcomes)
    not_analysable = len(outcomes) - len(analysed)
    possible = float(thresholds["possible"])
    return {
        "studies": len(outcomes),
        "positives": int(labels.sum()),
        "studies_without_view": studies_without_view,
        "all": level_figures(labels, everything, thresholds, n_boot),
        "analysed": level_figures(kept_labels, kept, thresholds, n_boot),
        "abstention": {
            "studies": _rate(not_analysable, len(outcomes)),
            "fractured_studies": _rate(
                sum(1 for o in outcomes if o.label and o.probability_analysed is None),
                int(labels.sum()),
            ),
            "partly": _rate(sum(1 for o in analysed if o.abstained_views), len(outcomes)),
            "views": _rate(abstained_views, views),
        },
        "groups": {
            "all": weak_groups(outcomes, attributes, possible, analysed=False),
            "analysed": weak_groups(outcomes, attributes, possible, analysed=True),
        },
    }


def _cell_rate(rate: Mapping[str, Any]) -> str:
    if not rate["n"]:
        return "-"
    low, high = rate["ci95"]
    return f"{rate['count']}/{rate['n']} = {rate['value']:.2f} [{low:.2f}, {high:.2f}]"


def _cell_level(figures: Mapping[str, Any] | None, key: str) -> str:
    if figures is None:
        return "- (one class)"
    if key == "auc":
        low, high = figures["auc_ci95"]
        return f"{figures['auc']:.3f} [{low:.2f}, {high:.2f}]"
    if key == "ece":
        return f"{figures['ece']:.3f}"
    level, rate = key.split(":")
    point = figures[level]
    low, high = point[f"{rate}_ci95"]
    return f"{point[rate]:.2f} [{low:.2f}, {high:.2f}]"


def markdown_transfer(entries: Mapping[str, Mapping[str, Any]]) -> str:
    """One column per world and detector setting ("all studies", "analysed only"), one row per
    figure; `entries` maps a world's label to its `transfer_entry`."""
    columns: list[tuple[str, Mapping[str, Any], str]] = []
    for world, entry in entries.items():
        columns.append((f"{world}: all studies, detector off", entry, "all"))
        columns.append((f"{world}: analysed studies only", entry, "analysed"))
    rows: list[tuple[str, list[str]]] = []

    def counts(entry: Mapping[str, Any], which: str) -> str:
        figures = entry[which]
        if figures is None:
            return "-"
        return f"{figures['n']} ({figures['positives']} fractured)"

    rows.append(("studies", [counts(e, w) for _, e, w in columns]))
    for key, name in (("auc", "study AUC [bootstrap 95%]"),
                      ("ece", f"ECE ({ECE_BINS} equal-width bins)"),
                      ("possible:sensitivity", "sensitivity at 'possible'"),
                      ("possible:specificity", "specificity at 'possible'"),
                      ("likely:sensitivity", "sensitivity at 'likely'"),
                      ("likely:specificity", "specificity at 'likely'")):  # fmt: skip
        rows.append((name, [_cell_level(e[w], key) for _, e, w in columns]))
    for key, name in (("studies", "not analysable: studies"),
                      ("fractured_studies", "not analysable: fractured studies"),
                      ("partly", "studies with some views abstaining"),
                      ("views", "views abstaining")):  # fmt: skip
        rows.append((name, [_cell_rate(e["abstention"][key]) if w == "analysed" else "-"
                            for _, e, w in columns]))  # fmt: skip
    first = next(iter(entries.values()))
    for group in first["groups"]["all"]:
        rows.append((f"{group} at 'possible'",
                     [_cell_rate(e["groups"][w][group]) for _, e, w in columns]))  # fmt: skip
    lines = ["| figure | " + " | ".join(c for c, _, _ in columns) + " |",
             "|---" * (len(columns) + 1) + "|"]  # fmt: skip
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows]
    return "\n".join(lines)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x)) if x >= 0 else math.exp(x) / (1.0 + math.exp(x))


def _logit(p: float) -> float:
    p = min(max(p, 1e-7), 1 - 1e-7)
    return math.log(p / (1 - p))
