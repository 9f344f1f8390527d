"""Bench: how often the node abstains ("not analysable") on in- and out-of-distribution views.

    .venv/bin/python bench/abstention.py [--bundle config/models/wrist-demo] \\
        [--work var/abstention] [--limit 300] [--max-rate 0.02] \\
        [--plot docs/abstention_tradeoff.png] [--json OUT]

Archives (generated under `--work` on first use and reused; seeds never used in training):
`fit`, `val` and `test` (phantom world, the model's training world), `decoy` (phantom world,
only its decoy body parts are used), `proj` (the held-out projection world). Every image goes
through the node's preprocessing (`pipeline.preprocess`) and the bundle's model; the features of
the view (`pipeline.ood`) and its logit are kept.

Sets: (a) in-distribution validation views: wrists of `val`, and a fresh in-distribution test
set, wrists of `test`, that no threshold saw; (b) decoy body parts (chest,
pelvis, skull) retagged as wrists and forced past the scope check (its image checks off);
(c) wrists of `val` degraded beyond the randomisation ranges of `train.phantoms.appearance`
(heavy noise, blur, extreme gamma either way, low resolution), also forced past the scope
check; (d) wrists of the projection world, as the node would take them.

Each score (Mahalanobis on penultimate or on pooled features, fitted on the wrists of `fit`;
energy; confidence) gets its threshold on set (a) at `--max-rate`; printed per score: AUROC of
(a) against each other set and the abstention rate on each set with Wilson 95% intervals. The
trade-off curve (abstention on each set against the in-distribution abstention rate the
threshold is set at) is saved as a PNG. A bundle that already carries a detector gets a row of
its own, at its own threshold. Runs on the CPU; sample sizes are kept to what runs
in a quarter of an hour on two shared cores, so the intervals are wide.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from pipeline.inference import ModelBundle
from pipeline.ood import FloatArray, OodDetector
from train.evaluation.metrics import roc_auc, wilson_interval
from train.ood_fit import ViewScores, archive_views, fit_detector, in_distribution, score_views
from train.phantoms.archive import generate_archive

ARCHIVES = {
    "fit": (3301, "phantom", 250),
    "val": (3302, "phantom", 250),
    "decoy": (3304, "phantom", 800),
    "test": (3305, "phantom", 150),
    "proj": (3303, "projection", 150),
}
"""Seed, renderer and studies of each archive (decoys are about a tenth of the studies)."""
NATIVE_SYNTAXES = ("explicit_le", "implicit_le", "deflated", "rle")
SETS = ("id_val", "id_test", "decoy", "degraded", "projection")
DEGRADATIONS = ("noise", "blur", "dark_gamma", "bright_gamma", "low_resolution")
SCORES = {
    "mahalanobis/penultimate": ("mahalanobis", "penultimate"),
    "mahalanobis/pooled": ("mahalanobis", "pooled"),
    "energy": ("energy", "penultimate"),
    "confidence": ("confidence", "penultimate"),
}


def degrade(pixels: np.ndarray, index: int) -> np.ndarray:
    """One of five degradations, in turn by `index`, each beyond what `randomise` draws (blur
    <= 1.2 px at 512 px, gamma 0.55-1.8, noise sigma <= 0.05)."""
    rng = np.random.default_rng(index)
    image = np.asarray(pixels, dtype=np.float32)
    scale = max(image.shape) / 512.0
    kind = DEGRADATIONS[index % len(DEGRADATIONS)]
    if kind == "noise":
        out = image + rng.normal(0.0, 0.25, image.shape).astype(np.float32)
    elif kind == "blur":
        out = ndimage.gaussian_filter(image, 8.0 * scale)
    elif kind == "dark_gamma":
        out = image**5.0
    elif kind == "bright_gamma":
        out = image**0.15
    else:  # low resolution: 1/16 of the side, blown up again in blocks
        step = 16
        small = image[::step, ::step]
        out = np.kron(small, np.ones((step, step), np.float32))[: image.shape[0], : image.shape[1]]
    return np.clip(out, 0.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class SetScores:
    name: str
    scores: ViewScores
    refused: int


def _archive(work: Path, name: str) -> Path:
    folder = work / name
    if not (folder / "truth.csv").exists():
        seed, renderer, studies = ARCHIVES[name]
        generate_archive(
            folder,
            studies=studies,
            seed=seed,
            renderer=renderer,
            syntaxes=NATIVE_SYNTAXES,
            workers=2,
        )
    return folder


def _cached(cache: Path, name: str, compute: Callable[[], SetScores]) -> SetScores:
    """Features are the slow part: kept in `cache` so plotting and reporting can be redone."""
    path = cache / f"{name}.npz"
    if path.exists():
        with np.load(path) as data:
            features = {k[len("f_") :]: data[k] for k in data.files if k.startswith("f_")}
            return SetScores(name, ViewScores(features, data["logits"]), int(data["refused"]))
    result = compute()
    arrays: dict[str, Any] = {f"f_{k}": v for k, v in result.scores.features.items()}
    arrays |= {"logits": result.scores.logits, "refused": np.array(result.refused)}
    np.savez(path, **arrays)
    return result


def _set(bundle: ModelBundle, name: str, folder: Path, **options: Any) -> Callable[[], SetScores]:
    def compute() -> SetScores:
        views = archive_views(folder, bundle.preprocess_params, **options)
        return SetScores(name, score_views(bundle, views.views), views.refused)

    return compute


def _is_decoy(row: dict[str, str]) -> bool:
    return row.get("body_part", "wrist") != "wrist"


def measure(args: argparse.Namespace) -> dict[str, Any]:
    bundle = ModelBundle.load(args.bundle)
    shipped, bundle.ood = bundle.ood, None  # features and logits of every view, none withheld
    args.work.mkdir(parents=True, exist_ok=True)
    cache = args.work / "features"
    cache.mkdir(exist_ok=True)
    folders = {name: _archive(args.work, name) for name in ARCHIVES}
    limit = args.limit
    fit = _cached(
        cache, "id_fit", _set(bundle, "id_fit", folders["fit"], rows=in_distribution, limit=limit)
    )
    sets = {
        "id_val": _cached(
            cache,
            "id_val",
            _set(bundle, "id_val", folders["val"], rows=in_distribution, limit=limit),
        ),
        "id_test": _cached(
            cache,
            "id_test",
            _set(bundle, "id_test", folders["test"], rows=in_distribution, limit=limit),
        ),
        "decoy": _cached(
            cache,
            "decoy",
            _set(bundle, "decoy", folders["decoy"], rows=_is_decoy, force_wrist=True, limit=limit),
        ),
        "degraded": _cached(
            cache,
            "degraded",
            _set(
                bundle,
                "degraded",
                folders["val"],
                rows=in_distribution,
                force_wrist=True,
                transform=degrade,
                limit=limit // 2,
            ),
        ),
        "projection": _cached(
            cache,
            "projection",
            _set(bundle, "projection", folders["proj"], rows=in_distribution, limit=limit),
        ),
    }
    report: dict[str, Any] = {"max_rate": args.max_rate, "views": {}, "scores": {}}
    report["views"] = {"id_fit": int(fit.scores.logits.size)} | {
        name: {"views": int(s.scores.logits.size), "refused_images": s.refused}
        for name, s in sets.items()
    }
    curves: dict[str, dict[str, list[float]]] = {}
    rates = np.linspace(0.0, 0.2, 41)
    detectors = {
        label: fit_detector(
            fit.scores, sets["id_val"].scores, kind=kind, layer=layer, max_rate=args.max_rate
        )
        for label, (kind, layer) in SCORES.items()
    }
    if shipped is not None:
        detectors[f"bundle ({shipped.kind}/{shipped.layer})"] = shipped
    for label, detector in detectors.items():
        scored = {name: _scores(detector, s.scores) for name, s in sets.items()}
        entry: dict[str, Any] = {"threshold": detector.threshold}
        for name, values in scored.items():
            hits = int(np.sum(values > detector.threshold))
            low, high = wilson_interval(hits, values.size) if values.size else (0.0, 0.0)
            entry[name] = {
                "abstained": hits,
                "views": int(values.size),
                "rate": hits / max(values.size, 1),
                "ci95": [low, high],
            }
            if name != "id_val" and values.size:
                labels = np.r_[np.zeros(scored["id_val"].size), np.ones(values.size)]
                entry[name]["auroc"] = roc_auc(labels, np.r_[scored["id_val"], values])
        report["scores"][label] = entry
        curves[label] = {
            name: [float(np.mean(v > np.quantile(scored["id_val"], 1 - r))) for r in rates]
            for name, v in scored.items()
        }
    if args.plot:
        _plot(curves, rates, args.plot, args.max_rate)
    return report


def _scores(detector: OodDetector, scores: ViewScores) -> FloatArray:
    return detector.scores(scores.features.get(detector.layer), scores.logits)


def _plot(
    curves: dict[str, dict[str, list[float]]], rates: np.ndarray, out: Path, max_rate: float
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.8), sharey=True)
    for ax, (label, by_set) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        for name, values in by_set.items():
            ax.plot(rates * 100, np.asarray(values) * 100, label=name)
        ax.axvline(max_rate * 100, color="grey", linestyle="--", linewidth=0.8)
        ax.set_title(label)
        ax.set_xlabel("threshold: in-distribution abstention allowed (%)")
        ax.grid(alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("views abstained (%)")
    np.atleast_1d(axes)[0].legend(loc="lower right", fontsize=8)
    fig.suptitle("Abstention against threshold (threshold set on in-distribution validation views)")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"views: {json.dumps(report['views'])}",
        f"threshold at <= {report['max_rate']:.0%} abstention on in-distribution validation",
        f"{'score':<24}" + "".join(f"{name:<30}" for name in SETS),
    ]
    for label, entry in report["scores"].items():
        cells = []
        for name in SETS:
            e = entry[name]
            auc = f" AUC {e['auroc']:.3f}" if "auroc" in e else ""
            cells.append(f"{e['abstained']}/{e['views']}={e['rate']:.1%}{auc}")
        lines.append(f"{label:<24}" + "".join(f"{c:<30}" for c in cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("config/models/wrist-demo"))
    parser.add_argument("--work", type=Path, default=Path("var/abstention"))
    parser.add_argument("--limit", type=int, default=300, help="images per set (300)")
    parser.add_argument("--max-rate", type=float, default=0.02)
    parser.add_argument("--plot", type=Path, default=Path("docs/abstention_tradeoff.png"))
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    report = measure(args)
    print(format_report(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
