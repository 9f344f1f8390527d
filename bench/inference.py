"""Benchmark: inference per view with a model bundle, one process, 2 threads.

Times, for a full-size synthetic two-view study (2500x3000 DX), the model forward per view
without and with the Grad-CAM heat map (targets: under 150 ms and under 400 ms per view), and the
whole `ModelBundle.predict` per study (preprocessing included, decoding excluded).

    .venv/bin/python bench/inference.py [--bundle config/models/wrist-demo] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from synthetic import radiograph  # bench/synthetic.py, beside this script

from pipeline.dicomio import Radiograph
from pipeline.gradcam import grad_cam
from pipeline.inference import ModelBundle
from pipeline.preprocess.study import preprocess_radiograph
from train.phantoms.anatomy import random_view_spec, render_view


def _study() -> list[Radiograph]:
    radiographs = []
    for i, view in enumerate(("PA", "LAT")):
        rng = np.random.default_rng(40 + i)
        spec = replace(random_view_spec(rng, view=view, size="full"), height=3000, width=2500,
                       parts=1, layout="single")  # fmt: skip
        radiographs.append(radiograph(render_view(spec, rng).image, rng))
    return radiographs


def _median_ms(fn: object, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bundle", type=Path, default=Path("config/models/wrist-demo"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(2)
    bundle = ModelBundle.load(args.bundle)
    study = _study()
    views = [v for r in study for v in preprocess_radiograph(r, bundle.preprocess_params).views]
    x = bundle.tensor(views[0])
    with torch.no_grad():
        bundle.model(x)
    grad_cam(bundle.model, x)

    def forward() -> None:
        with torch.no_grad():
            bundle.model(x)

    plain = _median_ms(forward, args.repeat)
    cam = _median_ms(lambda: grad_cam(bundle.model, x), args.repeat)
    whole = _median_ms(lambda: bundle.predict(study), args.repeat)
    print(
        f"bundle {bundle.info.name} {bundle.info.version} ({bundle.info.arch}"
        f"{', test-time flip' if bundle.info.test_time_flip else ''}, input "
        f"{bundle.info.input_width}x{bundle.info.input_height}), 2 threads, median of "
        f"{args.repeat}"
    )
    print(
        f"  model forward per view          {plain:8.1f} ms ({'ok' if plain < 150 else 'MISSED'}"
        " <150 ms)"
    )
    print(
        f"  forward + Grad-CAM per view     {cam:8.1f} ms ({'ok' if cam < 400 else 'MISSED'}"
        " <400 ms)"
    )
    print(
        f"  predict(study of {len(views)} views, 2500x3000, preprocessing + heat maps) "
        f"{whole:8.1f} ms"
    )


if __name__ == "__main__":
    main()
