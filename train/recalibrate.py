"""Explicit local recalibration of a bundle (`accept --recalibrate`): never done silently.

The study temperature (and, on request, the view temperature) is refitted on the site's
labelled studies, and the two operating points are picked again at the targets the bundle's
thresholds were chosen at (`train.evaluate.TARGET`: 95% sensitivity for "possible", 95%
specificity for "likely"). The weights are not touched. The result is a new bundle folder with a
bumped version (`2.2.0` -> `2.2.0+site.1`), a `recalibration` record in model.json and a card
section that says so; the original folder is left as it was.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.inference import BundleInfo
from train.acceptance import StudyScore
from train.evaluate import TARGET
from train.evaluation.calibration import apply_temperature, fit_temperature
from train.evaluation.metrics import (
    HIGH_SENSITIVITY,
    HIGH_SPECIFICITY,
    threshold_for_sensitivity,
    threshold_for_specificity,
)

SITE_SUFFIX = "+site."


@dataclass(frozen=True)
class Recalibration:
    """New calibration values and the data they were fitted on."""

    study_temperature: float
    thresholds: dict[str, float]
    """'possible' and 'likely', as in model.json."""
    view_temperature: float | None
    """None when the view temperature was kept."""
    studies: int
    positives: int
    data_hash: str
    """SHA-256 of the sorted 'study_uid,label' lines of the studies fitted on."""


def holdout_split(
    scores: Sequence[StudyScore], fraction: float
) -> tuple[list[StudyScore], list[StudyScore]]:
    """(calibration, check): a share `fraction` of each class goes to the check part, chosen by
    a hash of the Study UID (reproducible, independent of file order). 0 -> both are all."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return list(scores), list(scores)
    calibration: list[StudyScore] = []
    check: list[StudyScore] = []
    for label in (0, 1):
        group = sorted(
            (s for s in scores if s.label == label),
            key=lambda s: hashlib.sha256(s.study_uid.encode()).hexdigest(),
        )
        cut = round(fraction * len(group))
        check += group[:cut]
        calibration += group[cut:]
    return calibration, check


def fit_recalibration(scores: Sequence[StudyScore], *, views: bool = False) -> Recalibration:
    """Refit on the analysed studies of `scores` (both classes needed)."""
    analysed = [s for s in scores if s.analysed]
    labels = np.array([s.label for s in analysed])
    logits = np.array([s.raw_logit for s in analysed], dtype=np.float64)
    temperature = fit_temperature(logits, labels)
    calibrated = apply_temperature(logits, temperature)
    view_temperature = None
    if views:
        view_logits = [z for s in analysed for z in s.view_logits]
        view_labels = [s.label for s in analysed for _ in s.view_logits]
        view_temperature = fit_temperature(view_logits, view_labels)
    lines = sorted(f"{s.study_uid},{s.label}" for s in analysed)
    return Recalibration(
        study_temperature=temperature,
        thresholds={
            "possible": threshold_for_sensitivity(labels, calibrated, TARGET),
            "likely": threshold_for_specificity(labels, calibrated, TARGET),
        },
        view_temperature=view_temperature,
        studies=len(analysed),
        positives=int(labels.sum()),
        data_hash=hashlib.sha256("\n".join(lines).encode()).hexdigest(),
    )


def bump_version(version: str) -> str:
    """'2.2.0' -> '2.2.0+site.1'; '2.2.0+site.1' -> '2.2.0+site.2'."""
    base, found, number = version.rpartition(SITE_SUFFIX)
    if found and number.isdigit():
        return f"{base}{SITE_SUFFIX}{int(number) + 1}"
    return f"{version}{SITE_SUFFIX}1"


def changes(info: BundleInfo, recal: Recalibration) -> dict[str, tuple[float, float]]:
    """What recalibration changes: name -> (old, new)."""
    changed = {"study_temperature": (info.study_temperature, recal.study_temperature)}
    if recal.view_temperature is not None:
        changed["view_temperature"] = (info.view_temperature, recal.view_temperature)
    for level, new in recal.thresholds.items():
        changed[f"threshold {level}"] = (info.thresholds[level], new)
    return changed


def write_recalibrated_bundle(
    source: Path,
    out: Path,
    info: BundleInfo,
    recal: Recalibration,
    *,
    check: str,
    now: datetime | None = None,
) -> str:
    """Copy `source` to the new folder `out` with the new calibration; returns the new version.

    `check` says in words what the recalibrated bundle was then checked on (for the card).
    """
    if out.exists():
        raise FileExistsError(f"{out} exists; recalibration writes a new bundle folder")
    version = bump_version(info.version)
    when = (now or datetime.now(UTC)).isoformat(timespec="seconds")
    raw = json.loads((source / "model.json").read_text(encoding="utf-8"))
    record = {
        "date": when,
        "from_version": info.version,
        "studies": recal.studies,
        "positives": recal.positives,
        "data_hash": recal.data_hash,
        "targets": {"possible": f"sensitivity {TARGET}", "likely": f"specificity {TARGET}"},
        "checked_on": check,
        "changes": {
            name: {"old": old, "new": new} for name, (old, new) in changes(info, recal).items()
        },
    }
    raw["version"] = version
    raw["study_temperature"] = recal.study_temperature
    raw["thresholds"] = dict(recal.thresholds)
    if recal.view_temperature is not None:
        raw["view_temperature"] = recal.view_temperature
    _update_recorded_calibration(raw, recal)
    raw.setdefault("metrics", {})["recalibration"] = record
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=parent))
    try:
        folder = staging / "bundle"
        shutil.copytree(source, folder)
        (folder / "model.json").write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
        card = folder / "MODEL_CARD.md"
        if card.exists():
            text = card.read_text(encoding="utf-8")
            text = text.replace(f"{info.name} {info.version}", f"{info.name} {version}", 1)
            card.write_text(
                text.rstrip("\n") + "\n\n" + card_section(info, recal, record), encoding="utf-8"
            )
        os.rename(folder, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return version


def _update_recorded_calibration(raw: dict[str, Any], recal: Recalibration) -> None:
    """Keep `metrics.calibration` (read by `evaluate`) in step with the new values."""
    recorded = raw.get("metrics", {}).get("calibration")
    if not recorded:
        return
    recorded.setdefault("study", {})[raw["aggregation"]] = {
        "temperature": recal.study_temperature,
        "thresholds": {
            HIGH_SENSITIVITY: recal.thresholds["possible"],
            HIGH_SPECIFICITY: recal.thresholds["likely"],
        },
    }
    if recal.view_temperature is not None and "view" in recorded:
        recorded["view"]["temperature"] = recal.view_temperature


def card_section(info: BundleInfo, recal: Recalibration, record: dict[str, Any]) -> str:
    """The model card's section on the local recalibration."""
    rows = "\n".join(
        f"| {name} | {c['old']:.4f} | {c['new']:.4f} |" for name, c in record["changes"].items()
    )
    return f"""## Local recalibration
This bundle is {info.name} {info.version} recalibrated on this site's own labelled studies on
{record["date"]} (`dicomnode-train accept --recalibrate`): {recal.studies} studies,
{recal.positives} fractured, data hash `{recal.data_hash[:16]}`. The weights are unchanged; the
study temperature{" and the view temperature" if recal.view_temperature else ""} were refitted
and the thresholds picked again at {TARGET:.0%} sensitivity ("possible") and {TARGET:.0%}
specificity ("likely") on those studies.

| value | before | after |
|---|---|---|
{rows}

The figures above this section were measured with the original calibration. Checked after
recalibration on: {record["checked_on"]}.
"""
