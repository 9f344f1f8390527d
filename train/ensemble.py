"""`ensemble`: exported bundles -> one bundle whose view score is the mean of their logits.

The members must share the input geometry, normalisation and preprocessing (models trained on
the same prepared data do). The ensemble is calibrated afresh, like any export: on a split of a
calibration dataset that none of the members trained on, the study aggregation with the best
study AUC is chosen and every aggregation's temperature and 'possible'/'likely' thresholds are
fixed. The members' view models are kept; a member's learned aggregator is not (it pools one
trunk's features and has no meaning for the mean of several), nor is a member's own test-time
flip: `test_time_flip` decides it for the whole ensemble, before calibration. A group-balanced
refit of the members' last layers (`train.head_refit`), when asked for, comes before calibration
too.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from pipeline.inference import BundleInfo, ModelBundle
from pipeline.models import (
    ViewEnsemble,
    ensemble_arch,
    member_archs,
    with_test_time_flip,
    without_test_time_flip,
)
from pipeline.timestamps import utc_timestamp
from train.bundle_reader import carry_view_reader
from train.data.datasets import read_views
from train.evaluate import LoadedModel, fix_calibration, load_model, split_scores
from train.evaluation.subgroups import SubgroupSpec
from train.export import (
    INTENDED_USE,
    LIMITATIONS,
    cross_world_section,
    drift_reference,
    external_section,
    flip_line,
    held_out_metrics,
    synthetic_warning,
    write_info,
)
from train.fit import dataset_hash, git_commit_of_code
from train.head_refit import HeadRefitSpec, refit_for_export, refit_line

# What the members must agree on: the node prepares one input per view for all of them.
_SHARED_FIELDS = ("input_height", "input_width", "mean", "std", "preprocess")


def export_ensemble(
    members: Sequence[Path],
    out: Path,
    *,
    calibration: Path,
    calibration_split: str = "val",
    name: str,
    version: str,
    synthetic: bool = False,
    external_test: Path | None = None,
    external_subgroups: SubgroupSpec | None = None,
    world_tests: Mapping[str, Path] | None = None,
    test_time_flip: bool = False,
    head_refit: HeadRefitSpec | None = None,
    n_boot: int = 2000,
) -> BundleInfo:
    """Write the ensemble bundle `out` from the member bundle folders and return its info.

    `calibration`: a prepared dataset whose `calibration_split` ('val', 'test' or 'all') fixes
    the aggregation, temperatures and thresholds; it must not be data the members trained on.
    `external_test`: a dataset from an archive never used in training or calibration, evaluated
    whole afterwards for the model card (with its subgroups' figures by `external_subgroups`).
    `world_tests`: world name -> a dataset from that world, evaluated whole at the ensemble's
    own thresholds for the model card's "Across worlds" table (`metrics.cross_world`).
    `test_time_flip`: score each view and its mirror image and average the logits
    (`pipeline.models.FlipAveraged`); calibration and thresholds are fixed on those scores.
    `head_refit`: refit each member's last layer with group balance on other data first
    (`train.head_refit`), then calibrate.
    """
    if external_subgroups is not None and external_test is None:
        raise ValueError("subgroups of the external test need the external test dataset")
    if len(members) < 2:
        raise ValueError("an ensemble needs at least two member bundles")
    if out.resolve() in {m.resolve() for m in members}:
        raise ValueError(f"{out}: the ensemble cannot overwrite one of its members")
    infos = [_member_info(m) for m in members]
    first = infos[0]
    for path, member in zip(members[1:], infos[1:], strict=True):
        for key in _SHARED_FIELDS:
            if member[key] != first[key]:
                raise ValueError(
                    f"{path}: {key} differs from {members[0]}'s; the members of an ensemble "
                    "must share input size, normalisation and preprocessing"
                )
    loaded = [load_model(m) for m in members]
    archs = [member["arch"] for member in infos]
    ensemble = ViewEnsemble([without_test_time_flip(m.model) for m in loaded], archs).eval()
    rows = read_views(calibration, (calibration_split,))
    if len({r.label for r in rows}) < 2:
        raise ValueError(
            f"{calibration} (split {calibration_split}): calibration needs fractured and intact "
            "studies"
        )
    refit = None
    if head_refit is not None:
        refit = refit_for_export(ensemble, head_refit, loaded[0].augment, flip=test_time_flip,
                                 calibration=calibration)  # fmt: skip
    scored = with_test_time_flip(ensemble, test_time_flip)
    scores = split_scores(LoadedModel(scored, None, loaded[0].augment, None), rows)
    fixed = fix_calibration(scores)

    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in ensemble.state_dict().items()}
    torch.save({"model": state}, out / "weights.pt")
    cards = out / "members"
    cards.mkdir(exist_ok=True)
    for index, (path, member) in enumerate(zip(members, infos, strict=True)):
        for source, suffix in (("MODEL_CARD.md", ".md"), ("curves.png", "-curves.png")):
            if (path / source).exists():
                shutil.copyfile(path / source, cards / f"{index}-{member['arch']}{suffix}")
    info = BundleInfo(
        name=name,
        version=version,
        arch=ensemble_arch(archs),
        input_height=first["input_height"],
        input_width=first["input_width"],
        mean=first["mean"],
        std=first["std"],
        aggregation=fixed.aggregation,
        view_temperature=fixed.view.temperature,
        study_temperature=fixed.study[fixed.aggregation].temperature,
        thresholds=fixed.levels(),
        preprocess=carry_view_reader(first["preprocess"], members[0], out),
        trunk_arch="",
        test_time_flip=test_time_flip,
        created=utc_timestamp(),
        git_commit=git_commit_of_code(),
        metrics={
            "validation_study_auc": fixed.study_aucs,
            "calibration": fixed.recorded(),
            "calibration_data": {
                "dataset": calibration.name,
                "split": calibration_split,
                "dataset_hash": dataset_hash(calibration),
                "studies": len(scores.study_ids),
                "fractured": int(scores.study_labels.sum()),
                "views": len(scores.view_labels),
            },
            "members": [_member_summary(i) for i in infos],
            **({"head_refit": refit} if refit is not None else {}),
        },
        drift_reference=drift_reference(
            scores, fixed, f"split {calibration_split} of {calibration.name}"
        ),
    )
    write_info(out, info)
    ModelBundle.load(out)  # refuse to leave a bundle the node could not load
    held_out = held_out_metrics(out, info, external_test, external_subgroups, world_tests, n_boot)
    if held_out:
        info = BundleInfo(**{**asdict(info), "metrics": {**info.metrics, **held_out}})
        write_info(out, info)
    (out / "MODEL_CARD.md").write_text(ensemble_card(info, synthetic), encoding="utf-8")
    return info


def _member_info(bundle: Path) -> dict[str, Any]:
    try:
        info: dict[str, Any] = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ValueError(f"{bundle}: not a model bundle (no model.json)") from exc
    if member_archs(info["arch"]):
        raise ValueError(f"{bundle} is an ensemble already: list its members instead")
    return info


def _member_summary(info: dict[str, Any]) -> dict[str, Any]:
    """Who the member is and how it scored alone (its own selected aggregation)."""
    summary = {k: info.get(k, "") for k in ("name", "version", "arch", "git_commit", "created")}
    summary["aggregation"] = info["aggregation"]
    validation = info.get("metrics", {}).get("validation_study_auc", {})
    summary["validation_study_auc"] = validation.get(info["aggregation"])
    test = info.get("metrics", {}).get("test")
    if test:
        summary["test_study_auc"] = test["aggregations"][info["aggregation"]]["study"]["auc"]
    return summary


def ensemble_card(info: BundleInfo, synthetic: bool) -> str:
    """The ensemble bundle's model card (Markdown); members' own cards are in `members/`."""
    members = info.metrics["members"]
    data = info.metrics["calibration_data"]
    rows = ["| # | member | alone: validation study AUC | alone: test study AUC | git commit |",
            "|---|---|---|---|---|"]  # fmt: skip
    for index, m in enumerate(members):
        val, test = m.get("validation_study_auc"), m.get("test_study_auc")
        rows.append(
            f"| {index} | `{m['arch']}` ({m['name']} {m['version']}, {m['aggregation']}) | "
            f"{'-' if val is None else f'{val:.3f}'} | {'-' if test is None else f'{test:.3f}'} "
            f"| `{m['git_commit']}` |"
        )
    extras = flip_line(info) + refit_line(info.metrics)
    return f"""# Model card: {info.name} {info.version}

{synthetic_warning(synthetic)}{INTENDED_USE}
## Model
- An ensemble of {len(members)} single-view models (`{info.arch}`): the view score is the mean
  of their logits, input {info.input_width}x{info.input_height}; study aggregation
  `{info.aggregation}` (chosen on calibration study AUC:
  {", ".join(f"{k} {v:.3f}" for k, v in info.metrics["validation_study_auc"].items())}).
  The heat map is the mean of the members' Grad-CAM maps.{extras}
- Calibration: temperature {info.view_temperature:.3f} (views), {info.study_temperature:.3f}
  (study), fitted on the calibration data below.
- Levels: "possible" at calibrated study probability >= {info.thresholds["possible"]:.3f}
  (95% sensitivity on the calibration data), "likely" at >= {info.thresholds["likely"]:.3f}
  (95% specificity on the calibration data).
- Assembled at git commit `{info.git_commit}`; created {info.created}.

## Members
Each member was trained and exported on its own; its model card (training data, recipe, test
figures) and training curves are in `members/`.

{chr(10).join(rows)}

## Calibration data
Split `{data["split"]}` of dataset `{data["dataset"]}` (metadata hash
`{data["dataset_hash"][:16]}`): {data["studies"]} studies, {data["fractured"]} fractured,
{data["views"]} views. No member trained on it.
{external_section(info)}{cross_world_section(info, f"calibrated on `{data['dataset']}`")}
{LIMITATIONS}"""
