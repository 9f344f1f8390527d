"""`dicomnode-train view-reader fit|evaluate`: train and measure the learned view reader."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEFAULT_CACHE = Path("var/view-reader/cache")


def add_view_reader_command(commands: Any) -> None:
    """Register `view-reader` (with `fit` and `evaluate`) on the `dicomnode-train` parser."""
    parser = commands.add_parser("view-reader", help="train or evaluate the learned view reader")
    sub = parser.add_subparsers(required=True, metavar="ACTION")

    fit = sub.add_parser("fit", help="train ViewNet on images drawn from the synthetic worlds")
    fit.add_argument(
        "--worlds",
        type=_worlds,
        default=("phantom", "projection"),
        help="comma-separated worlds to train on (phantom,projection)",
    )
    fit.add_argument("--images", type=int, default=3000, help="images per world (3000)")
    fit.add_argument("--seed", type=int, default=0, help="data and initialisation seed (0)")
    fit.add_argument("--epochs", type=int, default=12)
    fit.add_argument("--batch-size", type=int, default=64)
    fit.add_argument("--lr", type=float, default=2e-3)
    fit.add_argument("--out", type=Path, required=True, help="folder to write")
    fit.add_argument("--version", default="1.1.0", help="version recorded in model.json")
    fit.add_argument("--holdout-world", help="also measure on this world (not trained on)")
    fit.add_argument("--holdout-images", type=int, default=1000)
    fit.add_argument("--holdout-seed", type=int, help="seed of the held-out set (seed + 1)")
    fit.add_argument(
        "--leave-one-world-out",
        type=Path,
        nargs="+",
        default=[],
        metavar="RUN",
        help="runs trained on fewer worlds whose held-out figures this card records",
    )
    _common(fit)
    fit.set_defaults(run=_fit)

    evaluate = sub.add_parser("evaluate", help="figures of a trained reader on a fresh set")
    evaluate.add_argument("model", type=Path, metavar="DIR")
    evaluate.add_argument("--world", type=_world, required=True)
    evaluate.add_argument("--images", type=int, default=1000)
    evaluate.add_argument("--seed", type=int, required=True)
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")
    evaluate.add_argument(
        "--record", action="store_true", help="add the figures to DIR's model.json and card"
    )
    _common(evaluate)
    evaluate.set_defaults(run=_evaluate)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"folder of cached sample sets ({DEFAULT_CACHE})",
    )
    parser.add_argument("--workers", type=int, default=2, help="drawing processes (2)")


def _world(text: str) -> str:
    from train.view_reader.sampling import check_world

    try:
        return check_world(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _worlds(text: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in text.split(",") if part.strip())
    if not names:
        raise argparse.ArgumentTypeError("name at least one world")
    return tuple(_world(name) for name in names)


def _fit(args: argparse.Namespace) -> int:
    from train.view_reader.card import add_figures, add_leave_one_world_out, write_run
    from train.view_reader.evaluate import evaluate
    from train.view_reader.fit import FitSettings, fit

    if args.holdout_world and args.holdout_world in args.worlds:
        print(f"--holdout-world {args.holdout_world} is one of --worlds", file=sys.stderr)
        return 2
    settings = FitSettings(
        worlds=args.worlds,
        images=args.images,
        seed=args.seed,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        workers=args.workers,
    )
    result = fit(settings, args.cache)
    write_run(args.out, settings, result, args.version)
    print(f"best epoch {result.best_epoch}: validation {json.dumps(result.validation['all'])}")
    if args.holdout_world:
        world = _world(args.holdout_world)
        seed = args.seed + 1 if args.holdout_seed is None else args.holdout_seed
        figures = evaluate(
            args.out, world, args.holdout_images, seed, cache_dir=args.cache, workers=args.workers
        )
        add_figures(args.out, "held_out_worlds", figures)
        _print_table(figures)
    if args.leave_one_world_out:
        add_leave_one_world_out(args.out, args.leave_one_world_out)
    print(f"wrote {args.out}")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from train.view_reader.card import add_figures
    from train.view_reader.evaluate import evaluate

    try:
        figures = evaluate(
            args.model,
            args.world,
            args.images,
            args.seed,
            cache_dir=args.cache,
            workers=args.workers,
        )
    except ValueError as error:
        print(error, file=sys.stderr)
        return 2
    if args.record:
        add_figures(args.model, "tests", figures)
    if args.json:
        print(json.dumps(figures))
    else:
        _print_table(figures)
    return 0


def _print_table(figures: dict[str, Any]) -> None:
    d = figures["direction"]
    print(f"world {figures['world']} (seed {figures['seed']}, {figures['images']} images)")
    print(f"  wrist vs decoy accuracy   {figures['wrist_accuracy']}")
    print(f"  wrists kept               {figures['wrist_sensitivity']}")
    print(f"  decoys refused            {figures['decoy_specificity']}")
    for part, row in figures["by_body_part"].items():
        print(f"    {part:<12} {row['accuracy']}  (n={row['n']})")
    body = figures.get("body_part")
    if body:
        print(f"  body part accuracy        {body['accuracy']} (decoys {body['decoy_accuracy']})")
        for part, row in figures["by_body_part"].items():
            named = ", ".join(f"{k} {v}" for k, v in row["named_as"].items())
            print(f"    {part:<12} named as: {named}")
    print(f"  inversion accuracy        {figures['inversion_accuracy']}")
    print(
        f"  direction (n={d['n']}): within 10 deg {d['within_10_deg']}, within 20 deg "
        f"{d['within_20_deg']}, median {d['median_error_deg']} deg"
    )
