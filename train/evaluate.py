"""`evaluate`: instance- and study-level metrics of a run or a bundle (thesis Tables 6.6-6.7).

Calibration (temperature scaling) and the two operating points are fixed on the validation split
before the evaluated split is looked at; a bundle brings its own for its selected aggregation.
Every hand-made aggregation (ALO, majority, mean, max) is reported, and the learned aggregator
when the bundle or run has one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.aggregation import AGGREGATIONS, aggregate_studies
from pipeline.models import (
    build_aggregator,
    build_model,
    build_view_model,
    with_test_time_flip,
)
from train.data.augment import AugmentParams
from train.data.datasets import ViewRow, read_views
from train.evaluation.calibration import apply_temperature, fit_temperature
from train.evaluation.metrics import (
    HIGH_SENSITIVITY,
    HIGH_SPECIFICITY,
    format_rates,
    level_report,
    roc_auc,
    threshold_for_sensitivity,
    threshold_for_specificity,
)
from train.evaluation.subgroups import SubgroupSpec, format_subgroups, subgroup_report
from train.fit import load_weights, predict_studies, predict_views

TARGET = 0.95  # both operating points aim at 95% (sensitivity resp. specificity) on validation


@dataclass
class LoadedModel:
    """A single-view model, optionally a learned aggregator, and how inputs are prepared."""

    model: nn.Module
    aggregator: nn.Module | None
    augment: AugmentParams
    bundle: dict[str, Any] | None


@dataclass(frozen=True)
class Calibration:
    """What validation fixed for one aggregation."""

    temperature: float
    thresholds: dict[str, float]
    """Calibrated-probability thresholds for high_sensitivity and high_specificity."""


@dataclass(frozen=True)
class SplitScores:
    """Per-study raw scores of every aggregation on one split, plus the view level."""

    view_labels: np.ndarray
    view_logits: np.ndarray
    view_studies: list[str]
    study_ids: list[str]
    study_labels: np.ndarray
    study_logits: dict[str, np.ndarray]
    """Aggregation -> uncalibrated study logit, aligned with `study_ids`."""


def load_model(path: Path) -> LoadedModel:
    """A run folder (best.pt + config.json) or a bundle folder (weights.pt + model.json)."""
    if (path / "model.json").exists():
        info = json.loads((path / "model.json").read_text(encoding="utf-8"))
        weights = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
        model: nn.Module = build_view_model(arch=info["arch"])
        model.load_state_dict(weights["model"])
        model = with_test_time_flip(model, bool(info.get("test_time_flip", False)))
        aggregator = None
        if "aggregator" in weights:
            aggregator = build_aggregator(trunk_arch=info["trunk_arch"] or info["arch"])
            aggregator.load_state_dict(weights["aggregator"])
            aggregator.eval()
        augment = AugmentParams(height=info["input_height"], width=info["input_width"],
                                mean=info["mean"], std=info["std"])  # fmt: skip
        return LoadedModel(model.eval(), aggregator, augment, info)
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    augment = AugmentParams(**config["augment"])
    if config["arch"] == "aggregator":
        trunk_run = Path(config["init_from"])
        single = load_model(trunk_run)
        aggregator = build_aggregator(trunk_arch=config["trunk_arch"])
        aggregator.load_state_dict(load_weights(path))
        return LoadedModel(single.model, aggregator.eval(), augment, None)
    model = build_model(arch=config["arch"])
    model.load_state_dict(load_weights(path))
    return LoadedModel(model.eval(), None, augment, None)


def split_scores(loaded: LoadedModel, rows: list[ViewRow]) -> SplitScores:
    """Raw view logits and every aggregation's study logits for `rows`."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loaded.model.to(device)
    if loaded.aggregator is not None:
        loaded.aggregator.to(device)
    logits = predict_views(loaded.model, rows, loaded.augment, device)
    labels = np.array([r.label for r in rows])
    studies = [r.study for r in rows]
    probabilities = 1.0 / (1.0 + np.exp(-logits))
    study_logits: dict[str, np.ndarray] = {}
    ids: list[str] = []
    for method in AGGREGATIONS:
        ids, scores = aggregate_studies(studies, probabilities, method)
        study_logits[method] = _logit(np.minimum(scores, 1.0))
    if loaded.aggregator is not None:
        learned_ids, _, learned = predict_studies(loaded.aggregator, rows, loaded.augment, device)
        order = {s: i for i, s in enumerate(learned_ids)}
        study_logits["learned"] = np.array([learned[order[s]] for s in ids])
    first = {r.study: r.label for r in rows}
    return SplitScores(labels, logits, studies, ids, np.array([first[s] for s in ids]),
                       study_logits)  # fmt: skip


def calibrate(labels: np.ndarray, logits: np.ndarray) -> Calibration:
    """Temperature and operating points from validation logits of one level/aggregation."""
    temperature = fit_temperature(logits, labels)
    calibrated = apply_temperature(logits, temperature)
    return Calibration(temperature, {
        HIGH_SENSITIVITY: threshold_for_sensitivity(labels, calibrated, TARGET),
        HIGH_SPECIFICITY: threshold_for_specificity(labels, calibrated, TARGET),
    })  # fmt: skip


@dataclass(frozen=True)
class FixedCalibration:
    """What a bundle's validation (or calibration) data fixes, before any test data is read."""

    aggregation: str
    """The aggregation with the best study AUC there."""
    study_aucs: dict[str, float]
    view: Calibration
    study: dict[str, Calibration]

    def levels(self) -> dict[str, float]:
        """The selected aggregation's thresholds under the node's level names."""
        chosen = self.study[self.aggregation].thresholds
        return {"possible": chosen[HIGH_SENSITIVITY], "likely": chosen[HIGH_SPECIFICITY]}

    def recorded(self) -> dict[str, Any]:
        """Every aggregation's calibration as `model.json` records it (read back by
        `evaluate`, so a bundle evaluated elsewhere fits nothing on the evaluated data)."""
        return {"view": asdict(self.view),
                "study": {m: asdict(c) for m, c in self.study.items()}}  # fmt: skip


def fix_calibration(scores: SplitScores) -> FixedCalibration:
    """Choose the aggregation and calibrate the views and every aggregation on `scores`."""
    aucs = {m: roc_auc(scores.study_labels, z) for m, z in scores.study_logits.items()}
    return FixedCalibration(
        aggregation=max(aucs, key=lambda m: aucs[m]),
        study_aucs=aucs,
        view=calibrate(scores.view_labels, scores.view_logits),
        study={m: calibrate(scores.study_labels, z) for m, z in scores.study_logits.items()},
    )


def evaluate(model_path: Path, dataset: Path, *, split: str = "test", n_boot: int = 2000,
             subgroups: SubgroupSpec | None = None) -> dict[str, Any]:  # fmt: skip
    """The report `evaluate --json` prints (format documented in the README).

    `subgroups` adds `subgroups`: the selected aggregation's operating points within each group
    of studies (`train.evaluation.subgroups`).
    """
    attributes = subgroups.read() if subgroups is not None else None
    loaded = load_model(model_path)
    evaluated = split_scores(loaded, read_views(dataset, (split,)))
    bundle = loaded.bundle
    fixed = _bundle_calibration(bundle)
    val_rows = read_views(dataset, ("val",)) if split != "val" and fixed is None else []
    validation = split_scores(loaded, val_rows) if val_rows else evaluated
    if fixed is not None:
        view_cal, study_cals = fixed
    else:
        # A bundle from before per-aggregation calibrations were recorded keeps its temperature.
        temperature = (bundle["view_temperature"] if bundle else
                       fit_temperature(validation.view_logits, validation.view_labels))  # fmt: skip
        view_cal = Calibration(temperature, _instance_thresholds(validation, temperature))
        study_cals = {}
    instance = level_report(
        evaluated.view_labels,
        apply_temperature(evaluated.view_logits, view_cal.temperature),
        thresholds=view_cal.thresholds,
        groups=np.array(evaluated.view_studies),
        n_boot=n_boot,
    ).to_json()
    aggregations: dict[str, Any] = {}
    calibrated: dict[str, tuple[np.ndarray, dict[str, float]]] = {}
    for method, logits in evaluated.study_logits.items():
        if method in study_cals:
            cal = study_cals[method]
        elif bundle and method == bundle["aggregation"]:
            cal = Calibration(bundle["study_temperature"], _named(bundle))
        else:
            cal = calibrate(validation.study_labels, validation.study_logits[method])
        calibrated[method] = (apply_temperature(logits, cal.temperature), cal.thresholds)
        study = level_report(
            evaluated.study_labels,
            calibrated[method][0],
            thresholds=cal.thresholds,
            n_boot=n_boot,
        ).to_json()
        aggregations[method] = {"study": study, "instance": instance}
    selected = (
        bundle["aggregation"]
        if bundle
        else max(aggregations, key=lambda m: aggregations[m]["study"]["auc"])
    )
    report: dict[str, Any] = {
        "selected": selected,
        "split": split,
        "calibrated_on": (
            _bundle_calibration_data(bundle)
            if fixed is not None
            else "val"
            if val_rows or split == "val"
            else "evaluated data (optimistic)"
        ),
        "aggregations": aggregations,
    }
    if subgroups is not None and attributes is not None:
        probabilities, thresholds = calibrated[selected]
        report["subgroups"] = subgroup_report(evaluated.study_ids, evaluated.study_labels,
                                              probabilities, thresholds, attributes,
                                              subgroups.columns)  # fmt: skip
    return report


def _instance_thresholds(validation: SplitScores, temperature: float) -> dict[str, float]:
    calibrated = apply_temperature(validation.view_logits, temperature)
    return {
        HIGH_SENSITIVITY: threshold_for_sensitivity(validation.view_labels, calibrated, TARGET),
        HIGH_SPECIFICITY: threshold_for_specificity(validation.view_labels, calibrated, TARGET),
    }


def _bundle_calibration(
    bundle: dict[str, Any] | None,
) -> tuple[Calibration, dict[str, Calibration]] | None:
    """The view and per-aggregation calibrations a bundle recorded at export, if it did."""
    recorded = (bundle or {}).get("metrics", {}).get("calibration")
    if not recorded:
        return None
    view = Calibration(recorded["view"]["temperature"], recorded["view"]["thresholds"])
    study = {
        m: Calibration(c["temperature"], c["thresholds"]) for m, c in recorded["study"].items()
    }
    return view, study


def _bundle_calibration_data(bundle: dict[str, Any] | None) -> str:
    """Where the bundle's recorded operating points were fixed, in words."""
    data = (bundle or {}).get("metrics", {}).get("calibration_data")
    if not data:
        return "the bundle's validation split"
    return f"the bundle's calibration data ({data['dataset']}, split {data['split']})"


def _named(bundle: dict[str, Any]) -> dict[str, float]:
    return {HIGH_SENSITIVITY: bundle["thresholds"]["possible"],
            HIGH_SPECIFICITY: bundle["thresholds"]["likely"]}  # fmt: skip


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-7, 1 - 1e-7)
    out: np.ndarray = np.log(p / (1 - p))
    return out


def format_table(report: dict[str, Any]) -> str:
    """A plain-text table: one row per aggregation and level."""
    lines = [
        f"split {report['split']}; operating points fixed on {report['calibrated_on']}; "
        f"selected aggregation: {report['selected']}",
        f"{'aggregation':<12}{'level':<10}{'n':>5}{'AUC':>8}{'95% CI':>16}{'acc':>7}{'bal':>7}"
        f"{'sens@hs':>9}{'spec@hs':>9}{'sens@hp':>9}{'spec@hp':>9}",
    ]
    for method, levels in report["aggregations"].items():
        for level in ("study", "instance"):
            if level == "instance" and method != report["selected"]:
                continue
            r = levels[level]
            hs, hp = (
                r["operating_points"][HIGH_SENSITIVITY],
                r["operating_points"][HIGH_SPECIFICITY],
            )
            ci = f"[{r['auc_ci95'][0]:.3f}, {r['auc_ci95'][1]:.3f}]"
            lines.append(
                f"{method:<12}{level:<10}{r['n']:>5}{r['auc']:>8.3f}{ci:>16}{r['accuracy']:>7.3f}"
                f"{r['balanced_accuracy']:>7.3f}{hs['sensitivity']:>9.3f}{hs['specificity']:>9.3f}"
                f"{hp['sensitivity']:>9.3f}{hp['specificity']:>9.3f}"
            )
    lines.append(_intervals_line(report))
    if "subgroups" in report:
        points = (HIGH_SENSITIVITY, HIGH_SPECIFICITY)
        lines += ["", f"subgroups, study level, aggregation {report['selected']} "
                  "(detected/fractured resp. cleared/intact, Wilson 95% CI):",
                  format_subgroups(report["subgroups"], points)]  # fmt: skip
    return "\n".join(lines)


def _intervals_line(report: dict[str, Any]) -> str:
    """The selected aggregation's study-level rates with their Wilson 95% intervals."""
    points = report["aggregations"][report["selected"]]["study"]["operating_points"]
    rates = "; ".join(f"{name} {format_rates(points[name])}"
                      for name in (HIGH_SENSITIVITY, HIGH_SPECIFICITY))  # fmt: skip
    return f"{report['selected']} study level, sens / spec [Wilson 95% CI]: {rates}"
