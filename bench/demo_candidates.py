"""Train the demo-model candidates side by side on one GPU and compare them.

Three synthetic archives are prepared, as `make demo-model` does: training (seed 1001),
calibration (seed 3003) and the external test set (seed 2002); none is used for another's job.
Every architecture in `--archs` is trained with the same recipe at the same time (`fit
--preload`: each process keeps its views in GPU memory, so they share the GPU rather than the
CPU) and exported. Every pair of finished runs whose weights fit the 10 MB demo limit together
is also made into an ensemble (`dicomnode-train ensemble`, calibrated on the calibration
archive). The winner is chosen *before* the external set is read: the best study AUC on the
calibration archive (each candidate with its best aggregation there) among the candidates that
finished and fit the limit; with `--calibration-studies 0` there are no ensembles and the best
validation study AUC decides. Optionally the learned study aggregator is trained on the best
single model's trunk and compared with the hand-made aggregations (a separate bundle).

    python3 bench/demo_candidates.py --work /tmp/cand --out OUT [--studies 6000] [--epochs 40]

Prints a Markdown table; writes `summary.json`, the winner's bundle (`bundle.tar.gz`), an
archive of every run's metrics and plots (plus the small bundles) and the aggregator's bundle
under --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

BUNDLE_LIMIT_BYTES = 10 * 1024 * 1024
DEFAULT_FIT = "--batch-size 32 --lr 1e-3 --schedule cosine --warmup-epochs 2 --preload"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--studies", type=int, default=6000)
    parser.add_argument("--heldout-studies", type=int, default=2400,
                        help="the external test, as in make demo-model")  # fmt: skip
    parser.add_argument("--calibration-studies", type=int, default=800,
                        help="the ensembles' calibration archive (0: no ensembles)")  # fmt: skip
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--archs", default="rx_large_bn,resnet18_slim,resnet18")
    parser.add_argument("--fit", default=DEFAULT_FIT, help="fit flags shared by every run")
    parser.add_argument(
        "--deadline", type=float, default=330.0,
        help="seconds the training may take; unfinished runs are stopped",
    )  # fmt: skip
    parser.add_argument("--aggregator-epochs", type=int, default=0, help="0: no aggregator")
    parser.add_argument(
        "--aggregator-before", type=float, default=float("inf"),
        help="train the aggregator only if fewer seconds than this have passed",
    )  # fmt: skip
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--train", default=f"{sys.executable} -m train.cli",
                        help="how to call dicomnode-train")  # fmt: skip
    args = parser.parse_args()
    train = shlex.split(args.train)
    work, out = args.work, args.out
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "log.txt").open("a", encoding="utf-8")

    def run(*command: str | Path | int, quiet: bool = True) -> None:
        started = time.perf_counter()
        result = subprocess.run([*train, *map(str, command)], capture_output=True, text=True,
                                check=False)  # fmt: skip
        log.write(f"$ {' '.join(map(str, command))}\n{result.stdout[-4000:]}\n")
        if result.returncode != 0:
            log.write(result.stderr[-4000:])
            raise SystemExit(f"failed: {command[0]} (see log.txt)")
        if not quiet:
            print(result.stdout.strip())
        log.write(f"({time.perf_counter() - started:.0f} s)\n")
        log.flush()

    timings: dict[str, float] = {}
    started = time.perf_counter()
    key = work / "pseudonym.key"
    for name, studies, seed in (("archive", args.studies, 1001),
                                ("calibration", args.calibration_studies, 3003),
                                ("heldout", args.heldout_studies, 2002)):  # fmt: skip
        if studies and not (work / f"{name}-dataset" / "metadata.csv").exists():
            run("synth", "--out", work / name, "--studies", studies, "--seed", seed,
                "--syntaxes", "native", "--workers", args.workers)  # fmt: skip
            run("prepare", work / name, "--labels", work / name / "labels.csv",
                "--out", work / f"{name}-dataset", "--key-file", key,
                "--workers", args.workers)  # fmt: skip
    timings["data_seconds"] = time.perf_counter() - started
    dataset, heldout = work / "archive-dataset", work / "heldout-dataset"
    calibration = work / "calibration-dataset" if args.calibration_studies else None

    archs = args.archs.split(",")
    fits: dict[str, subprocess.Popen[str]] = {}
    began = time.perf_counter()
    for arch in archs:
        command = [*train, "fit", str(dataset), "--arch", arch, "--out", str(work / f"run-{arch}"),
                   "--epochs", str(args.epochs), *shlex.split(args.fit)]  # fmt: skip
        log.write(f"$ {' '.join(command)}\n")
        errors = (work / f"fit-{arch}.err").open("w")
        fits[arch] = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, text=True)
    finished: dict[str, float] = {}
    while len(finished) < len(fits) and time.perf_counter() - began < args.deadline:
        for arch, process in fits.items():
            if arch not in finished and process.poll() is not None:
                finished[arch] = time.perf_counter() - began
        time.sleep(1.0)
    for arch, process in fits.items():
        if arch not in finished:
            process.kill()
            process.wait()
    timings["training_wall_seconds"] = time.perf_counter() - began

    candidates: dict[str, dict[str, Any]] = {}
    for arch in archs:
        run_dir = work / f"run-{arch}"
        metrics_file = run_dir / "metrics.jsonl"
        if not metrics_file.exists():
            continue
        rows = [json.loads(line) for line in metrics_file.read_text().splitlines()]
        best = max(rows, key=lambda r: r["val_auc_study"])
        complete = fits[arch].returncode == 0 and rows[-1]["epoch"] == args.epochs
        candidates[arch] = {
            "arch": arch, "complete": complete, "epochs_run": rows[-1]["epoch"],
            "best_epoch": best["epoch"], "val_auc_study_max": best["val_auc_study"],
            "train_seconds": finished.get(arch),
            "median_images_per_second": sorted(r["samples_per_second"] for r in rows)[
                len(rows) // 2],
        }  # fmt: skip
    exports = {}
    for arch in candidates:
        bundle = work / f"bundle-{arch}"
        command = [*train, "export", str(work / f"run-{arch}"), "--out", str(bundle), "--name",
                   "wrist-demo", "--version", "2.1.0", "--synthetic", "--external-test",
                   str(heldout)]  # fmt: skip
        exports[arch] = subprocess.Popen(command, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, text=True)  # fmt: skip
    for arch, process in exports.items():
        output, _ = process.communicate()
        log.write(output[-3000:])
        if process.returncode != 0:
            candidates[arch]["export_failed"] = True
            continue
        info = json.loads((work / f"bundle-{arch}" / "model.json").read_text())
        size = (work / f"bundle-{arch}" / "weights.pt").stat().st_size
        candidates[arch].update(
            bundle_bytes=size, aggregation=info["aggregation"],
            validation_study_auc=info["metrics"]["validation_study_auc"][info["aggregation"]],
            test=info["metrics"]["test"], external=info["metrics"]["external_test"],
        )  # fmt: skip
    singles = [
        a for a, c in candidates.items() if c["complete"] and not c.get("export_failed")
    ]  # fmt: skip
    if calibration is not None:
        for arch in singles:
            report = evaluate_json(train, work / f"bundle-{arch}", calibration)
            candidates[arch]["calibration_study_auc"] = max(
                levels["study"]["auc"] for levels in report["aggregations"].values()
            )
        for pair in itertools.combinations(singles, 2):
            if sum(candidates[a]["bundle_bytes"] for a in pair) >= BUNDLE_LIMIT_BYTES:
                continue
            name = "ensemble:" + "+".join(pair)
            bundle = work / f"bundle-{'+'.join(pair)}"
            run("ensemble", *(work / f"bundle-{a}" for a in pair), "--out", bundle,
                "--name", "wrist-demo", "--version", "2.1.0", "--synthetic", "--calibration",
                calibration, "--calibration-split", "all", "--external-test", heldout)  # fmt: skip
            info = json.loads((bundle / "model.json").read_text())
            candidates[name] = {
                "arch": name, "complete": True, "bundle": bundle.name,
                "epochs_run": min(candidates[a]["epochs_run"] for a in pair),
                "train_seconds": None, "median_images_per_second": None,
                "bundle_bytes": (bundle / "weights.pt").stat().st_size,
                "aggregation": info["aggregation"],
                "calibration_study_auc": info["metrics"]["validation_study_auc"][
                    info["aggregation"]],
                "external": info["metrics"]["external_test"],
            }  # fmt: skip
    eligible = [
        c for c in candidates.values()
        if c["complete"] and not c.get("export_failed") and c["bundle_bytes"] < BUNDLE_LIMIT_BYTES
    ]  # fmt: skip
    # Chosen on validation (or calibration) data only: the external test set plays no part.
    criterion = "calibration_study_auc" if calibration is not None else "validation_study_auc"
    winner = max(eligible, key=lambda c: c[criterion])["arch"] if eligible else None
    best_single = max((candidates[a] for a in singles if a in {c["arch"] for c in eligible}),
                      key=lambda c: c[criterion], default=None)  # fmt: skip

    summary = {"winner": winner, "criterion": criterion, "timings": timings,
               "candidates": candidates, "aggregator": {}, "epochs": args.epochs,
               "fit": args.fit, "studies": args.studies}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(markdown(summary), flush=True)
    if winner:
        with tarfile.open(out / "bundle.tar.gz", "w:gz") as tar:
            tar.add(work / candidates[winner].get("bundle", f"bundle-{winner}"), arcname="bundle")
    with tarfile.open(out / "runs.tar.gz", "w:gz") as tar:
        for arch in singles:
            for name in ("metrics.jsonl", "curves.png", "roc.png", "config.json"):
                path = work / f"run-{arch}" / name
                if path.exists():
                    tar.add(path, arcname=f"run-{arch}/{name}")
            bundle = work / f"bundle-{arch}"
            if candidates[arch].get("bundle_bytes", BUNDLE_LIMIT_BYTES) < BUNDLE_LIMIT_BYTES:
                for path in bundle.iterdir():
                    tar.add(path, arcname=f"bundle-{arch}/{path.name}")
            else:
                tar.add(bundle / "model.json", arcname=f"bundle-{arch}/model.json")
    elapsed = time.perf_counter() - started
    if best_single and args.aggregator_epochs and elapsed < args.aggregator_before:
        trunk = best_single["arch"]  # the aggregator pools one trunk's features
        agg_run = work / f"run-aggregator-{trunk}"
        run("fit", dataset, "--arch", "aggregator", "--init-from", work / f"run-{trunk}",
            "--trunk-arch", trunk, "--out", agg_run, "--epochs", args.aggregator_epochs,
            "--batch-size", "16", "--lr", "1e-4", "--workers", min(args.workers, 14))  # fmt: skip
        agg_bundle = work / f"bundle-{trunk}-aggregator"
        run("export", work / f"run-{trunk}", "--out", agg_bundle, "--aggregator-run", agg_run,
            "--name", "wrist-demo-aggregator", "--version", "2.1.0", "--synthetic",
            "--external-test", heldout)  # fmt: skip
        info = json.loads((agg_bundle / "model.json").read_text())
        summary["aggregator"] = {
            "trunk": trunk, "selected": info["aggregation"],
            "validation_study_auc": info["metrics"]["validation_study_auc"],
            "external": info["metrics"]["external_test"],
        }  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
        print(markdown(summary).split("\n")[-1])
        with tarfile.open(out / "aggregator-bundle.tar.gz", "w:gz") as tar:
            tar.add(agg_bundle, arcname=agg_bundle.name)
    return 0 if summary["winner"] else 1


def evaluate_json(train: list[str], bundle: Path, dataset: Path) -> dict[str, Any]:
    """`evaluate BUNDLE DATASET --split all --json`, parsed."""
    result = subprocess.run([*train, "evaluate", str(bundle), str(dataset), "--split", "all",
                             "--json", "--bootstrap", "200"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def markdown(summary: dict[str, Any]) -> str:
    """The comparison as a Markdown table (external test set, each aggregation)."""
    lines = [
        f"winner (best {summary['criterion'].replace('_', ' ')}, complete, weights < 10 MB): "
        f"{summary['winner']}",
        f"data {summary['timings']['data_seconds']:.0f} s; training wall "
        f"{summary['timings']['training_wall_seconds']:.0f} s; {summary['epochs']} epochs, "
        f"fit {summary['fit']}",
        "",
        "| model | epochs | train s | img/s | MB | val AUC | cal. AUC | aggregation "
        "| ext. AUC [95% CI] | sens/spec (high sens) | sens/spec (high spec) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["candidates"].values():
        if "external" not in c:
            lines.append(f"| {c['arch']} | {c['epochs_run']} | - | - | - | - | export failed |")
            continue
        for method, levels in c["external"]["aggregations"].items():
            s = levels["study"]
            hs, hp = (
                s["operating_points"]["high_sensitivity"],
                s["operating_points"]["high_specificity"],
            )
            mark = " (bundle)" if method == c["aggregation"] else ""
            train_s = f"{c['train_seconds']:.0f}" if c["train_seconds"] else "-"
            lines.append(
                f"| {c['arch']} | {c['epochs_run']} | {train_s} | "
                f"{_figure(c['median_images_per_second'], '.0f')} | "
                f"{c['bundle_bytes'] / 1e6:.1f} | {_figure(c.get('validation_study_auc'))} | "
                f"{_figure(c.get('calibration_study_auc'))} | {method}{mark} | {s['auc']:.3f} "
                f"[{s['auc_ci95'][0]:.3f}, {s['auc_ci95'][1]:.3f}] | "
                f"{hs['sensitivity']:.3f}/{hs['specificity']:.3f} | "
                f"{hp['sensitivity']:.3f}/{hp['specificity']:.3f} |"
            )
    aggregator = summary["aggregator"]
    if aggregator:
        learned = aggregator["external"]["aggregations"].get("learned", {}).get("study")
        if learned:
            lines.append(
                f"\nlearned aggregator on {aggregator['trunk']}: external study AUC "
                f"{learned['auc']:.3f} [{learned['auc_ci95'][0]:.3f}, {learned['auc_ci95'][1]:.3f}]"
                f"; validation AUCs {json.dumps(aggregator['validation_study_auc'])}"
            )
    return "\n".join(lines)


def _figure(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


if __name__ == "__main__":
    raise SystemExit(main())
