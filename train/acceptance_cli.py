"""`dicomnode-train accept`: site acceptance of a bundle on the hospital's labelled archive."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

PROG = "dicomnode-train accept"
LABEL_VALUES = {"1": 1, "fracture": 1, "0": 0, "no fracture": 0, "no_fracture": 0}


def add_accept_command(commands: Any) -> None:
    """Register `accept` on the `dicomnode-train` sub-command parser."""
    from train.acceptance import MAX_ECE, MAX_NOT_ANALYSED, MIN_PER_CLASS

    accept = commands.add_parser(
        "accept",
        help="site acceptance: a bundle's figures on local labelled studies vs its model card",
    )
    accept.add_argument("bundle", type=Path, help="model bundle folder")
    accept.add_argument("archive", type=Path, help="folder of DICOM studies (recursive)")
    source = accept.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--labels",
        type=Path,
        metavar="CSV",
        help="study_uid,label with 0/1 or 'fracture'/'no fracture'",
    )
    source.add_argument(
        "--reports",
        type=Path,
        metavar="CSV",
        help="study_uid,report_text from the RIS, labelled by rules (train/report_labels.py)",
    )
    accept.add_argument("--json", type=Path, metavar="OUT", help="also write the report as JSON")
    accept.add_argument(
        "--min-per-class",
        type=int,
        default=MIN_PER_CLASS,
        help=f"fewest fractured and intact analysed studies ({MIN_PER_CLASS})",
    )
    accept.add_argument(
        "--max-ece",
        type=float,
        default=MAX_ECE,
        help=f"ECE limit where the card records none ({MAX_ECE})",
    )
    accept.add_argument(
        "--max-not-analysed",
        type=float,
        default=MAX_NOT_ANALYSED,
        help=f"not-analysed limit where the card records none ({MAX_NOT_ANALYSED})",
    )
    accept.add_argument(
        "--recalibrate",
        type=Path,
        metavar="OUT_BUNDLE",
        help="refit the calibration on the local data and write a NEW bundle",
    )
    accept.add_argument(
        "--recalibrate-views",
        action="store_true",
        help="with --recalibrate: refit the view temperature too",
    )
    accept.add_argument(
        "--holdout-fraction",
        type=float,
        default=0.0,
        help="with --recalibrate: share of studies kept out of the fit to check"
        " the recalibrated bundle on (0: check on the same data, optimistic)",
    )
    accept.add_argument("--n-boot", type=int, default=2000, help="bootstrap resamples (2000)")
    accept.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    accept.set_defaults(run=run_accept)


def read_labels(path: Path) -> dict[str, int]:
    """A labels CSV: study_uid (or study_instance_uid) and label; ValueError naming the line."""
    from train.report_labels import study_uid_column

    labels: dict[str, int] = {}
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        column = study_uid_column(path, reader.fieldnames)
        if "label" not in (reader.fieldnames or ()):
            raise ValueError(f"{path}: needs a 'label' column")
        for line, row in enumerate(reader, start=2):
            value = (row["label"] or "").strip().lower()
            if value not in LABEL_VALUES:
                raise ValueError(
                    f"{path}, line {line}: label {row['label']!r} is not 0/1 or"
                    " 'fracture'/'no fracture'"
                )
            labels[row[column].strip()] = LABEL_VALUES[value]
    return labels


def run_accept(args: argparse.Namespace) -> int:
    """Run the acceptance (and the recalibration, when asked); 0 pass, 1 fail, 2 bad input."""
    from pipeline.inference import BundleError, ModelBundle
    from train.acceptance import (
        assess_scores,
        card_figures,
        format_report,
        group_studies,
        score_studies,
        scores_json,
    )
    from train.report_labels import label_reports

    if args.recalibrate is None and (args.recalibrate_views or args.holdout_fraction):
        return _usage("--recalibrate-views and --holdout-fraction need --recalibrate")
    if not 0.0 <= args.holdout_fraction < 1.0:
        return _usage(f"--holdout-fraction {args.holdout_fraction} is not in [0, 1)")
    if args.recalibrate is not None and args.recalibrate.exists():
        return _usage(f"--recalibrate {args.recalibrate} exists; name a new folder")
    try:
        bundle = ModelBundle.load(args.bundle)
        if args.labels is not None:
            labels, label_note = read_labels(args.labels), f"labels from {args.labels}"
        else:
            reports = label_reports(args.reports)
            labels = reports.labels
            label_note = (
                f"labels from {len(reports.labels) + len(reports.unlabelled)} reports in"
                f" {args.reports} by the rule-based labeller: {len(reports.labels)} labelled,"
                f" {len(reports.unlabelled)} could not be labelled and are excluded ("
                + ", ".join(f"{n} {why}" for why, n in sorted(reports.reasons.items()))
                + ")"
            )
    except (BundleError, ValueError, OSError) as exc:
        return _usage(str(exc))
    studies, unreadable = group_studies(args.archive)
    matched = set(studies) & set(labels)
    notes = [
        label_note,
        f"{len(matched)} labelled studies found in {args.archive};"
        f" {len(set(labels) - matched)} labels have no images,"
        f" {len(set(studies) - matched)} studies have no label,"
        f" {unreadable} files have no readable header",
    ]
    print("\n".join(notes))
    with tqdm(total=len(matched), unit="study", desc="accept") as bar:
        scores = score_studies(bundle, studies, labels, progress=bar.update)
    info = bundle.info
    card = card_figures(info, max_ece=args.max_ece, max_not_analysed=args.max_not_analysed)
    options = {"min_per_class": args.min_per_class, "n_boot": args.n_boot, "seed": args.seed}
    report = assess_scores(scores, info, card, **options)
    print(format_report(report, f"site acceptance of {info.name} {info.version}"))
    result: dict[str, Any] = {
        "bundle": {"name": info.name, "version": info.version, "path": str(args.bundle)},
        "archive": str(args.archive),
        "notes": notes,
        "acceptance": report.to_json(),
        "studies": scores_json(scores),
    }
    passed = report.passed
    if args.recalibrate is not None:
        recalibrated = _recalibrate(args, bundle, scores, card, options)
        if recalibrated is None:
            passed = False
        else:
            result["recalibration"] = recalibrated
            passed = bool(recalibrated["acceptance"]["passed"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0 if passed else 1


def _recalibrate(
    args: argparse.Namespace, bundle: Any, scores: list[Any], card: Any, options: dict[str, Any]
) -> dict[str, Any] | None:
    from train.acceptance import assess_scores, format_report
    from train.recalibrate import (
        changes,
        fit_recalibration,
        holdout_split,
        write_recalibrated_bundle,
    )

    info = bundle.info
    fit_part, check_part = holdout_split(scores, args.holdout_fraction)
    analysed = [s for s in fit_part if s.analysed]
    positives = sum(s.label for s in analysed)
    if min(positives, len(analysed) - positives) < args.min_per_class:
        print(
            f"\nnot recalibrated: the fitting part has {positives} fractured and"
            f" {len(analysed) - positives} intact analysed studies, at least"
            f" {args.min_per_class} of each are needed",
        )
        return None
    recal = fit_recalibration(fit_part, views=args.recalibrate_views)
    if args.holdout_fraction:
        check = (
            f"{len(check_part)} held-out local studies (--holdout-fraction {args.holdout_fraction})"
        )
    else:
        check = "the same studies it was fitted on (optimistic)"
    version = write_recalibrated_bundle(args.bundle, args.recalibrate, info, recal, check=check)
    print(
        f"\nrecalibrated on {recal.studies} local studies ({recal.positives} fractured);"
        f" new bundle {info.name} {version}: {args.recalibrate}"
    )
    changed = changes(info, recal)
    for name, (old, new) in changed.items():
        print(f"  {name}: {old:.4f} -> {new:.4f}")
    if not args.holdout_fraction:
        print(
            "warning: the recalibrated bundle is checked on the data it was fitted on, which"
            " flatters it; use --holdout-fraction (e.g. 0.5) for an honest check"
        )
    report = assess_scores(
        check_part,
        info,
        card,
        study_temperature=recal.study_temperature,
        thresholds=recal.thresholds,
        **options,
    )
    print(format_report(report, f"site acceptance of {info.name} {version} on {check}"))
    return {
        "bundle": str(args.recalibrate),
        "version": version,
        "checked_on": check,
        "changes": {name: {"old": old, "new": new} for name, (old, new) in changed.items()},
        "acceptance": report.to_json(),
    }


def _usage(message: str) -> int:
    print(f"{PROG}: {message}", file=sys.stderr)
    return 2
