"""A bundle's figures across synthetic worlds (renderers) or archives, at its own thresholds.

One entry per (bundle, test world): the study level of the bundle's aggregation in an `evaluate`
report of all of the world's prepared dataset, reduced to what a hospital compares: study AUC
with its bootstrap 95% interval, sensitivity and specificity at the two operating points the
bundle recorded in its training world ("possible": high sensitivity, "likely": high
specificity) and the expected calibration error of the study probabilities (10 equal-width
bins). Nothing is fitted on the test world: an entry whose report used other thresholds than
the bundle's is refused.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from train.evaluation.metrics import HIGH_SENSITIVITY, HIGH_SPECIFICITY

LEVELS = {"possible": HIGH_SENSITIVITY, "likely": HIGH_SPECIFICITY}


def cross_world_entry(report: Mapping[str, Any], thresholds: Mapping[str, float]) -> dict[str, Any]:
    """`{n, positives, auc, auc_ci95, possible, likely, ece}` of the selected aggregation's study
    level of an `evaluate` report; `thresholds` are the bundle's ('possible', 'likely')."""
    study = report["aggregations"][report["selected"]]["study"]
    points = study["operating_points"]
    for level, point in LEVELS.items():
        used = float(points[point]["threshold"])
        if not math.isclose(used, float(thresholds[level]), rel_tol=1e-9, abs_tol=1e-12):
            raise ValueError(
                f"the evaluation used {used:.6f} for {level!r}, not the bundle's recorded "
                f"{thresholds[level]:.6f}: thresholds must stay those of the training world"
            )
    return {
        "n": study["n"],
        "positives": study["positives"],
        "auc": study["auc"],
        "auc_ci95": list(study["auc_ci95"]),
        **{level: dict(points[point]) for level, point in LEVELS.items()},
        "ece": study.get("ece"),
    }


def format_entry(entry: Mapping[str, Any]) -> str:
    """'AUC 0.93 [0.90, 0.96] · possible 0.95/0.40 · likely 0.80/0.90 · ECE 0.12' (sens/spec)."""
    low, high = entry["auc_ci95"]
    parts = [f"AUC {entry['auc']:.2f} [{low:.2f}, {high:.2f}]"]
    for level in LEVELS:
        point = entry[level]
        parts.append(f"{level} {point['sensitivity']:.2f}/{point['specificity']:.2f}")
    if entry.get("ece") is not None:
        parts.append(f"ECE {entry['ece']:.2f}")
    return " · ".join(parts)


def markdown_cross_world(
    rows: Mapping[str, Mapping[str, Mapping[str, Any]]], worlds: Sequence[str], corner: str
) -> str:
    """Rows (bundles, labelled with their training world) by test-world columns; '-' where a
    bundle was not tested in a world. `corner` heads the row labels."""
    lines = [f"| {corner} | " + " | ".join(worlds) + " |", "|---" * (len(worlds) + 1) + "|"]
    for label, entries in rows.items():
        cells = [format_entry(entries[w]) if w in entries else "-" for w in worlds]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
