"""Subgroup (hidden stratification) figures: how the operating points fare within groups of studies.

A model can reach its overall figures while failing a clinically distinct group - a fracture type
it rarely sees, or a confounder it learned as a shortcut (an implant or cast that comes with
fractures more often than without). Given a CSV of study attributes (one or more rows per study,
keyed by `study_instance_uid`: a RIS export, a reading of the reports, or the synthetic archive's
`truth.csv`), this reports per value of each chosen column the sensitivity and specificity at
both operating points, with Wilson 95% intervals, and the AUC where both classes are present.

A study's value of a column is its distinct non-empty values across its rows, joined by '+'
('(none)' when all are empty); a study missing from the CSV is '(missing)'.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from train.evaluation.metrics import roc_auc, wilson_interval

STUDY_KEY = "study_instance_uid"
NONE = "(none)"
MISSING = "(missing)"

Report = dict[str, dict[str, dict[str, Any]]]
"""{column: {value: figures}}, as `subgroup_report` returns it."""


@dataclass(frozen=True)
class SubgroupSpec:
    """Which attribute CSV and which of its columns define the subgroups."""

    csv: Path
    columns: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.columns:
            raise ValueError(f"{self.csv}: subgroups need the attribute columns to group by")

    def read(self) -> dict[str, dict[str, str]]:
        return read_study_attributes(self.csv, self.columns)


def read_study_attributes(path: Path, columns: Sequence[str]) -> dict[str, dict[str, str]]:
    """Study UID -> {column: value} for `columns` of the CSV at `path` (rules in the module doc)."""
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        absent = [c for c in (STUDY_KEY, *columns) if c not in header]
        if absent:
            raise ValueError(f"{path}: no column {', '.join(absent)} (it has {', '.join(header)})")
        values: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for row in reader:
            study = values[row[STUDY_KEY]]
            for column in columns:
                if row[column].strip():
                    study[column].add(row[column].strip())
    return {
        uid: {c: "+".join(sorted(found[c])) if found[c] else NONE for c in columns}
        for uid, found in values.items()
    }


def _rate(hits: int, n: int) -> dict[str, Any]:
    if n == 0:
        return {"value": None, "ci95": None, "count": 0, "n": 0}
    return {"value": hits / n, "ci95": list(wilson_interval(hits, n)), "count": hits, "n": n}


def subgroup_report(
    study_ids: Sequence[str],
    labels: np.ndarray,
    probabilities: np.ndarray,
    thresholds: dict[str, float],
    attributes: dict[str, dict[str, str]],
    columns: Sequence[str],
) -> Report:
    """{column: {value: figures}} for calibrated study `probabilities` at the named thresholds.

    Figures per group: `n`, `positives`, `auc` (None unless both classes are present) and, per
    operating point, `sensitivity` and `specificity` as {value, ci95, count, n} (count: the
    detected fractured resp. correctly cleared intact studies).
    """
    y = np.asarray(labels).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    if not len(study_ids) == y.size == p.size:
        raise ValueError("study_ids, labels and probabilities must have the same length")
    report: Report = {}
    for column in columns:
        groups: dict[str, list[int]] = defaultdict(list)
        for index, uid in enumerate(study_ids):
            groups[attributes.get(uid, {}).get(column, MISSING)].append(index)
        report[column] = {}
        for value in sorted(groups):
            members = np.array(groups[value])
            gy, gp = y[members], p[members]
            positives = int(gy.sum())
            figures: dict[str, Any] = {
                "n": int(members.size),
                "positives": positives,
                "auc": roc_auc(gy, gp) if 0 < positives < members.size else None,
            }
            for name, threshold in thresholds.items():
                called = gp >= threshold
                figures[name] = {
                    "sensitivity": _rate(int((called & gy).sum()), positives),
                    "specificity": _rate(int((~called & ~gy).sum()), int((~gy).sum())),
                }
            report[column][value] = figures
    return report


def _rows(report: Report, names: Sequence[str]) -> list[tuple[str, str, int, int, str, list[Any]]]:
    """(column, value, n, positives, AUC text, [sensitivity, specificity per point]) per group."""
    rows = []
    for column, groups in report.items():
        for value, g in groups.items():
            auc = "-" if g["auc"] is None else f"{g['auc']:.3f}"
            rates = [g[n][kind] for n in names for kind in ("sensitivity", "specificity")]
            rows.append((column, value, g["n"], g["positives"], auc, rates))
    return rows


def markdown_subgroups(report: Report, names: Sequence[str]) -> str:
    """The model card's table: one row per column value, each rate with its Wilson interval."""

    def cell(rate: dict[str, Any]) -> str:
        if rate["value"] is None:
            return "-"
        low, high = rate["ci95"]
        return f"{rate['count']}/{rate['n']} = {rate['value']:.2f} [{low:.2f}, {high:.2f}]"

    head = " | ".join(f"sens ({n}) | spec ({n})" for n in names)
    lines = [f"| group | studies | fractured | AUC | {head} |",
             "|---|---|---|---|" + "---|---|" * len(names)]  # fmt: skip
    for column, value, n, positives, auc, rates in _rows(report, names):
        cells = " | ".join(cell(rate) for rate in rates)
        lines.append(f"| {column} = {value} | {n} | {positives} | {auc} | {cells} |")
    return "\n".join(lines)


def format_subgroups(report: Report, names: Sequence[str]) -> str:
    """A plain-text table: one row per column value, sensitivity/specificity at each point."""

    def cell(rate: dict[str, Any]) -> str:
        if rate["value"] is None:
            return f"{'-':>22}"
        low, high = rate["ci95"]
        return f"{rate['count']:>4}/{rate['n']:<4} {rate['value']:.2f} [{low:.2f},{high:.2f}]"

    head = "".join(f"{'sens@' + n[:12]:>23}{'spec@' + n[:12]:>23}" for n in names)
    lines = [f"{'subgroup':<34}{'n':>5}{'pos':>5}{'AUC':>7}{head}"]
    for column, value, n, positives, auc, rates in _rows(report, names):
        cells = "".join(f" {cell(rate)}" for rate in rates)
        lines.append(f"{(column + '=' + value)[:33]:<34}{n:>5}{positives:>5}{auc:>7}{cells}")
    return "\n".join(lines)
