"""`export`: a run (and optionally an aggregator run) -> a model bundle the node loads.

Validation fixes everything the node needs beyond the weights: the view and study temperatures,
the study aggregation (the best validation study AUC; the learned aggregator competes when
given) and the 'possible'/'likely' thresholds. The test split is evaluated only afterwards, for
the model card.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from pipeline.drift import reference_from_probabilities
from pipeline.inference import BundleInfo, ModelBundle
from pipeline.models import with_test_time_flip, without_test_time_flip
from pipeline.preprocess.params_io import params_from_dict, params_to_dict
from pipeline.preprocess.study import PreprocessParams
from pipeline.timestamps import utc_timestamp
from train.bundle_reader import carry_view_reader
from train.data.datasets import read_views
from train.evaluate import (
    FixedCalibration,
    SplitScores,
    evaluate,
    fix_calibration,
    load_model,
    split_scores,
)
from train.evaluation.calibration import apply_temperature
from train.evaluation.cross_world import cross_world_entry, markdown_cross_world
from train.evaluation.metrics import HIGH_SENSITIVITY, HIGH_SPECIFICITY, format_rates
from train.evaluation.subgroups import SubgroupSpec, markdown_subgroups
from train.fit import dataset_hash, load_weights
from train.head_refit import HeadRefitSpec, refit_for_export, refit_line


def export(
    run: Path,
    out: Path,
    *,
    name: str,
    version: str,
    aggregator_run: Path | None = None,
    synthetic: bool = False,
    external_test: Path | None = None,
    external_subgroups: SubgroupSpec | None = None,
    world_tests: Mapping[str, Path] | None = None,
    test_time_flip: bool = False,
    head_refit: HeadRefitSpec | None = None,
    n_boot: int = 2000,
) -> BundleInfo:
    """Write the bundle folder `out` and return its `model.json` contents.

    `external_test`: a dataset prepared from an archive the model never saw (all of it is
    evaluated, after everything is fixed on validation); its figures go into the model card,
    with its subgroups' when `external_subgroups` says which.
    `world_tests`: world name -> a dataset prepared from that world (e.g. another renderer),
    each evaluated whole at the bundle's own thresholds (`metrics.cross_world`, "Across worlds").
    `test_time_flip`: score each view and its mirror image and average the logits; validation
    fixes calibration and thresholds on those scores.
    `head_refit`: refit the last layer with group balance on other data (`train.head_refit`)
    before validation fixes the calibration.
    """
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    if config["arch"] == "aggregator":
        raise ValueError(f"{run} is an aggregator run: export its trunk run with --aggregator-run")
    if external_subgroups is not None and external_test is None:
        raise ValueError("subgroups of the external test need the external test dataset")
    if test_time_flip and aggregator_run:
        raise ValueError("test-time flip applies to view scores; the learned aggregator has none")
    if head_refit and aggregator_run:
        raise ValueError("a head refit changes view scores; the learned aggregator has none")
    dataset = Path(config["dataset"])
    loaded = load_model(aggregator_run) if aggregator_run else load_model(run)
    loaded.model = with_test_time_flip(loaded.model, test_time_flip)
    refit = None
    if head_refit is not None:
        refit = refit_for_export(loaded.model, head_refit, loaded.augment, flip=test_time_flip,
                                 calibration=dataset)  # fmt: skip
    rows = read_views(dataset, ("val",))
    if len({r.label for r in rows}) < 2:
        raise ValueError(f"{dataset}: the validation split needs fractured and intact studies")
    scores = split_scores(loaded, rows)
    fixed = fix_calibration(scores)
    out.mkdir(parents=True, exist_ok=True)
    weights: dict[str, Any] = {"model": load_weights(run)}
    if refit is not None:
        plain = without_test_time_flip(loaded.model)
        weights["model"] = {k: v.detach().cpu() for k, v in plain.state_dict().items()}
    if aggregator_run and loaded.aggregator is not None:
        # Evaluation may have moved it to a GPU: the bundle holds CPU tensors wherever it was made.
        weights["aggregator"] = {k: v.cpu() for k, v in loaded.aggregator.state_dict().items()}
    torch.save(weights, out / "weights.pt")
    augment = config["augment"]
    info = BundleInfo(
        name=name,
        version=version,
        arch=config["arch"],
        input_height=augment["height"],
        input_width=augment["width"],
        mean=augment["mean"],
        std=augment["std"],
        aggregation=fixed.aggregation,
        view_temperature=fixed.view.temperature,
        study_temperature=fixed.study[fixed.aggregation].temperature,
        thresholds=fixed.levels(),
        preprocess=carry_view_reader(_preprocess_params(dataset, augment), dataset, out),
        trunk_arch=config["arch"],
        test_time_flip=test_time_flip,
        created=utc_timestamp(),
        git_commit=config.get("git_commit", "unknown"),
        metrics={
            "validation_study_auc": fixed.study_aucs,
            "calibration": fixed.recorded(),
            **({"head_refit": refit} if refit is not None else {}),
        },
        drift_reference=drift_reference(scores, fixed, f"split val of {dataset.name}"),
    )
    write_info(out, info)
    ModelBundle.load(out)  # refuse to leave a bundle the node could not load
    metrics = {**info.metrics, "test": evaluate(out, dataset, split="test", n_boot=n_boot),
               **held_out_metrics(out, info, external_test, external_subgroups, world_tests,
                                  n_boot)}  # fmt: skip
    info = BundleInfo(**{**asdict(info), "metrics": metrics})
    write_info(out, info)
    (out / "MODEL_CARD.md").write_text(model_card(info, config, synthetic), encoding="utf-8")
    if (run / "curves.png").exists():
        shutil.copyfile(run / "curves.png", out / "curves.png")
    return info


def drift_reference(scores: SplitScores, fixed: FixedCalibration, source: str) -> dict[str, Any]:
    """The bundle's `drift_reference` (`pipeline.drift`): level rates and probability bins of
    its calibrated study probabilities on the data that fixed its calibration, `source`."""
    method = fixed.aggregation
    probabilities = apply_temperature(scores.study_logits[method], fixed.study[method].temperature)
    return reference_from_probabilities([float(p) for p in probabilities], fixed.levels(),
                                        source=source)  # fmt: skip


def flip_line(info: BundleInfo) -> str:
    """The model card's line on test-time flip averaging, empty when the bundle does not use it."""
    if not info.test_time_flip:
        return ""
    return (
        "\n- Test-time flip: every view is scored as it is and mirrored left-right, and the two"
        "\n  logits are averaged (the heat map likewise); calibration used the same scores."
    )


def _preprocess_params(dataset: Path, augment: dict[str, Any]) -> dict[str, Any]:
    """The dataset's preprocessing, with the output geometry the model was trained at."""
    recorded = dataset / "preprocess.json"
    params = (params_from_dict(json.loads(recorded.read_text(encoding="utf-8")))
              if recorded.exists() else PreprocessParams())  # fmt: skip
    if (params.output.width, params.output.height) != (augment["width"], augment["height"]):
        params = replace(params, output=replace(params.output, width=augment["width"],
                                                height=augment["height"]))  # fmt: skip
    return params_to_dict(params)


INTENDED_USE = """## Intended use
Flags possible fractures on wrist radiograph studies (PA, lateral and oblique views of adults'
wrists, CR or DX) for a radiologist, who reads the study as usual. It does not diagnose, does
not replace the reading, and says nothing about other findings or other body parts; studies
that are not wrists are refused by the preprocessing (wrist filter).
"""

LIMITATIONS = """## Limitations
- Trained and tested on data from one source; performance elsewhere must be measured there
  (`dicomnode-train evaluate BUNDLE DATASET --split all` on a local labelled set).
- The label is per study; views that do not show the fracture are labelled fractured too.
- Children, casts, implants and follow-up studies may behave differently from the test figures.
"""


def synthetic_warning(synthetic: bool) -> str:
    """The model card's first line: what the model must not be used for."""
    if synthetic:
        return (
            "**Trained on synthetic radiographs generated by this project. Not for clinical use: "
            "it has never seen a real patient.**\n\n"
        )
    return "**Decision support only, not for diagnostic use.**\n\n"


def write_info(out: Path, info: BundleInfo) -> None:
    (out / "model.json").write_text(json.dumps(asdict(info), indent=2) + "\n", encoding="utf-8")


def model_card(info: BundleInfo, config: dict[str, Any], synthetic: bool) -> str:
    """The bundle's model card (Markdown)."""
    test = info.metrics["test"]
    schedule = config.get("schedule", "constant")
    if config.get("warmup_epochs"):
        schedule += f" after {config['warmup_epochs']} warm-up epochs"
    flip = flip_line(info) + refit_line(info.metrics)
    return f"""# Model card: {info.name} {info.version}

{synthetic_warning(synthetic)}{INTENDED_USE}
## Model
- Architecture: `{info.arch}`, input {info.input_width}x{info.input_height}, one logit per view;
  study aggregation `{info.aggregation}` (chosen on validation study AUC:
  {", ".join(f"{k} {v:.3f}" for k, v in info.metrics["validation_study_auc"].items())}).{flip}
- Calibration: temperature {info.view_temperature:.3f} (views), {info.study_temperature:.3f}
  (study), fitted on validation data.
- Levels: "possible" at calibrated study probability >= {info.thresholds["possible"]:.3f}
  (95% sensitivity on validation), "likely" at >= {info.thresholds["likely"]:.3f} (95%
  specificity on validation).
- Training: {config["epochs"]} epochs, Adam lr {config["lr"]} ({schedule}), batch
  {config["batch_size"]}, weight decay {config.get("weight_decay", 0.0)}, seed {config["seed"]};
  git commit `{info.git_commit}`; created {info.created}.

## Training data
Dataset `{Path(config["dataset"]).name}` (metadata hash
`{config.get("dataset_hash", "")[:16]}`), prepared by `dicomnode-train prepare`; split by
patient, stratified by label:

{_split_table(Path(config["dataset"]))}

## Metrics on the held-out test split ({test["split"]}, operating points fixed on validation)
{metrics_table(test, info.aggregation)}
{external_section(info)}{cross_world_section(info, _trained_on(config))}
{LIMITATIONS}"""


def _trained_on(config: dict[str, Any]) -> str:
    return f"trained on `{Path(config['dataset']).name}`"


def held_out_metrics(
    bundle: Path,
    info: BundleInfo,
    external_test: Path | None,
    external_subgroups: SubgroupSpec | None,
    world_tests: Mapping[str, Path] | None,
    n_boot: int,
) -> dict[str, Any]:
    """`external_test` and `cross_world` for `model.json`'s metrics (those asked for): the
    written bundle evaluated on all of each dataset, nothing fitted there."""
    metrics: dict[str, Any] = {}
    if external_test is not None:
        metrics["external_test"] = external_metrics(bundle, external_test, external_subgroups,
                                                    n_boot)  # fmt: skip
    if world_tests:
        metrics["cross_world"] = {}
        for name, dataset in world_tests.items():
            report = external_metrics(bundle, dataset, None, n_boot)
            metrics["cross_world"][name] = {
                **cross_world_entry(report, info.thresholds),
                "dataset": report["dataset"],
                "dataset_hash": report["dataset_hash"],
            }
    return metrics


def external_metrics(
    bundle: Path, dataset: Path, subgroups: SubgroupSpec | None, n_boot: int
) -> dict[str, Any]:
    """The bundle's evaluation on all of an external dataset, as `model.json` records it."""
    report = evaluate(bundle, dataset, split="all", n_boot=n_boot, subgroups=subgroups)
    return {**report, "dataset": dataset.name, "dataset_hash": dataset_hash(dataset)}


def external_section(info: BundleInfo) -> str:
    """The model card's section on the external test set; empty when there was none."""
    external = info.metrics.get("external_test")
    if external is None:
        return ""
    study = external["aggregations"][info.aggregation]["study"]
    views = external["aggregations"][info.aggregation]["instance"]["n"]
    return f"""
## Metrics on an external test set ({external["dataset"]}, never used in training)
All of dataset `{external["dataset"]}` (metadata hash `{external["dataset_hash"][:16]}`):
{study["n"]} studies, {study["positives"]} fractured, {views} views, evaluated with the
bundle's own calibration, aggregation and thresholds.

{metrics_table(external, info.aggregation)}
{_subgroup_section(external)}"""


def cross_world_section(info: BundleInfo, trained: str) -> str:
    """The model card's "Across worlds" section; empty without world tests. `trained` names
    where the bundle's thresholds were fixed (the row)."""
    worlds = info.metrics.get("cross_world")
    if not worlds:
        return ""
    table = markdown_cross_world({f"{info.name} {info.version} ({trained})": worlds},
                                 list(worlds), "bundle / tested on")  # fmt: skip
    data = "\n".join(
        f"- `{name}`: all of dataset `{w['dataset']}` (metadata hash `{w['dataset_hash'][:16]}`),"
        f" {w['n']} studies, {w['positives']} fractured"
        for name, w in worlds.items()
    )
    return f"""
## Across worlds
{table}

How to read it: the row is the model's training world, where its thresholds were fixed; each
column is all of a dataset from one test world, scored at those same thresholds (nothing is
refitted there). "possible" and "likely" give sensitivity/specificity at the high-sensitivity
and high-specificity operating points; AUC has its bootstrap 95% interval; ECE is the expected
calibration error of the study probability (10 equal-width bins). Figures in a world the model
was not trained in are what a hospital should expect at best: its archive is one more world
the model has never seen.

{data}
"""


def _subgroup_section(external: dict[str, Any]) -> str:
    if "subgroups" not in external:
        return ""
    table = markdown_subgroups(external["subgroups"], (HIGH_SENSITIVITY, HIGH_SPECIFICITY))
    return f"""
### Subgroups of the external test set
Aggregation `{external["selected"]}` at the bundle's two operating points ("possible" is
{HIGH_SENSITIVITY}, "likely" {HIGH_SPECIFICITY}), Wilson 95% intervals. Small groups have wide
intervals; a group far below the overall figures needs attention before use where it is common.

{table}
"""


def metrics_table(result: dict[str, Any], selected: str) -> str:
    """Study-level rows per aggregation, then the instance-level AUC (Markdown)."""
    rows = [
        "| aggregation | study AUC [95% CI] | sens / spec (high sens) [Wilson 95% CI] "
        "| sens / spec (high spec) [Wilson 95% CI] | bal acc |",
        "|---|---|---|---|---|",
    ]
    for method, levels in result["aggregations"].items():
        s = levels["study"]
        hs, hp = s["operating_points"][HIGH_SENSITIVITY], s["operating_points"][HIGH_SPECIFICITY]
        name = f"**{method}** (bundle)" if method == selected else method
        rows.append(
            f"| {name} | {s['auc']:.3f} [{s['auc_ci95'][0]:.3f}, {s['auc_ci95'][1]:.3f}] | "
            f"{format_rates(hs)} | {format_rates(hp)} | {s['balanced_accuracy']:.3f} |"
        )
    instance = result["aggregations"][selected]["instance"]
    rows += ["", f"Instance level: AUC {instance['auc']:.3f} [{instance['auc_ci95'][0]:.3f}, "
             f"{instance['auc_ci95'][1]:.3f}] on {instance['n']} views."]  # fmt: skip
    return "\n".join(rows)


def _split_table(dataset: Path) -> str:
    """Studies, fractured studies and views per split (Markdown)."""
    rows = read_views(dataset, ("all",))
    lines = ["| split | studies | fractured | views |", "|---|---|---|---|"]
    for split in ("train", "val", "test"):
        views = [r for r in rows if r.split == split]
        labels = {r.study: r.label for r in views}
        lines.append(f"| {split} | {len(labels)} | {sum(labels.values())} | {len(views)} |")
    return "\n".join(lines)
