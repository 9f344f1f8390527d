"""Bench: every bundle in every synthetic world, at its own thresholds, in one table.

    .venv/bin/python bench/cross_world.py --bundle demo=config/models/wrist-demo[:phantom] \\
        [--bundle NAME=PATH[:TRAINWORLD] ...] --world phantom --world projection --world mixed \\
        --studies 200 --seed 7001 --work var/cross-world [--workers 2] [--json OUT] \\
        [--syntaxes native] [--abstention [--node-path-only]] [--view-reader DIR] [--checks-only]

For each test world (a renderer of `generate_archive`): a synthetic archive of `--studies`
studies (explicit VR little endian unless `--syntaxes native`), prepared by the project's own
`prepare` with each bundle's preprocessing parameters (bundles carry them), then every bundle
evaluated on all of it (`train.evaluate.evaluate`, split "all") at the operating points the
bundle recorded in its training world: nothing is refitted on the test world, and a report that
used other thresholds is refused (`train.evaluation.cross_world`). TRAINWORLD labels the
bundle's row (default "phantom", where every bundle so far was trained). Independently of the
models, every non-corrupt instance of each archive is preprocessed with the bundles' parameters
and scored against its `truth.csv` (`train.evaluation.preprocessing_checks`).

Prints the bundles-by-worlds table (study AUC with its bootstrap 95% interval, sensitivity/
specificity at "possible" and "likely", ECE of the study probabilities over 10 bins), then the
preprocessing checks by world. `--json` writes all of it, machine-readable.

`--abstention` adds, per bundle, the figures along the node's own path with the bundle's OOD
detector (`train.evaluation.node_scores`, `train.evaluation.abstention_transfer`): every wrist
image of the archive preprocessed, scored and judged by the detector, then study AUC, ECE and
sensitivity/specificity at the recorded thresholds over all studies (detector off) and over the
analysed studies only, the abstention rates (studies, fractured studies, views), and the weak
groups of issue 18 (scaphoid fractures; intact wrists with an implant, a cast or neither).
`--node-path-only` skips prepare, the checks and the dataset evaluation; `--checks-only` keeps
only the preprocessing checks (with `--view-reader DIR`, also with the reader beside the
heuristics). Issue 18's run, 250
studies per world (seed 2002, `--syntaxes native`: the held-out recipe of `make demo-model`),
took 7 minutes that way with the archives made (generating them adds under a minute), and 14
minutes for the dataset path alone.

Work is kept under `--work` (`WORLD-STUDIES-sSEED/archive`, `.../dataset-PARAMS`,
`.../checks-PARAMS.json`): a second run reuses the archives, the prepared datasets (prepare is
resumable) and the preprocessing checks, and only evaluates the bundles again. Delete a world's
folder after its renderer changed: an archive is known by world, size and seed alone.

Time on this project's shared 2-core machine, one phantom world of 200 studies (374 images),
2 workers: generating 25 s, preparing 63 s, the preprocessing checks 61 s, evaluating the demo
bundle (an ensemble with test-time flip, ~85 ms per view on an idle core, slower under load)
130 s: about 5 minutes, and about 2 on a second run, which only evaluates again. Three worlds
take about three times as long (the projection renderer writes its archives about as fast).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.inference import ModelBundle
from pipeline.preprocess.params_io import params_from_dict, params_to_dict
from pipeline.preprocess.study import PreprocessParams
from pipeline.preprocess.view_reader import ViewReaderParams, reader_in_bundle
from train.dataset.prepare import prepare
from train.evaluate import evaluate
from train.evaluation.abstention_transfer import (
    confounder_attributes,
    markdown_transfer,
    study_outcomes,
    transfer_entry,
)
from train.evaluation.cross_world import cross_world_entry, markdown_cross_world
from train.evaluation.node_scores import score_archive
from train.evaluation.preprocessing_checks import (
    InstanceOutcome,
    PreprocessingReport,
    ViewOrientation,
    archive_outcomes,
    markdown_table,
    summarise,
)
from train.evaluation.subgroups import read_study_attributes
from train.phantoms.archive import generate_archive

DEFAULT_TRAINING_WORLD = "phantom"
SYNTAX_SETS = {
    "explicit_le": ("explicit_le",),
    "native": ("explicit_le", "implicit_le", "deflated", "rle"),
}
"""`--syntaxes`: explicit VR little endian only, or the lossless mix `make demo-model` uses (the
syntax is drawn per instance, so the same seed gives other images under each set)."""


@dataclass(frozen=True)
class Bundle:
    """A bundle to test: its label, folder, training world and recorded model.json."""

    name: str
    path: Path
    training_world: str
    info: dict[str, Any]

    @property
    def params(self) -> PreprocessParams:
        """The bundle's preprocessing, its view reader (if any) found inside the bundle."""
        params = params_from_dict(self.info["preprocess"])
        return replace(params, view_reader=reader_in_bundle(self.path, params.view_reader))

    @property
    def label(self) -> str:
        return f"{self.name} (trained: {self.training_world})"


def parse_bundle(text: str) -> Bundle:
    """NAME=PATH[:TRAINWORLD]; the folder must hold a model.json."""
    name, sep, rest = text.partition("=")
    if not (sep and name and rest):
        raise argparse.ArgumentTypeError(f"--bundle {text!r} is not NAME=PATH[:TRAINWORLD]")
    path, colon, world = rest.rpartition(":")
    if not colon or "/" in world or not path:
        path, world = rest, DEFAULT_TRAINING_WORLD
    try:
        info = json.loads((Path(path) / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--bundle {text!r}: no readable model.json") from exc
    return Bundle(name, Path(path), world, info)


def params_key(params: PreprocessParams) -> str:
    """A short digest naming a set of preprocessing parameters in the work folder."""
    text = json.dumps(params_to_dict(params), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def world_folder(world: str, args: argparse.Namespace) -> str:
    """`WORLD-STUDIES-sSEED`, plus `-SYNTAXES` for any set but explicit VR little endian."""
    suffix = "" if args.syntaxes == "explicit_le" else f"-{args.syntaxes}"
    return f"{world}-{args.studies}-s{args.seed}{suffix}"


def make_archive(folder: Path, world: str, args: argparse.Namespace) -> Path:
    """The world's archive, generated unless a complete one (truth.csv, written last) exists."""
    archive = folder / "archive"
    if (archive / "truth.csv").exists():
        return archive
    with tqdm(total=args.studies, unit="study", desc=f"{world}: generate") as bar:
        generate_archive(archive, studies=args.studies, seed=args.seed,
                         syntaxes=SYNTAX_SETS[args.syntaxes], workers=args.workers,
                         progress=bar.update, renderer=world)  # fmt: skip
    return archive


def make_dataset(folder: Path, archive: Path, params: PreprocessParams, work: Path,
                 workers: int, world: str) -> Path:  # fmt: skip
    """The archive prepared with `params` (resumes: prepared studies are not redone)."""
    dataset = folder / f"dataset-{params_key(params)}"
    with tqdm(unit="study", desc=f"{world}: prepare") as bar:
        prepare(archive, archive / "labels.csv", dataset, workers=workers, params=params,
                key_file=work / "pseudonym.key", progress=bar.update,
                on_total=lambda total: setattr(bar, "total", total))  # fmt: skip
    return dataset


def preprocessing_report(
    folder: Path, archive: Path, params: PreprocessParams, workers: int, world: str
) -> PreprocessingReport:
    """The preprocessing checks of the archive, from `checks-PARAMS.json` when done before."""
    cache = folder / f"checks-{params_key(params)}.json"
    if cache.exists():
        outcomes = [_outcome(item) for item in json.loads(cache.read_text(encoding="utf-8"))]
        return summarise(outcomes)
    with (archive / "truth.csv").open(newline="", encoding="utf-8") as handle:
        total = sum(1 for row in csv.DictReader(handle) if not row["corrupt"])
    with tqdm(total=total, unit="image", desc=f"{world}: preprocessing checks") as bar:
        outcomes = archive_outcomes(archive, params, workers=workers, progress=bar.update)
    cache.write_text(json.dumps([asdict(o) for o in outcomes]), encoding="utf-8")
    return summarise(outcomes)


def _outcome(item: dict[str, Any]) -> InstanceOutcome:
    views = tuple(ViewOrientation(**v) for v in item["views"])
    return InstanceOutcome(**{**item, "views": views})


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every step; returns what `--json` writes."""
    bundles: list[Bundle] = args.bundle
    args.work.mkdir(parents=True, exist_ok=True)
    param_sets = {params_key(b.params): b.params for b in bundles}
    check_sets = dict(param_sets)
    if args.view_reader:  # the same preprocessing with the learned second opinion, checks only
        reader = ViewReaderParams(path=str(args.view_reader))
        check_sets |= {f"{k}+reader": replace(p, view_reader=reader) for k, p in param_sets.items()}
    worlds: dict[str, Any] = {}
    datasets: dict[tuple[str, str], Path] = {}
    for world in args.world:
        started = time.perf_counter()
        folder = args.work / world_folder(world, args)
        archive = make_archive(folder, world, args)
        checks = {}
        for key, params in {} if args.node_path_only or args.checks_only else param_sets.items():
            datasets[world, key] = make_dataset(folder, archive, params, args.work, args.workers,
                                                world)  # fmt: skip
        for key, params in {} if args.node_path_only else check_sets.items():
            checks[key] = preprocessing_report(folder, archive, params, args.workers, world)
        worlds[world] = {"archive": str(archive), "checks": checks,
                         "seconds": time.perf_counter() - started}  # fmt: skip
    results: dict[str, dict[str, Any]] = {b.name: {} for b in bundles}
    skip_models = args.node_path_only or args.checks_only
    pairs = [] if skip_models else [(b, w) for b in bundles for w in args.world]
    for bundle, world in tqdm(pairs, unit="evaluation", desc="evaluate bundles"):
        dataset = datasets[world, params_key(bundle.params)]
        report = evaluate(bundle.path, dataset, split="all", n_boot=args.bootstrap)
        results[bundle.name][world] = {**cross_world_entry(report, bundle.info["thresholds"]),
                                       "aggregation": report["selected"],
                                       "dataset": str(dataset)}  # fmt: skip
    transfer: dict[str, dict[str, Any]] = {}
    for bundle in bundles if args.abstention else []:
        transfer[bundle.name] = {
            w: abstention_entry(bundle, Path(worlds[w]["archive"]), args.bootstrap)
            for w in args.world
        }
    return {"studies": args.studies, "seed": args.seed, "syntaxes": args.syntaxes,
            "worlds": worlds, "bundles": {
        b.name: {"path": str(b.path), "training_world": b.training_world,
                 "model": f"{b.info['name']} {b.info['version']}",
                 "preprocess": params_key(b.params), "results": results[b.name],
                 **({"abstention": transfer[b.name]} if transfer else {})}
        for b in bundles}}  # fmt: skip


def abstention_entry(bundle: Bundle, archive: Path, n_boot: int) -> dict[str, Any]:
    """`--abstention`: the archive's wrist images through the node's path (preprocessing, model,
    OOD detector), scored with the bundle's fixed temperatures and thresholds, detector off and
    on (`train.evaluation.abstention_transfer`)."""
    started = time.perf_counter()
    loaded = ModelBundle.load(bundle.path)
    scores = score_archive(loaded, archive)
    outcomes = study_outcomes(scores.studies, scores.logits.tolist(), scores.abstained.tolist(),
                              scores.labels, aggregation=loaded.info.aggregation,
                              study_temperature=loaded.info.study_temperature)  # fmt: skip
    attributes = confounder_attributes(
        read_study_attributes(archive / "truth.csv", ("fracture_kind", "implant", "cast"))
    )
    entry = transfer_entry(outcomes, loaded.info.thresholds, attributes, n_boot=n_boot,
                           studies_without_view=len(scores.labels) - len(outcomes))  # fmt: skip
    return {**entry, "detector": loaded.info.ood.get("kind", "none"),
            "seconds": time.perf_counter() - started}  # fmt: skip


def print_dataset_tables(result: dict[str, Any], bundles: list[Bundle], worlds: list[str],
                         rows: dict[str, Any]) -> None:  # fmt: skip
    """The bundles-by-worlds table of the prepared datasets, then the preprocessing checks."""
    print(f"\n{result['studies']} studies per world, seed {result['seed']}; study level at each "
          "bundle's own thresholds (sensitivity/specificity), ECE over 10 bins\n")  # fmt: skip
    print(markdown_cross_world(rows, worlds, "bundle / tested on"))
    print_checks(result, bundles, worlds)


def print_checks(result: dict[str, Any], bundles: list[Bundle], worlds: list[str]) -> None:
    """The preprocessing checks, a column per world (and per parameter set and reader)."""
    keys = list(result["worlds"][worlds[0]]["checks"])
    columns: dict[str, PreprocessingReport] = {}
    for key in keys:
        base = key.removesuffix("+reader")
        users = ", ".join(b.name for b in bundles if params_key(b.params) == base)
        for world in worlds:
            label = world if len(keys) == 1 else f"{world} ({users})"
            if key.endswith("+reader"):
                label += " + view reader"
            columns[label] = result["worlds"][world]["checks"][key]
    print("\npreprocessing against truth.csv (rate [Wilson 95% CI] hits/n)\n")
    print(markdown_table(columns))


def print_tables(result: dict[str, Any], bundles: list[Bundle], worlds: list[str]) -> None:
    """The bundles-by-worlds table, the preprocessing checks by world, then with `--abstention`
    each bundle's figures along the node's path."""
    rows = {b.label: result["bundles"][b.name]["results"] for b in bundles}
    if any(rows.values()):
        print_dataset_tables(result, bundles, worlds, rows)
    elif result["worlds"][worlds[0]]["checks"]:  # --checks-only
        print(f"\n{result['studies']} studies per world, seed {result['seed']}")
        print_checks(result, bundles, worlds)
    for bundle in bundles:
        entries = result["bundles"][bundle.name].get("abstention")
        if not entries:
            continue
        print(f"\n{bundle.label}, the node's path with its OOD detector: thresholds and "
              "temperatures as recorded, nothing refitted; Wilson 95% for rates\n")  # fmt: skip
        print(markdown_transfer(entries))
        for world, entry in entries.items():
            print(f"{world}: {entry['studies']} wrist studies scored, "
                  f"{entry['studies_without_view']} without a view (scope check or unreadable), "
                  f"{entry['seconds']:.0f} s")  # fmt: skip


def as_json(result: dict[str, Any]) -> dict[str, Any]:
    """`run`'s result with the preprocessing reports as plain JSON."""
    worlds = {
        world: {**value, "checks": {k: r.to_json() for k, r in value["checks"].items()}}
        for world, value in result["worlds"].items()
    }
    return {**result, "worlds": worlds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bundle", type=parse_bundle, action="append", required=True,
                        metavar="NAME=PATH[:TRAINWORLD]")  # fmt: skip
    parser.add_argument("--world", action="append", required=True,
                        choices=("phantom", "projection", "mixed"))  # fmt: skip
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7001)
    parser.add_argument("--syntaxes", choices=tuple(SYNTAX_SETS), default="explicit_le",
                        help="transfer syntaxes of the generated archives")  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path("var/cross-world"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--bootstrap", type=int, default=2000, help="AUC bootstrap resamples")
    parser.add_argument("--json", type=Path, metavar="OUT", help="write everything as JSON")
    parser.add_argument("--node-path-only", action="store_true",
                        help="with --abstention: skip prepare, the preprocessing checks and the "
                             "dataset evaluation (the node's path alone gives the detector-off "
                             "figures too)")  # fmt: skip
    parser.add_argument("--abstention", action="store_true",
                        help="also score each archive through the node's path with the bundle's "
                             "OOD detector: figures over all and over analysed studies, "
                             "abstention rates, weak subgroups")  # fmt: skip
    parser.add_argument(
        "--view-reader",
        type=Path,
        metavar="DIR",
        help="also score the preprocessing with a learned view reader",
    )
    parser.add_argument(
        "--checks-only",
        action="store_true",
        help="the preprocessing checks alone: no dataset, no model evaluated",
    )
    args = parser.parse_args()
    if len({b.name for b in args.bundle}) != len(args.bundle):
        parser.error("two --bundle options share a name")
    if args.node_path_only and not args.abstention:
        parser.error("--node-path-only needs --abstention")
    if args.checks_only and args.abstention:
        parser.error("--checks-only scores no model: it cannot be used with --abstention")
    args.world = list(dict.fromkeys(args.world))
    started = time.perf_counter()
    result = run(args)
    print_tables(result, args.bundle, args.world)
    print(f"\ntook {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(as_json(result), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
