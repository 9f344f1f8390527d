"""Drift monitoring: the node's outputs per UTC day, compared with the bundle's validation data.

Every analysed study adds its outcome (likely, possible, negative or not analysable) and the bin
of its study probability to the day's counts, in `drift.sqlite` in the storage folder (its own
file: the index's schema is not touched; a few dozen rows a day, days older than `KEEP_DAYS`
removed). Today and the last 7 days are each compared with the bundle's `drift_reference`
(`pipeline.drift`): the population stability index of the probability distribution and the
difference of each level's rate, judged only with `min_studies` analysed studies. Leaving the
band makes the node "degraded" (/healthz, /metrics, `dicomnode status`) and logs one WARNING a
UTC day. A study analysed again (late instances, resend) counts again.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.drift import (
    BINS,
    LEVELS,
    DriftReference,
    bin_index,
    grouped_psi,
    rate_limit,
)

log = logging.getLogger("dicomnode.drift")
NOT_ANALYSABLE = "not_analysable"
OUTCOMES = (*LEVELS, NOT_ANALYSABLE)
KEEP_DAYS = 400
WINDOWS = (("today", 1), ("last_7_days", 7))
_SCHEMA = """
CREATE TABLE IF NOT EXISTS drift_counts (day TEXT NOT NULL, item TEXT NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (day, item));
CREATE TABLE IF NOT EXISTS drift_warnings (day TEXT PRIMARY KEY, at REAL NOT NULL,
    reason TEXT NOT NULL);
"""


def utc_day(at: float) -> str:
    """The UTC date of an epoch time, as YYYY-MM-DD."""
    return time.strftime("%Y-%m-%d", time.gmtime(at))


def _bin_item(index: int) -> str:
    return f"bin{index:02d}"


@dataclass(frozen=True)
class Tally:
    """Counts over some days: studies per outcome and analysed studies per probability bin."""

    outcomes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    bins: tuple[int, ...] = (0,) * BINS

    @property
    def analysed(self) -> int:
        """Studies with a level (the ones the rates and the PSI are about)."""
        return sum(self.outcomes[level] for level in LEVELS)


class DriftStore:
    """The per-day counts in their own SQLite file; safe to use from several processes."""

    def __init__(self, path: Path) -> None:
        # Nothing touches the disk here: a node restarting on a full disk must still start (the
        # statistics are an observation, never a reason to refuse studies).
        self.path = path
        self._ready = False

    def _connect(self) -> sqlite3.Connection:
        # One connection per call: the HTTP server's threads and the workers all read and write.
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with closing(sqlite3.connect(self.path, timeout=30, isolation_level=None)) as db:
                db.executescript("PRAGMA journal_mode=WAL;" + _SCHEMA)
            self._ready = True
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    def record(self, outcome: str, probability: float | None, at: float) -> None:
        """Count one analysed study: its outcome and, with a level, its probability's bin."""
        if outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {outcome!r}")
        day = utc_day(at)
        items = [outcome]
        if probability is not None and outcome != NOT_ANALYSABLE:
            items.append(_bin_item(bin_index(probability)))
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            for item in items:
                db.execute("INSERT INTO drift_counts (day, item, count) VALUES (?, ?, 1) "
                           "ON CONFLICT (day, item) DO UPDATE SET count = count + 1",
                           (day, item))  # fmt: skip
            oldest = utc_day(at - KEEP_DAYS * 86400)
            db.execute("DELETE FROM drift_counts WHERE day < ?", (oldest,))
            db.execute("DELETE FROM drift_warnings WHERE day < ?", (oldest,))
            db.execute("COMMIT")

    def tally(self, first_day: str, last_day: str) -> Tally:
        """The counts of the days from `first_day` to `last_day`, both included."""
        with closing(self._connect()) as db:
            rows = db.execute("SELECT item, SUM(count) FROM drift_counts WHERE day BETWEEN ? "
                              "AND ? GROUP BY item", (first_day, last_day)).fetchall()  # fmt: skip
        counts = {str(item): int(total) for item, total in rows}
        return Tally({o: counts.get(o, 0) for o in OUTCOMES},
                     tuple(counts.get(_bin_item(i), 0) for i in range(BINS)))  # fmt: skip

    def claim_warning(self, day: str, reason: str, at: float) -> bool:
        """True the first time a day's drift warning is claimed, by any process, ever."""
        with closing(self._connect()) as db:
            cursor = db.execute("INSERT OR IGNORE INTO drift_warnings (day, at, reason) "
                                "VALUES (?, ?, ?)", (day, at, reason))  # fmt: skip
            return cursor.rowcount == 1


@dataclass(frozen=True)
class WindowCheck:
    """One window (today, the last 7 days) against the reference."""

    name: str
    tally: Tally
    judged: bool
    psi: float | None
    psi_limit: float | None
    rate_limits: dict[str, float]
    out_of_band: tuple[str, ...]

    def rates(self) -> dict[str, float | None]:
        """Each level's share of the analysed studies (None without any)."""
        n = self.tally.analysed
        return {level: (self.tally.outcomes[level] / n if n else None) for level in LEVELS}

    def as_dict(self) -> dict[str, Any]:
        """The window as status and /healthz show it."""
        return {"studies": self.tally.analysed,
                "not_analysable": self.tally.outcomes[NOT_ANALYSABLE],
                "level_rates": self.rates(), "judged": self.judged,
                "psi": None if self.psi is None else round(self.psi, 4),
                "psi_limit": None if self.psi_limit is None else round(self.psi_limit, 4),
                "rate_limits": {k: round(v, 4) for k, v in self.rate_limits.items()},
                "out_of_band": list(self.out_of_band)}  # fmt: skip


def check_window(name: str, tally: Tally, reference: DriftReference | None) -> WindowCheck:
    """Compare one window's counts with the reference (pure)."""
    n = tally.analysed
    if reference is None or n == 0:
        return WindowCheck(name, tally, False, None, None, {}, ())
    value, limit = grouped_psi(reference, tally.bins)
    limits = {level: rate_limit(reference, level, n) for level in LEVELS}
    if n < reference.min_studies:  # shown, not judged
        return WindowCheck(name, tally, False, value, limit, limits, ())
    out: list[str] = []
    if value > limit:
        out.append(f"PSI {value:.2f} > {limit:.2f}")
    for level in LEVELS:
        rate, expected = tally.outcomes[level] / n, reference.level_rates[level]
        if abs(rate - expected) > limits[level]:
            out.append(f"{level} {rate:.1%} vs {expected:.1%} (+-{limits[level]:.1%})")
    return WindowCheck(name, tally, True, value, limit, limits, tuple(out))


@dataclass(frozen=True)
class DriftReport:
    """Today's and the last 7 days' figures against the bundle's reference."""

    day: str
    reference: DriftReference | None
    windows: tuple[WindowCheck, ...]

    @property
    def degraded(self) -> bool:
        """Whether a judged window left the band."""
        return any(w.out_of_band for w in self.windows)

    @property
    def reason(self) -> str:
        """Why degraded (empty when not)."""
        return "; ".join(f"{w.name.replace('_', ' ')} ({w.tally.analysed} studies): "
                         + ", ".join(w.out_of_band)
                         for w in self.windows if w.out_of_band)  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        """What /healthz and `dicomnode status --json` hold under "drift"."""
        reference = self.reference
        return {
            "day": self.day,
            "degraded": self.degraded,
            "reason": self.reason,
            "reference": None if reference is None else {
                "source": reference.source, "n_studies": reference.n_studies,
                "level_rates": reference.level_rates, "min_studies": reference.min_studies,
            },
            "windows": {w.name: w.as_dict() for w in self.windows},
        }  # fmt: skip


def reference_of(bundle: Path) -> DriftReference | None:
    """The bundle's drift reference, None when its model.json has none (or none readable: the
    bundle's own checks report an unreadable model.json)."""
    try:
        raw = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    section = raw.get("drift_reference") if isinstance(raw, dict) else None
    if not section:
        return None
    try:
        return DriftReference.from_dict(section)
    except ValueError as exc:
        log.warning("%s: %s; drift is counted, not judged", bundle / "model.json", exc)
        return None


class DriftMonitor:
    """Counts each analysed study and warns, once a UTC day, when the outputs drift."""

    def __init__(self, storage: Path, reference: DriftReference | None) -> None:
        self.store = DriftStore(storage / "drift.sqlite")
        self.reference = reference

    def record(self, outcome: str, probability: float | None, now: float | None = None) -> None:
        """Count one study, then check the day: the first time it leaves the band, one WARNING."""
        at = time.time() if now is None else now
        self.store.record(outcome, probability, at)
        report = self.report(at)
        if report.degraded and self.store.claim_warning(report.day, report.reason, at):
            log.warning("model outputs drift from the bundle's validation data: %s (reference: "
                        "%s); see `dicomnode status`", report.reason,
                        report.reference.source if report.reference else "-")  # fmt: skip

    def report(self, now: float | None = None) -> DriftReport:
        """Today's and the last 7 days' figures against the reference."""
        at = time.time() if now is None else now
        day = utc_day(at)
        try:
            checks = tuple(
                check_window(name, self.store.tally(utc_day(at - (days - 1) * 86400), day),
                             self.reference)
                for name, days in WINDOWS
            )  # fmt: skip
        except (sqlite3.Error, OSError) as exc:
            # A full or failing disk: no figures (nothing judged) rather than a failing /healthz.
            log.warning("drift statistics unreadable (%s): %s", self.store.path, exc)
            checks = ()
        return DriftReport(day, self.reference, checks)
