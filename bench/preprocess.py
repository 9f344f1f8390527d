"""Benchmark: the preprocessing steps per 2500x3000 image, and `prepare` throughput.

Part 1 runs on one core: for full-size synthetic wrists (varied angle, inversion, frames, two
parts), decode once, then time every step of `preprocess_radiograph` (decoding excluded) and
print the median ms per step and in total (target: under 100 ms in total, any learned step
included). The parameters are the demo bundle's, as the node runs them (its view reader
included); `--heuristics-only` drops the reader to compare.
Part 2 prepares a synthetic archive with 2 workers and prints images per second.

    .venv/bin/python bench/preprocess.py [--images 12] [--studies 200] [--bundle DIR]
        [--heuristics-only] [--skip-prepare]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from synthetic import radiograph as stored_radiograph  # bench/synthetic.py, beside it

from pipeline.inference import ModelBundle
from pipeline.preprocess.study import PreprocessParams, preprocess_radiograph
from pipeline.preprocess.view_reader import ViewReaderParams
from train.phantoms.anatomy import random_view_spec, render_view

STEPS = ("view_reader", "wrist_filter", "inversion", "part_splitter", "rotation", "geometry")
DEMO = Path(__file__).resolve().parents[1] / "config" / "models" / "wrist-demo"


def _full_size_radiographs(count: int) -> list[object]:
    images = []
    for i in range(count):
        rng = np.random.default_rng(100 + i)
        spec = random_view_spec(rng, size="full")
        layout = ("single", "single", "side_by_side", "joined")[i % 4]
        spec = replace(
            spec,
            height=3000,
            width=2500,
            parts=1 if layout == "single" else 2,
            layout=layout,
            angle_deg=float(rng.uniform(-90, 90))
            if layout == "single"
            else float(rng.uniform(-20, 20)),
            frame=(None, "white", None, "black")[i % 4],
        )
        rendered = render_view(spec, rng)
        photometric = ("monochrome2", "inverted", "monochrome1")[i % 3]
        images.append(stored_radiograph(rendered.image, rng, photometric=photometric))
    return images


def bench_steps(count: int, params: PreprocessParams) -> None:
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    torch.set_num_threads(1)
    radiographs = _full_size_radiographs(count)
    preprocess_radiograph(radiographs[0], params)  # warm-up
    per_step: dict[str, list[float]] = {step: [] for step in STEPS}
    totals = []
    views = 0
    for radiograph in radiographs:
        timings: dict[str, float] = {}
        start = time.perf_counter()
        result = preprocess_radiograph(radiograph, params, timings=timings)  # type: ignore[arg-type]
        totals.append((time.perf_counter() - start) * 1000)
        views += len(result.views)
        for step in STEPS:
            per_step[step].append(timings.get(step, 0.0) * 1000)
    print(
        f"preprocessing of {count} synthetic 2500x3000 radiographs ({views} views), one core,"
        " decoding excluded"
    )
    for step in STEPS:
        print(f"  {step:<16}{statistics.median(per_step[step]):8.1f} ms median")
    median = statistics.median(totals)
    print(
        f"  {'total':<16}{median:8.1f} ms median, {max(totals):.1f} ms max "
        f"({'ok' if median < 100 else 'MISSED'} <100 ms)"
    )


def bench_prepare(studies: int) -> None:
    from train.dataset.prepare import prepare
    from train.phantoms.archive import generate_archive

    with tempfile.TemporaryDirectory() as tmp:
        archive, dataset = Path(tmp) / "archive", Path(tmp) / "dataset"
        generate_archive(archive, studies=studies, seed=77, size="small", workers=2)
        start = time.perf_counter()
        summary = prepare(archive, archive / "labels.csv", dataset, workers=2)
        elapsed = time.perf_counter() - start
        instances = sum(1 for _ in (archive / "dicom").rglob("*.dcm"))
        print(
            f"prepare: {studies} small studies, {instances} instances -> {summary.views} views "
            f"in {elapsed:.1f} s on 2 workers: {instances / elapsed:.1f} images/s"
        )
        start = time.perf_counter()
        again = prepare(archive, archive / "labels.csv", dataset, workers=2)
        print(
            f"prepare again (resume): {again.studies_prepared} studies redone in "
            f"{time.perf_counter() - start:.1f} s"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--studies", type=int, default=200)
    parser.add_argument("--bundle", type=Path, default=DEMO, help="whose preprocessing to time")
    parser.add_argument("--heuristics-only", action="store_true", help="without a view reader")
    parser.add_argument("--skip-prepare", action="store_true", help="part 1 only")
    args = parser.parse_args()
    params = ModelBundle.load(args.bundle).preprocess_params
    if args.heuristics_only:
        params = replace(params, view_reader=ViewReaderParams())
    reader = params.view_reader.path
    print(f"preprocessing of {args.bundle}" + (f", view reader {reader}" if reader else ""))
    if not args.skip_prepare:
        bench_prepare(args.studies)  # before pinning this process to one core
    bench_steps(args.images, params)


if __name__ == "__main__":
    main()
