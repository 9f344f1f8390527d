"""Bench: what the demo model keyed on when it called intact wrists fractured in a foreign world.

    .venv/bin/python bench/shortcut_attention.py [--bundle config/models/wrist-demo] \\
        [--world phantom --world projection] [--studies 250] [--seed 2002] \\
        [--syntaxes native] [--work var/cross-world] [--per-group 40] \\
        [--sheet docs/false_positive_attention.png] [--json OUT]

Archives are those of `bench/cross_world.py` (same `--work`, `--studies`, `--seed` and
`--syntaxes`: `WORLD-STUDIES-sSEED[-SYNTAXES]/archive`), generated here when missing. Every
wrist image goes through the node's preprocessing and the bundle's model
(`train.evaluation.node_scores`); each view is judged alone, as a one-view study, at the bundle's
own "possible" threshold (study temperature and aggregation as recorded), and sorted into:

- FP: a view of an intact study called "possible" or "likely";
- TP: a view showing a fracture (truth `fracture_visible`) called "possible" or "likely";
- TN: a view of an intact study left "negative".

The OOD detector is left out of the grouping on purpose: the question is what the model itself
looks at; the abstaining share of each group is printed beside it. For up to `--per-group`
views per world and group (all FPs when fewer, else a seeded sample) the node's heat map
(`pipeline.gradcam`: the members' and the mirror image's Grad-CAM, averaged) is split by region
(`train.evaluation.attention`). Printed per group: the mean share of heat-map mass in each
region and, in brackets, the mean share of the view's area. For the projection world the share
of intact views called "possible" is also given by the image-processing parameters its renderer
drew (`appearance` in truth.csv). The contact sheet shows a dozen projection-world FPs, the
highest-scoring first, with their heat maps.

About 9 minutes on this project's shared 2-core machine for 250 studies per world with the
archives already made (17 when the machine was busy): most of it preprocessing, the model pass
over every view and Grad-CAM of about 200 views.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.gradcam import grad_cam
from pipeline.inference import ModelBundle
from pipeline.preprocess.study import View
from train.evaluation.abstention_transfer import study_probability
from train.evaluation.attention import (
    OVERLAYS,
    REGIONS,
    area_by_region,
    mass_by_region,
    region_masks,
    spread,
    summarise_shares,
)
from train.evaluation.metrics import wilson_interval
from train.evaluation.node_scores import ArchiveScores, score_archive
from train.phantoms.archive import generate_archive

SYNTAX_SETS = {
    "explicit_le": ("explicit_le",),
    "native": ("explicit_le", "implicit_le", "deflated", "rle"),
}
GROUPS = ("FP", "TP", "TN")
APPEARANCE_KEYS = ("processing", "tone", "frame_shape", "grid")
SHEET_CASES = 12


@dataclass(frozen=True)
class JudgedView:
    """A view, its one-view study probability, group and truth."""

    view: View
    probability: float
    group: str | None
    abstained: bool
    truth: dict[str, str]


def archive_for(world: str, args: argparse.Namespace) -> Path:
    """The cross-world bench's archive of `world`, generated when missing."""
    suffix = "" if args.syntaxes == "explicit_le" else f"-{args.syntaxes}"
    work: Path = args.work
    archive = work / f"{world}-{args.studies}-s{args.seed}{suffix}" / "archive"
    if not (archive / "truth.csv").exists():
        generate_archive(archive, studies=args.studies, seed=args.seed, renderer=world,
                         syntaxes=SYNTAX_SETS[args.syntaxes], workers=2)  # fmt: skip
    return archive


def judge(bundle: ModelBundle, scores: ArchiveScores) -> list[JudgedView]:
    """Each view alone at the bundle's "possible" threshold, sorted into FP, TP, TN or none."""
    possible = bundle.info.thresholds["possible"]
    judged = []
    for index, view in enumerate(scores.views):
        probability = study_probability([float(scores.logits[index])], bundle.info.aggregation,
                                        bundle.info.study_temperature)  # fmt: skip
        truth = scores.truth[view.sop_instance_uid]
        called = probability >= possible
        intact = scores.labels[truth["study_instance_uid"]] == 0
        group = None
        if intact:
            group = "FP" if called else "TN"
        elif called and truth["fracture_visible"] == "1":
            group = "TP"
        judged.append(JudgedView(view, probability, group, bool(scores.abstained[index]), truth))
    return judged


def sample(views: list[JudgedView], size: int, seed: int) -> list[JudgedView]:
    """All of `views` when they are few, else a seeded sample; highest probability first."""
    if len(views) > size:
        rng = np.random.default_rng(seed)
        views = [views[i] for i in sorted(rng.choice(len(views), size, replace=False))]
    return sorted(views, key=lambda v: -v.probability)


def attention(bundle: ModelBundle, views: list[JudgedView], desc: str) -> list[dict[str, Any]]:
    """Heat map, mass and area shares of each view."""
    out = []
    for judged in tqdm(views, desc=desc, unit="view"):
        _, cam = grad_cam(bundle.model, bundle.tensor(judged.view))
        masks = region_masks(judged.view.pixels)
        mass = {**mass_by_region(cam, masks), "half-peak area": spread(cam)}
        out.append({"judged": judged, "cam": cam, "mass": mass, "area": area_by_region(masks)})
    return out


def appearance_rates(judged: list[JudgedView], possible: float) -> dict[str, dict[str, Any]]:
    """Share of intact views called "possible", by each drawn image-processing parameter."""
    rates: dict[str, dict[str, Any]] = {}
    intact = [v for v in judged if v.group in ("FP", "TN")]
    for key in APPEARANCE_KEYS:
        counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for v in intact:
            value = str(json.loads(v.truth.get("appearance") or "{}").get(key, "(none)"))
            counts[value][0] += v.probability >= possible
            counts[value][1] += 1
        rates[key] = {value: {"called": c, "n": n, "ci95": list(wilson_interval(c, n))}
                      for value, (c, n) in sorted(counts.items())}  # fmt: skip
    return rates


def print_attention(summary: dict[str, dict[str, Any]]) -> None:
    names = (*REGIONS, *OVERLAYS)
    print(
        "\nmean share of Grad-CAM mass per region (mean share of the view's area in brackets); "
        "half-peak area: mean share of the view where the map is >= half its peak\n"
    )
    print("| world / group | views (abstaining) | " + " | ".join(names) + " | half-peak area |")
    print("|---" * (len(names) + 3) + "|")
    for label, group in summary.items():
        cells = [f"{group['mass'][n]['mean']:.2f} ({group['area'][n]['mean']:.2f})"
                 for n in names]  # fmt: skip
        cells.append(f"{group['mass']['half-peak area']['mean']:.2f}")
        print(f"| {label} | {group['views']} ({group['abstaining']}) | " + " | ".join(cells) + " |")


def contact_sheet(cases: list[dict[str, Any]], path: Path, bundle: ModelBundle) -> None:
    """A dozen false positives with their heat maps, labelled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 6
    rows = max(1, -(-len(cases) // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(2.4 * columns, 4.7 * rows + 0.5))
    likely = bundle.info.thresholds["likely"]
    for axis in np.atleast_1d(axes).ravel():
        axis.axis("off")
    for axis, case in zip(np.atleast_1d(axes).ravel(), cases, strict=False):
        judged: JudgedView = case["judged"]
        appearance = json.loads(judged.truth.get("appearance") or "{}")
        axis.imshow(judged.view.pixels, cmap="gray", vmin=0.0, vmax=1.0)
        axis.imshow(np.ma.masked_less(case["cam"], 0.15), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        level = "likely" if judged.probability >= likely else "possible"
        extras = [k for k in ("implant", "cast") if judged.truth.get(k) == "1"]
        lines = [f"p {judged.probability:.2f} {level} · {judged.truth['view']}",
                 f"{appearance.get('processing', '?')} · {appearance.get('tone', '?')}"
                 + (f" · {'+'.join(extras)}" if extras else ""),
                 f"bone {case['mass']['bone']:.2f} edge {case['mass']['bone edge']:.2f} "
                 f"skin {case['mass']['skin edge']:.2f}",
                 "abstains (OOD)" if judged.abstained else "analysed"]  # fmt: skip
        axis.set_title("\n".join(lines), fontsize=7)
    figure.suptitle(f"{bundle.info.name} {bundle.info.version}: intact wrists of the projection "
                    "world called fractured, Grad-CAM (mass shares by region)",
                    fontsize=10)  # fmt: skip
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("config/models/wrist-demo"))
    parser.add_argument("--world", action="append", choices=["phantom", "projection", "mixed"])
    parser.add_argument("--studies", type=int, default=250)
    parser.add_argument("--seed", type=int, default=2002)
    parser.add_argument("--syntaxes", choices=tuple(SYNTAX_SETS), default="native")
    parser.add_argument("--work", type=Path, default=Path("var/cross-world"))
    parser.add_argument("--per-group", type=int, default=40)
    parser.add_argument("--sheet", type=Path, default=Path("docs/false_positive_attention.png"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    worlds = args.world or ["phantom", "projection"]
    started = time.perf_counter()
    bundle = ModelBundle.load(args.bundle)
    possible = bundle.info.thresholds["possible"]
    summary: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {"seed": args.seed, "studies": args.studies, "worlds": {}}
    sheet_cases: list[dict[str, Any]] = []
    for world in worlds:
        judged = judge(bundle, score_archive(bundle, archive_for(world, args)))
        by_group = {g: [v for v in judged if v.group == g] for g in GROUPS}
        counts = {g: {"views": len(vs), "abstaining": sum(v.abstained for v in vs)}
                  for g, vs in by_group.items()}  # fmt: skip
        report["worlds"][world] = {
            "groups": counts,
            "appearance": appearance_rates(judged, possible),
        }
        for group, views in by_group.items():
            chosen = sample(views, args.per_group, seed=len(views))
            cases = attention(bundle, chosen, f"{world} {group}")
            label = f"{world} {group} ({len(chosen)} of {len(views)})"
            summary[label] = {
                "views": len(chosen),
                "abstaining": sum(c["judged"].abstained for c in cases),
                "mass": summarise_shares([c["mass"] for c in cases]),
                "area": summarise_shares([c["area"] for c in cases]),
            }
            if world == "projection" and group == "FP":
                sheet_cases = cases[:SHEET_CASES]
    print(f"\n{bundle.info.name} {bundle.info.version}, seed {args.seed}, {args.studies} studies "
          f"per world; each view alone at 'possible' (p >= {possible:.3f})\n")  # fmt: skip
    for world, entry in report["worlds"].items():
        text = ", ".join(f"{g} {c['views']} ({c['abstaining']} abstaining)"
                         for g, c in entry["groups"].items())  # fmt: skip
        print(f"{world}: {text}")
    print_attention(summary)
    for world, entry in report["worlds"].items():
        if world == "phantom":
            continue
        print(f"\n{world}: intact views called 'possible', by drawn image processing")
        for key, values in entry["appearance"].items():
            cells = "; ".join(f"{v} {r['called']}/{r['n']} = {r['called'] / r['n']:.2f} "
                              f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"
                              for v, r in values.items())  # fmt: skip
            print(f"  {key}: {cells}")
    if sheet_cases:
        contact_sheet(sheet_cases, args.sheet, bundle)
        print(
            f"\ncontact sheet of {len(sheet_cases)} projection-world false positives: {args.sheet}"
        )
    print(f"took {time.perf_counter() - started:.0f} s")
    if args.json:
        report["attention"] = summary
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
