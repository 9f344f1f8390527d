"""Benchmark: decode a 2500x3000 16-bit radiograph to display space, per transfer syntax.

Runs on one core (CPU affinity and single-threaded numeric libraries), times `read_radiograph`
from the file on disk (parse + decode + grey-level chain), and prints the median of several runs.
Targets (issue 2): under 80 ms uncompressed, under 1.5 s JPEG 2000 lossless.

    .venv/bin/python bench/decode.py [--repeat 7]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset

from pipeline.dicomio import read_radiograph
from train.phantoms.anatomy import random_view_spec, render_view
from train.phantoms.encoding import TRANSFER_SYNTAXES, to_stored, write_instance

TARGETS_MS = {"explicit_le": 80.0, "implicit_le": 80.0, "j2k_lossless": 1500.0}


def _instance(rows: int, columns: int, bits: int) -> tuple[Dataset, np.ndarray]:
    rng = np.random.default_rng(2500)
    spec = random_view_spec(rng, size="full")
    from dataclasses import replace

    spec = replace(spec, height=rows, width=columns, angle_deg=5.0, parts=1, layout="single")
    image = render_view(spec, rng).image
    pixels, attrs = to_stored(
        image, photometric="monochrome2", bits_stored=bits, voi="window", rng=rng
    )
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = (
        uid.DigitalXRayImageStorageForPresentation
    )
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid.generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.Modality = "DX"
    ds.update(attrs)
    return ds, pixels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rows", type=int, default=3000)
    parser.add_argument("--columns", type=int, default=2500)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    print(
        f"decode to display space, {args.columns}x{args.rows}, one core, "
        f"median of {args.repeat} runs"
    )
    print(f"{'transfer syntax':<24}{'bits':>5}{'MB':>8}{'median ms':>12}{'target':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in TRANSFER_SYNTAXES.items():
            bits = min(16, spec.max_bits)
            ds, pixels = _instance(args.rows, args.columns, bits)
            path = Path(tmp) / f"{name}.dcm"
            write_instance(ds, pixels, name, path)
            read_radiograph(path)  # warm caches and imports
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                read_radiograph(path)
                times.append((time.perf_counter() - start) * 1000.0)
            median = statistics.median(times)
            target = TARGETS_MS.get(name)
            verdict = (
                "" if target is None else (f"{'ok' if median < target else 'MISSED'} <{target:.0f}")
            )
            size_mb = path.stat().st_size / 1e6
            print(f"{name:<24}{bits:>5}{size_mb:>8.2f}{median:>12.1f}{verdict:>10}")


if __name__ == "__main__":
    main()
