"""The `ood-fit` subcommand of `dicomnode-train`: fit a bundle's out-of-distribution detector."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from pipeline.ood import FEATURE_LAYERS, SCORE_KINDS
from train.ood_fit import DEFAULT_LAYER, DEFAULT_MAX_RATE, RATE_BOUNDS


def add_ood_command(commands: Any) -> None:
    """Register `ood-fit` on the `dicomnode-train` parser."""
    fit = commands.add_parser(
        "ood-fit", help="fit a bundle's out-of-distribution detector (abstention) on archives"
    )
    fit.add_argument("--bundle", type=Path, required=True, help="bundle folder to update")
    fit.add_argument(
        "--archive",
        type=Path,
        required=True,
        nargs="+",
        help="in-distribution archives (truth.csv): the Gaussian is fitted on their wrists",
    )
    fit.add_argument(
        "--archive-validation",
        type=Path,
        nargs="+",
        default=[],
        help="other in-distribution archives for the threshold (default: every other study "
        "of --archive, the rest fits)",
    )
    fit.add_argument("--score", choices=SCORE_KINDS, default="mahalanobis")
    fit.add_argument("--layer", choices=FEATURE_LAYERS, default=DEFAULT_LAYER)
    fit.add_argument(
        "--max-rate",
        type=float,
        default=DEFAULT_MAX_RATE,
        help="in-distribution abstention rate the threshold allows (0.02)",
    )
    fit.add_argument(
        "--rate-bound",
        choices=RATE_BOUNDS,
        default="upper",
        help="hold the upper Wilson 95%% bound of the validation share to --max-rate (upper, "
        "the default: the rate on new in-distribution views stays under it with confidence) "
        "or the share measured (point)",
    )
    fit.add_argument("--source", default="", help="how the archives were made, recorded")
    fit.set_defaults(run=_ood_fit)


def _ood_fit(args: argparse.Namespace) -> int:
    from train.ood_fit import fit_bundle_detector

    try:
        detector = fit_bundle_detector(
            args.bundle,
            args.archive,
            args.archive_validation,
            kind=args.score,
            layer=args.layer,
            max_rate=args.max_rate,
            rate_bound=args.rate_bound,
            source=args.source,
        )
    except (ValueError, OSError) as exc:
        print(f"dicomnode-train ood-fit: {exc}", file=sys.stderr)
        return 2
    v = detector.validation
    low, high = v["rate_ci95"]
    print(f"OOD detector {detector.kind} ({detector.layer} features) written to {args.bundle}")
    print(f"threshold {detector.threshold:.4g}, fitted on {v['fit_views']} views")
    print(
        f"in-distribution abstention on validation: {v['abstained']}/{v['views']} = "
        f"{v['rate']:.2%} [Wilson 95% {low:.2%}, {high:.2%}] (target <= {v['target_rate']:.0%}, "
        f"{'upper bound' if v.get('rate_bound') == 'upper' else 'share'} held to it)"
    )
    return 0
