"""Bench: where the node's marks fall, against the synthetic truth's fracture lines, per world.

    .venv/bin/python bench/localisation.py [--bundle config/models/wrist-demo] \\
        [--world phantom --world projection] [--studies 300] [--seed 9101] \\
        [--work var/localisation] [--json OUT]

For each world (a renderer of `generate_archive`; held-out seeds, never used for training), an
archive of `--studies` studies is generated (kept under `--work` and reused), and every study
with a visible fracture goes through the node's own path (`ModelBundle.predict`, the marked
region of `pipeline.localisation.marked_region`: the SR's SCOORD and the presentation state's
box). Prints per world: fractured views, views detected at "possible", views with a region, the
share of detected views whose fracture line passes through the region (Wilson 95% interval),
and the median distance from the region's centre (and from the heat map's peak) to the line,
in source pixels and mm. OsteoDetect (DEN180005) reports a localisation error of 33.5 px for its
own images; the figure is quoted for scale, not as a like-for-like comparison (other images,
other resolution, other definition of the error).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from pipeline.inference import ModelBundle
from train.evaluation.localisation import fractured_studies, localise_archive, summarise
from train.phantoms.archive import generate_archive, read_truth

OSTEODETECT_PX = 33.5


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("config/models/wrist-demo"))
    parser.add_argument("--world", action="append", choices=["phantom", "projection", "mixed"])
    parser.add_argument("--studies", type=int, default=300)
    parser.add_argument("--seed", type=int, default=9101)
    parser.add_argument("--work", type=Path, default=Path("var/localisation"))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    worlds = args.world or ["phantom", "projection"]
    bundle = ModelBundle.load(args.bundle)
    print(f"bundle {bundle.info.name} {bundle.info.version}, "
          f"'possible' at p >= {bundle.info.thresholds['possible']:.3f}")  # fmt: skip
    header = (f"{'world':<11}{'views':>6}{'detected':>9}{'region':>7}  {'line in region':<24}"
              f"{'centre px':>10}{'centre mm':>10}{'peak px':>8}{'p90 px':>8}")  # fmt: skip
    results = {}
    for world in worlds:
        archive = args.work / f"{world}-{args.studies}-s{args.seed}"
        if not (archive / "truth.csv").exists():
            started = time.perf_counter()
            generate_archive(archive, studies=args.studies, seed=args.seed, renderer=world,
                             syntaxes=("explicit_le",))  # fmt: skip
            print(f"{world}: archive generated in {time.perf_counter() - started:.0f} s")
        rows = list(read_truth(archive))
        with tqdm(total=len(fractured_studies(rows)), desc=world, unit="study") as bar:
            views = localise_archive(bundle, archive, rows, progress=bar.update)
        results[world] = (summarise(views), views)
    print(header)
    for world, (s, _) in results.items():
        low, high = s.hit_interval
        hits = f"{s.hits}/{s.detected} = {s.hit_rate:.2f} [{low:.2f}, {high:.2f}]"
        print(f"{world:<11}{s.views:>6}{s.detected:>9}{s.localised:>7}  {hits:<24}"
              f"{s.median_centre_px:>10.1f}{s.median_centre_mm:>10.1f}{s.median_peak_px:>8.1f}"
              f"{s.p90_centre_px:>8.1f}")  # fmt: skip
    print(f"OsteoDetect (DEN180005), its own images: localisation error {OSTEODETECT_PX} px")
    if args.json:
        payload = {w: {"summary": asdict(s), "views": [asdict(v) for v in vs]}
                   for w, (s, vs) in results.items()}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=1, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
