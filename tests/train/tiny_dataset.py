"""A tiny prepared dataset written directly (no archive): positives carry a bright bar."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from train.dataset.prepare import METADATA_COLUMNS
from train.dataset.records import write_png

HEIGHT, WIDTH = 64, 48


def make_tiny_dataset(root: Path, *, studies: int = 40, seed: int = 0) -> Path:
    """`studies` studies of 1-2 views; label 1 studies show a bright horizontal bar."""
    rng = np.random.default_rng(seed)
    rows = []
    for s in range(studies):
        label = int(s % 3 == 0)
        split = ("train", "train", "train", "val", "test")[s % 5]
        for v in range(1 + s % 2):
            image = rng.normal(0.3, 0.05, (HEIGHT, WIDTH)).clip(0, 1)
            if label:
                row = int(rng.integers(10, HEIGHT - 10))
                image[row : row + 3, 8:40] = 0.95
            path = f"views/{s}/{v}.png"
            write_png(image.astype(np.float32), root / path)
            rows.append({
                "study_instance_uid": f"1.2.{s}", "sop_instance_uid": f"1.2.{s}.{v}", "part": 0,
                "n_parts": 1, "path": path, "label": label, "split": split,
                "patient_pseudonym": f"P{s}", "rows": HEIGHT, "columns": WIDTH,
            })  # fmt: skip
    with (root / "metadata.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=METADATA_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    (root / "stats.json").write_text(json.dumps({"normalisation": {"mean": 0.32, "std": 0.12}}))
    return root
