"""What months of uptime need, measured during a soak: flat memory, flat file descriptors and an
index whose size retention bounds (issue "node at hospital scale", item 8).

`ResourceSampler` samples, every few seconds, each process of the node's tree (RSS and open file
descriptors, by pid and role) and the index (bytes on disk with its WAL, and study rows).
`uptime_figures` turns the samples into the figures the soak reports:
- per process alive through the measured span, the least-squares RSS slope after warm-up, in
  MiB per 10 minutes (a leak shows as a steady slope; allocator noise does not);
- open descriptors per process: the largest count in the first and in the last quarter after
  warm-up (a descriptor leak grows between them);
- the index: its size and study rows after warm-up, at the middle and at the end, and its
  growth per study (what retention's purge-and-forget window multiplies into a bound).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen import descendants, memory_kib, mib, role

SLOPE_LIMIT_MIB_PER_10_MIN = 1.0
"""The issue's bound on the RSS slope of each process after warm-up."""
FD_SLACK = 2
"""Descriptors the last quarter may hold beyond the first (an association open at the time)."""


@dataclass(frozen=True)
class Sample:
    """One look at the node: per pid (role, RSS KiB, open descriptors), and the index."""

    seconds: float
    processes: dict[int, tuple[str, int, int]]
    index_bytes: int
    study_rows: int


@dataclass
class ResourceSampler:
    """Samples the node's tree and index every `interval` seconds in a thread."""

    pid: int
    index_path: Path
    interval: float = 5.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="uptime-sampler", daemon=True)

    def __enter__(self) -> ResourceSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def sample(self) -> Sample:
        """Take (and keep) one sample now."""
        processes = {}
        for pid in [self.pid, *descendants(self.pid)]:
            rss = memory_kib(pid).get("VmRSS")
            fds = _open_descriptors(pid)
            if rss is not None and fds is not None:
                processes[pid] = ("service" if pid == self.pid else role(pid), rss, fds)
        sample = Sample(time.monotonic() - self._started, processes, _index_bytes(self.index_path),
                        _study_rows(self.index_path))  # fmt: skip
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        self.sample()
        while not self._stop.wait(self.interval):
            self.sample()


def _open_descriptors(pid: int) -> int | None:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return None


def _index_bytes(path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):
            total += path.with_name(path.name + suffix).stat().st_size
    return total


def _study_rows(path: Path) -> int:
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    except sqlite3.Error:
        return -1
    try:
        return int(db.execute("SELECT COUNT(*) FROM studies").fetchone()[0])
    except sqlite3.Error:
        return -1
    finally:
        db.close()


def slope_per_10_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) points, in MiB per 10 minutes (0 for < 2 points)."""
    if len(points) < 2:
        return 0.0
    t, y = np.array(points, dtype=np.float64).T
    if np.ptp(t) == 0:
        return 0.0
    return float(np.polyfit(t, y, 1)[0] * 600.0)


def uptime_figures(samples: list[Sample], warmup_s: float) -> dict[str, Any]:
    """The soak's uptime figures from samples taken after `warmup_s` (see the module)."""
    measured = [s for s in samples if s.seconds >= warmup_s]
    if len(measured) < 4:
        return {"uptime_samples": len(measured)}
    quarter = max(1, len(measured) // 4)
    # Processes alive at the first and the last measured sample (restarted ones are new pids).
    steady = sorted(set(measured[0].processes) & set(measured[-1].processes))
    slopes, descriptors = {}, {}
    for pid in steady:
        name = f"{measured[0].processes[pid][0]}-{pid}"
        points = [(s.seconds, mib(s.processes[pid][1])) for s in measured if pid in s.processes]
        slopes[name] = round(slope_per_10_min(points), 3)
        first = max(s.processes[pid][2] for s in measured[:quarter] if pid in s.processes)
        last = max(s.processes[pid][2] for s in measured[-quarter:] if pid in s.processes)
        descriptors[name] = (first, last)
    middle = measured[len(measured) // 2]
    return {
        "uptime_samples": len(measured),
        "uptime_measured_s": measured[-1].seconds - measured[0].seconds,
        "rss_slope_mib_per_10min": slopes,
        "open_fds_first_last_quarter": descriptors,
        "processes_restarted": len(set().union(*(s.processes for s in measured))) - len(steady),
        "index_mib_warm_mid_end": [
            round(s.index_bytes / 2**20, 2) for s in (measured[0], middle, measured[-1])
        ],
        "study_rows_warm_mid_end": [s.study_rows for s in (measured[0], middle, measured[-1])],
        "index_kib_per_study": _growth_per_study(measured[0], measured[-1]),
    }


def _growth_per_study(first: Sample, last: Sample) -> float:
    studies = last.study_rows - first.study_rows
    return round((last.index_bytes - first.index_bytes) / 1024 / studies, 2) if studies > 0 else 0.0


def uptime_checks(figures: dict[str, Any]) -> list[tuple[str, bool]]:
    """Pass/fail checks of the uptime figures."""
    if "rss_slope_mib_per_10min" not in figures:
        return [("uptime figures measured (run longer than the warm-up)", False)]
    slopes = figures["rss_slope_mib_per_10min"]
    fds = figures["open_fds_first_last_quarter"]
    return [
        (f"RSS flat after warm-up: every process under {SLOPE_LIMIT_MIB_PER_10_MIN:g} MiB per "
         "10 min", all(v < SLOPE_LIMIT_MIB_PER_10_MIN for v in slopes.values())),
        (f"open file descriptors flat (last quarter <= first + {FD_SLACK})",
         all(last <= first + FD_SLACK for first, last in fds.values())),
    ]  # fmt: skip
