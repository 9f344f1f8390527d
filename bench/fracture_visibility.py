"""How visible each synthetic fracture kind is, and how much of the source the model input holds.

For every fracture kind, subtle or not, PA and lateral, random wrist views (`random_view_spec`,
one part, no cast) are rendered twice from the same random stream, with and without the
fracture and without noise; the figure is the matched-filter signal-to-noise ratio
||broken - whole|| / sigma, where sigma is the white-noise level that view would have had. It
says whether a fracture kind is hard because its pixels drown in noise (low ratio) or for
another reason (a high ratio that models still miss: overlapping anatomy, few examples).

With `--dataset` (a prepared dataset) it also prints how much of each source image's long side
the wrist crop covers: near 1 means the model input already holds about every source pixel, so
a higher input resolution cannot show more.

    python3 bench/fracture_visibility.py [--views 40] [--dataset D]
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from train.phantoms.anatomy import FRACTURE_KINDS, Fracture, random_view_spec, render_view


def matched_snr(kind: str, subtle: bool, view: str, views: int) -> list[float]:
    ratios = []
    for seed in range(views):
        spec = random_view_spec(np.random.default_rng(1000 + seed), view=view)
        clean = replace(spec, parts=1, layout="single", cast=False, noise=0.0)
        broken = render_view(replace(clean, fracture=Fracture(kind, subtle)),
                             np.random.default_rng(seed)).image  # fmt: skip
        whole = render_view(clean, np.random.default_rng(seed)).image
        difference = broken.astype(np.float64) - whole
        ratios.append(float(np.sqrt((difference**2).sum()) / spec.noise))
    return ratios


def crop_coverage(dataset: Path) -> list[float]:
    """The wrist crop's long side over the source image's long side, per prepared view."""
    with (dataset / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    coverage = []
    for row in rows:
        x0, y0, x1, y1 = json.loads(row["bbox"])
        coverage.append(max(x1 - x0, y1 - y0) / max(int(row["rows"]), int(row["columns"])))
    return coverage


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--views", type=int, default=40, help="views per cell (40)")
    parser.add_argument("--dataset", type=Path, help="a prepared dataset: crop coverage")
    args = parser.parse_args()

    print("matched-filter SNR, median [10th percentile] over", args.views, "views")
    print("| kind | PA | lateral | PA subtle | lateral subtle |")
    print("|---|---|---|---|---|")
    for kind in FRACTURE_KINDS:
        cells = []
        for subtle in (False, True):
            for view in ("PA", "LAT"):
                ratios = matched_snr(kind, subtle, view, args.views)
                cells.append(f"{np.median(ratios):.0f} [{np.percentile(ratios, 10):.0f}]")
        print(f"| {kind} | " + " | ".join(cells) + " |", flush=True)

    if args.dataset is not None:
        coverage = crop_coverage(args.dataset)
        print(f"\nwrist crop / source long side over {len(coverage)} views: median "
              f"{np.median(coverage):.2f}, min {min(coverage):.2f}, "
              f"10th percentile {np.percentile(coverage, 10):.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
