"""How well the marked regions point at the fracture: scored against the synthetic truth's lines.

For every view of a truly fractured image (truth `fracture_line` not empty) the bundle's node
path runs on the whole study, exactly as the node does (`ModelBundle.predict`). A view at or
above the "possible" operating point is *detected*; its marked region is the one the SR and the
presentation state carry (`pipeline.localisation.marked_region`). Two figures, as the issue asks
and as OsteoDetect (DEN180005) reports its own:

- hit rate: the share of detected, fractured views whose fracture line passes through the
  marked region (any of the points sampled along any of the image's lines lies inside it);
- distance: the median distance from the region's centre to the nearest point of the line, in
  source pixels and, where the image states its pixel spacing, in mm.

The distance from the heat map's peak is reported beside it. Views with no region (an empty
heat map) count as detected but not localised, and are reported as such.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from pipeline.dicomio import DicomImageError, read_radiograph
from pipeline.inference import ModelBundle
from pipeline.localisation import distance_to_points, marked_region
from train.evaluation.metrics import wilson_interval

LINE_SAMPLES = 64
"""Points sampled along each truth line segment."""


@dataclass(frozen=True)
class ViewLocalisation:
    """One view of a fractured image, as the node would mark it."""

    study_uid: str
    sop_instance_uid: str
    probability: float
    detected: bool
    localised: bool
    hit: bool
    centre_px: float
    """Centre-to-line distance in source pixels (nan when not localised)."""
    peak_px: float
    spacing_mm: float | None
    """Mean of the image's row and column spacing, None when the image does not state it."""

    @property
    def centre_mm(self) -> float:
        return self.centre_px * self.spacing_mm if self.spacing_mm else math.nan


@dataclass(frozen=True)
class LocalisationSummary:
    views: int
    detected: int
    localised: int
    hits: int
    hit_rate: float
    hit_interval: tuple[float, float]
    median_centre_px: float
    median_centre_mm: float
    median_peak_px: float
    p90_centre_px: float


def line_points(lines: Sequence[Sequence[Sequence[float]]]) -> npt.NDArray[np.float64]:
    """(N, 2) points sampled along the truth's segments [[x0, y0], [x1, y1]] (source pixels)."""
    t = np.linspace(0.0, 1.0, LINE_SAMPLES)[:, None]
    parts = [np.asarray(a, float) + t * (np.asarray(b, float) - np.asarray(a, float))
             for a, b in lines]  # fmt: skip
    return np.vstack(parts) if parts else np.empty((0, 2))


def fractured_studies(rows: Iterable[dict[str, str]]) -> dict[str, list[dict[str, str]]]:
    """The truth rows of every wrist study with at least one fractured, readable image."""
    studies: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        if row["corrupt"] == "" and row["body_part"] == "wrist":
            studies.setdefault(row["study_instance_uid"], []).append(row)
    return {uid: r for uid, r in studies.items() if any(json.loads(x["fracture_line"]) for x in r)}


def localise_study(
    bundle: ModelBundle, archive: Path, rows: Sequence[dict[str, str]]
) -> list[ViewLocalisation]:
    """The node's marks on one study, scored on its fractured images' views."""
    radiographs, lines = [], {}
    for row in sorted(rows, key=lambda r: r["path"]):
        try:
            radiograph = read_radiograph(archive / row["path"])
        except (DicomImageError, OSError, ValueError):
            continue
        radiographs.append(radiograph)
        lines[row["sop_instance_uid"]] = (line_points(json.loads(row["fracture_line"])),
                                          radiograph.pixel_spacing)  # fmt: skip
    if not radiographs:
        return []
    prediction = bundle.predict(radiographs)
    possible = bundle.info.thresholds["possible"]
    out = []
    for view in prediction.views:
        points, spacing = lines.get(view.view.sop_instance_uid, (np.empty((0, 2)), None))
        if len(points) == 0:
            continue
        region = marked_region(view, possible)
        detected = view.probability >= possible
        centre = peak = math.nan
        hit = False
        if region is not None:
            hit = bool(region.contains(points).any())
            centre = distance_to_points(region.centre, points)
            peak = distance_to_points(region.peak, points)
        out.append(ViewLocalisation(
            study_uid=rows[0]["study_instance_uid"],
            sop_instance_uid=view.view.sop_instance_uid,
            probability=view.probability,
            detected=detected,
            localised=region is not None,
            hit=hit,
            centre_px=centre,
            peak_px=peak,
            spacing_mm=float(np.mean(spacing)) if spacing else None,
        ))  # fmt: skip
    return out


def localise_archive(
    bundle: ModelBundle, archive: Path, rows: Iterable[dict[str, str]],
    progress: Callable[[int], None] | None = None,
) -> list[ViewLocalisation]:  # fmt: skip
    """Every fractured study of an archive, scored (`progress` is called once per study)."""
    results: list[ViewLocalisation] = []
    for study_rows in fractured_studies(rows).values():
        results += localise_study(bundle, archive, study_rows)
        if progress is not None:
            progress(1)
    return results


def summarise(views: Sequence[ViewLocalisation]) -> LocalisationSummary:
    """The figures over the views of fractured images."""
    detected = [v for v in views if v.detected]
    localised = [v for v in detected if v.localised]
    hits = sum(v.hit for v in localised)

    def median(values: list[float]) -> float:
        finite = [x for x in values if math.isfinite(x)]
        return float(np.median(finite)) if finite else math.nan

    centres = [v.centre_px for v in localised]
    return LocalisationSummary(
        views=len(views),
        detected=len(detected),
        localised=len(localised),
        hits=hits,
        hit_rate=hits / len(detected) if detected else math.nan,
        hit_interval=wilson_interval(hits, len(detected)) if detected else (math.nan, math.nan),
        median_centre_px=median(centres),
        median_centre_mm=median([v.centre_mm for v in localised]),
        median_peak_px=median([v.peak_px for v in localised]),
        p90_centre_px=float(np.percentile([c for c in centres if math.isfinite(c)], 90))
        if any(math.isfinite(c) for c in centres)
        else math.nan,
    )
