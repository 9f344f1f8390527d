"""Sets of labelled thumbnails: drawn in parallel, cached to one .npz file per (world, seed, n).

Thumbnails are stored as uint8 (what an 8-bit display holds; the noise augmentation dithers
them), 16 KB each, so a few thousand per world fit in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pipeline.files import atomic_writer
from train.view_reader.sampling import Sample, check_world, draw_sample

DATA_VERSION = 1
"""Bumped whenever `draw_sample` changes what it draws: old caches are then not reused."""
SIZE = "small"


@dataclass(frozen=True)
class SampleSet:
    """Column arrays of n samples (one row per sample)."""

    images: np.ndarray
    """(n, side, side) uint8."""
    wrist: np.ndarray
    inverted: np.ndarray
    direction: np.ndarray
    """(n, 2) float32; zero where `has_direction` is False."""
    has_direction: np.ndarray
    body_part: np.ndarray
    parts: np.ndarray
    angle_deg: np.ndarray
    world: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def take(self, rows: np.ndarray) -> SampleSet:
        """The rows selected by a boolean mask or an index array."""
        return SampleSet(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @staticmethod
    def concat(sets: list[SampleSet]) -> SampleSet:
        """The sets' rows one after another."""
        return SampleSet(
            **{f.name: np.concatenate([getattr(s, f.name) for s in sets]) for f in fields(sets[0])}
        )


def _draw(job: tuple[str, int, int]) -> Sample:
    world, seed, index = job
    return draw_sample(world, seed, index, SIZE)


def draw_set(
    world: str, seed: int, n: int, *, workers: int = 2, progress: bool = True
) -> SampleSet:
    """Samples 0..n-1 of (world, seed), drawn by `workers` processes."""
    check_world(world)
    jobs = [(world, seed, index) for index in range(n)]
    bar = tqdm(total=n, desc=f"drawing {world} (seed {seed})", unit="img", disable=not progress)
    samples: list[Sample] = []

    def each(results: Iterator[Sample]) -> None:
        for sample in results:
            samples.append(sample)
            bar.update(1)

    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            each(pool.map(_draw, jobs, chunksize=8))
    else:
        each(map(_draw, jobs))
    bar.close()
    return _columns(samples, world)


def _columns(samples: list[Sample], world: str) -> SampleSet:
    n = len(samples)
    direction = np.zeros((n, 2), np.float32)
    for row, sample in enumerate(samples):
        if sample.direction is not None:
            direction[row] = sample.direction
    return SampleSet(
        images=np.stack([s.image for s in samples]),
        wrist=np.array([s.wrist for s in samples], bool),
        inverted=np.array([s.inverted for s in samples], bool),
        direction=direction,
        has_direction=np.array([s.direction is not None for s in samples], bool),
        body_part=np.array([s.body_part for s in samples], dtype="U16"),
        parts=np.array([s.parts for s in samples], np.int16),
        angle_deg=np.array([s.angle_deg for s in samples], np.float32),
        world=np.full(n, world, dtype="U16"),
        index=np.arange(n, dtype=np.int64),
    )


def cache_path(cache_dir: Path, world: str, seed: int, n: int) -> Path:
    """Where the set of (world, seed, n) is cached."""
    return cache_dir / f"{world}-seed{seed}-n{n}-v{DATA_VERSION}.npz"


def load_or_draw(
    world: str,
    seed: int,
    n: int,
    cache_dir: Path | None,
    *,
    workers: int = 2,
    progress: bool = True,
) -> SampleSet:
    """The cached set of (world, seed, n), drawn and cached first when missing."""
    key = json.dumps({"world": world, "seed": seed, "n": n, "version": DATA_VERSION, "size": SIZE})
    path = cache_path(cache_dir, world, seed, n) if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path) as stored:
            if str(stored["key"]) == key:
                names = [f.name for f in fields(SampleSet)]
                return SampleSet(**{name: stored[name] for name in names})
    samples = draw_set(world, seed, n, workers=workers, progress=progress)
    if path is not None:
        columns = {f.name: getattr(samples, f.name) for f in fields(SampleSet)}
        with atomic_writer(path, mode=0o644) as handle:  # a reader never sees half a cache
            np.savez_compressed(handle, key=np.array(key), **columns)
    return samples
