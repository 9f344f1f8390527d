"""The `fit`, `evaluate`, `export` and `ensemble` subcommands of `dicomnode-train`."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.inference import BundleInfo
    from train.evaluation.subgroups import SubgroupSpec
    from train.head_refit import HeadRefitSpec

ARCHS = (
    "resnet18",
    "resnet18_slim",
    "rx_lite",
    "rx_lite_bn",
    "rx_large",
    "rx_large_bn",
    "aggregator",
)


def add_training_commands(commands: Any) -> None:
    """Register fit, evaluate, export and ensemble on the `dicomnode-train` parser."""
    fit = commands.add_parser("fit", help="train a model on a prepared dataset")
    fit.add_argument("dataset", type=Path)
    fit.add_argument("--arch", choices=ARCHS, required=True)
    fit.add_argument("--out", type=Path, required=True, help="run folder")
    fit.add_argument("--epochs", type=int, default=10)
    fit.add_argument("--batch-size", type=int, default=32)
    fit.add_argument("--lr", type=float, default=1e-3)
    fit.add_argument("--weight-decay", type=float, default=0.0)
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--workers", type=int, default=2, help="DataLoader workers (2)")
    fit.add_argument(
        "--aggregation", default="max", help="study aggregation used to select the best epoch (max)"
    )
    fit.add_argument(
        "--invert-augmentation",
        action="store_true",
        help="random colour inversion p=0.5 (thesis Table 6.5 experiment)",
    )
    fit.add_argument("--init-from", type=Path, help="aggregator: single-view run to transfer")
    fit.add_argument("--trunk-arch", default="resnet18", help="aggregator: the trunk's arch")
    fit.add_argument("--freeze-trunk", action="store_true")
    fit.add_argument("--max-steps", type=int, default=0, help="cap steps per epoch (0: none)")
    fit.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    fit.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    fit.add_argument(
        "--input-size", metavar="WxH", help="model input (default: the size of the dataset's views)"
    )
    fit.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                     help="learning rate over the run (constant, as the thesis)")  # fmt: skip
    fit.add_argument("--warmup-epochs", type=int, default=0, help="linear lr warm-up (0)")
    fit.add_argument(
        "--preload", action="store_true",
        help="decode every view once into device memory and augment there (single-view models; "
        "for GPUs that outrun the DataLoader workers)",
    )  # fmt: skip
    fit.set_defaults(run=_fit)

    evaluate = commands.add_parser("evaluate", help="metrics of a run or bundle on a dataset")
    evaluate.add_argument("model", type=Path, metavar="RUN_OR_BUNDLE")
    evaluate.add_argument("dataset", type=Path)
    evaluate.add_argument("--split", choices=("test", "val", "all"), default="test")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument("--bootstrap", type=int, default=2000)
    _add_subgroup_arguments(evaluate, "--subgroups")
    evaluate.set_defaults(run=_evaluate)

    export = commands.add_parser("export", help="a run -> a model bundle for the node")
    export.add_argument("run_dir", type=Path, metavar="RUN")
    export.add_argument("--out", type=Path, required=True, help="bundle folder")
    export.add_argument("--aggregator-run", type=Path, help="a trained aggregator run to include")
    export.add_argument("--name", default="wrist-fracture")
    export.add_argument("--version", default="0.1.0")
    export.add_argument(
        "--external-test", type=Path, metavar="DATASET",
        help="a dataset prepared from an archive never used in training: evaluated whole, "
        "figures in the model card",
    )  # fmt: skip
    export.add_argument(
        "--synthetic",
        action="store_true",
        help="mark the model card: trained on synthetic data, not for clinical use",
    )
    _add_subgroup_arguments(export, "--external-subgroups")
    _add_world_test_argument(export)
    export.add_argument("--test-time-flip", action="store_true", help=_TEST_TIME_FLIP)
    _add_refit_arguments(export)
    export.set_defaults(run=_export)

    ensemble = commands.add_parser(
        "ensemble", help="exported bundles -> one bundle scoring views by their mean logit"
    )
    ensemble.add_argument("members", type=Path, nargs="+", metavar="BUNDLE")
    ensemble.add_argument("--out", type=Path, required=True, help="bundle folder")
    ensemble.add_argument(
        "--calibration", type=Path, required=True, metavar="DATASET",
        help="prepared data none of the members trained on: fixes aggregation, temperatures "
        "and thresholds",
    )  # fmt: skip
    ensemble.add_argument("--calibration-split", choices=("val", "test", "all"), default="val")
    ensemble.add_argument("--name", default="wrist-fracture")
    ensemble.add_argument("--version", default="0.1.0")
    ensemble.add_argument("--external-test", type=Path, metavar="DATASET",
                          help="an archive never used in training or calibration")  # fmt: skip
    ensemble.add_argument(
        "--synthetic", action="store_true",
        help="mark the model card: synthetic data, not for clinical use",
    )  # fmt: skip
    _add_subgroup_arguments(ensemble, "--external-subgroups")
    _add_world_test_argument(ensemble)
    ensemble.add_argument("--test-time-flip", action="store_true", help=_TEST_TIME_FLIP)
    _add_refit_arguments(ensemble)
    ensemble.set_defaults(run=_ensemble)


_TEST_TIME_FLIP = (
    "score every view and its mirror image and average the logits (twice the "
    "inference time); calibration and thresholds are fixed on those scores"
)


def _add_refit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--refit-head", type=Path, metavar="DATASET",
        help="refit the last layer (each member's) with group balance on all of this prepared "
        "dataset (not the calibration data, not the training data) before calibration",
    )  # fmt: skip
    parser.add_argument(
        "--refit-groups", type=Path, metavar="CSV",
        help="study attributes of the --refit-head data, keyed by study_instance_uid",
    )  # fmt: skip
    parser.add_argument(
        "--refit-by", default="", metavar="COL[,COL...]",
        help="the --refit-groups columns that, with the label, make the groups (e.g. implant,cast)",
    )  # fmt: skip


def _add_world_test_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--world-test", action="append", default=[], metavar="NAME=DATASET",
        help="a dataset prepared from world NAME (e.g. another renderer), evaluated whole at the "
        "bundle's own thresholds for the model card's 'Across worlds' table; repeatable",
    )  # fmt: skip


def _world_tests(args: argparse.Namespace) -> dict[str, Path]:
    """`--world-test NAME=DATASET` options as {NAME: DATASET}; ValueError when malformed."""
    worlds: dict[str, Path] = {}
    for text in args.world_test:
        name, sep, dataset = text.partition("=")
        name = name.strip()
        if not (sep and name and dataset):
            raise ValueError(f"--world-test {text!r} is not NAME=DATASET")
        if name in worlds:
            raise ValueError(f"--world-test names world {name!r} twice")
        worlds[name] = Path(dataset)
    return worlds


def _add_subgroup_arguments(parser: argparse.ArgumentParser, option: str) -> None:
    parser.add_argument(
        option, type=Path, metavar="CSV", dest="subgroups",
        help="study attributes keyed by study_instance_uid (e.g. a synthetic archive's "
        "truth.csv): sensitivity and specificity within each group of the evaluated data",
    )  # fmt: skip
    parser.add_argument("--by", default="", metavar="COL[,COL...]",
                        help=f"the {option} columns to group by")  # fmt: skip


def _subgroups(args: argparse.Namespace) -> SubgroupSpec | None:
    """The subgroup options as a spec; ValueError when the CSV or its columns are missing."""
    from train.evaluation.subgroups import SubgroupSpec

    if args.subgroups is None:
        if args.by:
            raise ValueError("--by names the columns of a subgroups CSV; give the CSV too")
        return None
    return SubgroupSpec(args.subgroups, tuple(c.strip() for c in args.by.split(",") if c.strip()))


def _head_refit(args: argparse.Namespace) -> HeadRefitSpec | None:
    """The refit options as a spec; ValueError unless all three or none are given."""
    from train.evaluation.subgroups import SubgroupSpec
    from train.head_refit import HeadRefitSpec

    given = [args.refit_head is not None, args.refit_groups is not None, bool(args.refit_by)]
    if not any(given):
        return None
    if not all(given):
        raise ValueError("a head refit needs --refit-head, --refit-groups and --refit-by together")
    columns = tuple(c.strip() for c in args.refit_by.split(",") if c.strip())
    return HeadRefitSpec(args.refit_head, SubgroupSpec(args.refit_groups, columns))


def _fit(args: argparse.Namespace) -> int:
    import torch

    from train.data.augment import AugmentParams
    from train.fit import FitConfig, fit

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.input_size:
        width, height = (int(v) for v in args.input_size.lower().split("x"))
    else:
        width, height = _view_size(args.dataset)
    config = FitConfig(
        dataset=str(args.dataset), arch=args.arch, epochs=args.epochs,
        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay, seed=args.seed,
        workers=args.workers, aggregation=args.aggregation,
        init_from=str(args.init_from or ""), trunk_arch=args.trunk_arch,
        freeze_trunk=args.freeze_trunk, max_steps=args.max_steps, schedule=args.schedule,
        warmup_epochs=args.warmup_epochs, preload=args.preload,
        augment=AugmentParams(height=height, width=width, invert=args.invert_augmentation),
    )  # fmt: skip
    best = fit(config, args.out, resume=args.resume)
    if best.get("epoch"):
        print(f"best epoch {best['epoch']}: validation study AUC {best['val_auc_study']:.4f}; "
              f"run folder {args.out}")  # fmt: skip
    return 0


def _view_size(dataset: Path) -> tuple[int, int]:
    """Width and height of the dataset's first view (prepare writes them all alike)."""
    import csv

    from PIL import Image

    with (dataset / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        first = next(csv.DictReader(handle), None)
    if first is None:
        raise SystemExit(f"dicomnode-train fit: {dataset} has no views")
    with Image.open(dataset / first["path"]) as image:
        return image.size


def _evaluate(args: argparse.Namespace) -> int:
    from train.evaluate import evaluate, format_table

    try:
        report = evaluate(args.model, args.dataset, split=args.split, n_boot=args.bootstrap,
                          subgroups=_subgroups(args))  # fmt: skip
    except ValueError as exc:
        print(f"dicomnode-train evaluate: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report))
    else:
        print(format_table(report))
    return 0


def _export(args: argparse.Namespace) -> int:
    from train.export import export

    return _write_bundle("export", args.out, lambda: export(
        args.run_dir, args.out, name=args.name, version=args.version,
        aggregator_run=args.aggregator_run, synthetic=args.synthetic,
        external_test=args.external_test, external_subgroups=_subgroups(args),
        world_tests=_world_tests(args), test_time_flip=args.test_time_flip,
        head_refit=_head_refit(args),
    ))  # fmt: skip


def _ensemble(args: argparse.Namespace) -> int:
    from train.ensemble import export_ensemble

    return _write_bundle("ensemble", args.out, lambda: export_ensemble(
        args.members, args.out, calibration=args.calibration,
        calibration_split=args.calibration_split, name=args.name, version=args.version,
        synthetic=args.synthetic, external_test=args.external_test,
        external_subgroups=_subgroups(args), world_tests=_world_tests(args),
        test_time_flip=args.test_time_flip, head_refit=_head_refit(args),
    ))  # fmt: skip


def _write_bundle(command: str, out: Path, write: Callable[[], BundleInfo]) -> int:
    """Run a bundle writer; a refusal (ValueError) is one line on stderr and exit status 2."""
    try:
        info = write()
    except ValueError as exc:
        print(f"dicomnode-train {command}: {exc}", file=sys.stderr)
        return 2
    print(f"exported {info.name} {info.version} ({info.arch}, aggregation {info.aggregation}) "
          f"to {out}")  # fmt: skip
    return 0
