"""The soak's uptime figures (bench/uptime.py): a slow leak and a descriptor leak fail their
checks; a flat, noisy node passes them; the index's growth per study is measured."""

from __future__ import annotations

import numpy as np
import pytest

from bench.uptime import Sample, slope_per_10_min, uptime_checks, uptime_figures

KIB_PER_MIB = 1024


def _samples(*, leak_mib_per_10_min: float = 0.0, fd_leak: bool = False) -> list[Sample]:
    """Two hours every 10 s of a service and a worker; 200 MiB each with +-3 MiB noise."""
    rng = np.random.default_rng(1)
    samples = []
    for i in range(720):
        t = i * 10.0
        rss = 200 + rng.uniform(-3, 3) + leak_mib_per_10_min * t / 600
        fds = 40 + (i // 50 if fd_leak else i % 3)
        rows = 100 + min(i, 360)  # new studies during the first hour only
        processes = {1: ("service", int(rss * KIB_PER_MIB), fds),
                     2: ("worker", 300 * KIB_PER_MIB, 12)}  # fmt: skip
        samples.append(Sample(t, processes, 4096 * rows, rows))
    return samples


def _failed(samples: list[Sample]) -> list[str]:
    figures = uptime_figures(samples, warmup_s=600.0)
    return [name for name, ok in uptime_checks(figures) if not ok]


def test_slope_is_in_mib_per_ten_minutes() -> None:
    assert slope_per_10_min([(0.0, 100.0), (600.0, 101.0), (1200.0, 102.0)]) == pytest.approx(1.0)
    assert slope_per_10_min([(5.0, 100.0)]) == 0.0


def test_a_flat_noisy_node_passes_every_check() -> None:
    figures = uptime_figures(_samples(), warmup_s=600.0)
    assert set(figures["rss_slope_mib_per_10min"]) == {"service-1", "worker-2"}
    assert abs(figures["rss_slope_mib_per_10min"]["service-1"]) < 0.2
    assert _failed(_samples()) == []
    # 300 new rows over the measured span, 4 KiB each.
    assert figures["index_kib_per_study"] == 4.0


def test_a_slow_leak_and_a_descriptor_leak_each_fail() -> None:
    assert [n for n in _failed(_samples(leak_mib_per_10_min=1.5)) if "RSS" in n]
    assert [n for n in _failed(_samples(fd_leak=True)) if "descriptors" in n]
    assert _failed(_samples(leak_mib_per_10_min=0.5)) == []
