"""The preprocessing scored against a synthetic archive's ground truth (`truth.csv`), per category.

Four checks, each a rate with its Wilson 95% interval, overall and per category:

- scope: a true wrist is analysed and a decoy (any other body part) refused; by body part, and
  by what Body Part Examined says (the tag class: it names a wrist or an arm in the wrist
  filter's vocabulary, or it is empty, or it is anything else: "own", for a decoy its own part);
- inversion: among analysed wrists, inverted exactly when the truth's photometric is
  "inverted"; by photometric situation, frame colour and, when recorded, frame shape;
- orientation: every view of an analysed wrist whose part count is right points its fingers up
  within 10 degrees of the truth's arm axis; by angle band and by fingers up or down;
- parts: among analysed wrists, as many views as the truth has parts; by that number.

Every check is also split by renderer when the archive records it. Columns newer renderers add
(`renderer`, `frame_shape`, `part_angles_deg`, `part_fingers_down`) are optional: without
per-part angles only the first part's view is scored for orientation, as the first renderer
reports the first part's angle alone.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.dicomio import DicomImageError, read_radiograph
from pipeline.preprocess.study import PreprocessedInstance, PreprocessParams, preprocess_radiograph
from pipeline.preprocess.wrist_filter import WristFilterParams, WristVocabulary, decide_wrist
from train.evaluation.metrics import wilson_interval

ORIENTATION_TOLERANCE_DEG = 10.0
CHECKS = {
    "scope": "wrist analysed, decoy refused (instances)",
    "inversion": "inversion decided right (analysed wrists)",
    "orientation": "fingers up within 10 degrees (views)",
    "parts": "as many views as parts (analysed wrists)",
}
DIMENSIONS = ("body part", "wrist tag", "decoy tag", "photometric", "frame", "frame shape", "angle",
              "fingers", "truth parts", "renderer")  # fmt: skip
"""The categories, in report order."""
TAG_CLASSES = {"tag:wrist": "wrist", "tag:arm+no-image": "arm", "empty:no-image": "empty"}

Row = Mapping[str, str]


@dataclass(frozen=True)
class ViewOrientation:
    """One view's angle to the truth's finger direction, and its categories."""

    error_deg: float
    angle_band: str
    fingers: str
    """'up' or 'down': where the fingers point in the source image."""


@dataclass(frozen=True)
class InstanceOutcome:
    """What the checks found for one instance (None: the check does not apply to it)."""

    body_part: str
    tag_class: str
    renderer: str
    """'' when the archive does not record it."""
    scope_right: bool
    inversion_right: bool | None
    photometric: str
    frame: str
    frame_shape: str
    """'' when the archive does not record it."""
    parts: int
    parts_right: bool | None
    views: tuple[ViewOrientation, ...]


@dataclass(frozen=True)
class Rate:
    """`hits` of `n`, with the Wilson 95% interval."""

    hits: int
    n: int

    @property
    def value(self) -> float | None:
        return self.hits / self.n if self.n else None

    @property
    def ci95(self) -> tuple[float, float] | None:
        return wilson_interval(self.hits, self.n) if self.n else None

    def to_json(self) -> dict[str, Any]:
        ci = self.ci95
        return {"hits": self.hits, "n": self.n, "rate": self.value,
                "ci95": None if ci is None else list(ci)}  # fmt: skip


@dataclass(frozen=True)
class CheckReport:
    """One check overall and per category: {dimension: {value: rate}}."""

    overall: Rate
    groups: dict[str, dict[str, Rate]]


@dataclass(frozen=True)
class PreprocessingReport:
    """Every check over a set of instances."""

    instances: int
    checks: dict[str, CheckReport]

    def to_json(self) -> dict[str, Any]:
        return {
            "instances": self.instances,
            "checks": {
                name: {
                    "overall": check.overall.to_json(),
                    "groups": {
                        dim: {value: rate.to_json() for value, rate in rates.items()}
                        for dim, rates in check.groups.items()
                    },
                }
                for name, check in self.checks.items()
            },
        }


def finger_direction(angle_deg: float, fingers_down: bool) -> np.ndarray:
    """Unit (x, y) vector along the arm towards the fingers in source pixels (y down), for the
    truth's convention: angle 0 with fingers up points to -y, positive angles turn towards -x."""
    a = math.radians(angle_deg)
    direction = np.array([-math.sin(a), -math.cos(a)])
    return -direction if fingers_down else direction


def angle_band(angle_deg: float) -> str:
    """The band of |angle|: '0-20', '20-60' or 'over 60' degrees."""
    size = abs(angle_deg)
    return "0-20" if size <= 20 else "20-60" if size <= 60 else "over 60"


def tag_class(tag: str, vocabulary: WristVocabulary) -> str:
    """'wrist' or 'arm' when Body Part Examined names one in the vocabulary, 'empty' when blank,
    else 'own' (another part, or words the vocabulary does not know)."""
    params = WristFilterParams(vocabulary=vocabulary, check_image=False)
    return TAG_CLASSES.get(decide_wrist(None, body_part=tag, params=params).rule, "own")


def instance_outcome(
    row: Row, instance: PreprocessedInstance | None, vocabulary: WristVocabulary
) -> InstanceOutcome:
    """Score one instance against its truth row; None: it could not be read (not analysed)."""
    wrist = row["body_part"] == "wrist"
    analysed = wrist and instance is not None and instance.wrist.is_wrist
    refused = instance is None or not instance.wrist.is_wrist
    inversion_right = parts_right = None
    views: tuple[ViewOrientation, ...] = ()
    if analysed and instance is not None:
        decision = instance.inversion
        inversion_right = decision is not None and decision.inverted == (
            row["photometric"] == "inverted"
        )
        parts_right = len(instance.views) == int(row["parts"] or 0)
        if parts_right:
            views = _orientations(row, instance)
    return InstanceOutcome(
        body_part=row["body_part"],
        tag_class=tag_class(row["body_part_tag"], vocabulary),
        renderer=row.get("renderer") or "",
        scope_right=analysed if wrist else refused,
        inversion_right=inversion_right,
        photometric=row["photometric"],
        frame=row["frame"] or "none",
        frame_shape=(row["frame_shape"] or "none") if "frame_shape" in row else "",
        parts=int(row["parts"] or 0),
        parts_right=parts_right,
        views=views,
    )


def _orientations(row: Row, instance: PreprocessedInstance) -> tuple[ViewOrientation, ...]:
    boxes = json.loads(row["part_boxes"])
    fingers_down = row["fingers_down"] == "1"
    per_part = bool(row.get("part_angles_deg"))
    angles = json.loads(row["part_angles_deg"]) if per_part else [float(row["arm_angle_deg"])]
    downs = [bool(d) for d in json.loads(row.get("part_fingers_down") or "[]")]
    out = []
    for view in instance.views:
        # The view's centre lies in exactly one truth part: compare with that part's axis.
        height, width = view.pixels.shape
        cx, cy = view.to_source(np.array([[(width - 1) / 2, (height - 1) / 2]]))[0]
        matches = [i for i, (x0, y0, x1, y1) in enumerate(boxes) if x0 <= cx < x1 and y0 <= cy < y1]
        part = matches[0] if len(matches) == 1 else None
        if part is not None and part >= len(angles):
            continue  # the truth does not give this part's angle
        angle = float(angles[part or 0])
        down = downs[part] if part is not None and part < len(downs) else fingers_down
        error = 180.0
        if part is not None:
            up = view.transform.matrix[:2, :2] @ np.array([0.0, -1.0])
            cos = float(np.dot(up, finger_direction(angle, down)) / np.linalg.norm(up))
            error = math.degrees(math.acos(max(-1.0, min(1.0, cos))))
        out.append(ViewOrientation(error, angle_band(angle), "down" if down else "up"))
    return tuple(out)


def summarise(outcomes: Iterable[InstanceOutcome]) -> PreprocessingReport:
    """Every check's rate, overall and per category."""
    tallies: dict[str, _Tally] = {name: _Tally() for name in CHECKS}
    count = 0
    for o in outcomes:
        count += 1
        by_renderer = {"renderer": o.renderer} if o.renderer else {}
        side = "wrist tag" if o.body_part == "wrist" else "decoy tag"
        tallies["scope"].add(o.scope_right, {"body part": o.body_part, side: o.tag_class,
                                             **by_renderer})  # fmt: skip
        if o.inversion_right is not None:
            shape = {"frame shape": o.frame_shape} if o.frame_shape else {}
            tallies["inversion"].add(o.inversion_right, {"photometric": o.photometric,
                                     "frame": o.frame, **shape, **by_renderer})  # fmt: skip
        if o.parts_right is not None:
            tallies["parts"].add(o.parts_right, {"truth parts": str(o.parts), **by_renderer})
        for v in o.views:
            tallies["orientation"].add(v.error_deg <= ORIENTATION_TOLERANCE_DEG,
                                       {"angle": v.angle_band, "fingers": v.fingers,
                                        **by_renderer})  # fmt: skip
    return PreprocessingReport(count, {name: t.report() for name, t in tallies.items()})


def score(
    results: Iterable[tuple[Row, PreprocessedInstance]], vocabulary: WristVocabulary | None = None
) -> PreprocessingReport:
    """The report of (truth row, preprocessed instance) pairs; the wrist filter's packaged
    vocabulary classifies the tags unless another is given."""
    vocab = vocabulary or WristVocabulary.load()
    return summarise(instance_outcome(row, instance, vocab) for row, instance in results)


def archive_outcomes(
    archive: Path,
    params: PreprocessParams,
    *,
    workers: int = 1,
    progress: Callable[[int], None] | None = None,
) -> list[InstanceOutcome]:
    """Preprocess every non-corrupt instance of a synthetic archive with `params` and score it
    (in `workers` processes; only the small outcomes travel back)."""
    with (archive / "truth.csv").open(newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.DictReader(handle) if not row["corrupt"]]
    jobs = [(archive, row, params) for row in rows]
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            outcomes = []
            for outcome in pool.map(_outcome_of_file, jobs, chunksize=4):
                outcomes.append(outcome)
                if progress:
                    progress(1)
            return outcomes
    outcomes = []
    for job in jobs:
        outcomes.append(_outcome_of_file(job))
        if progress:
            progress(1)
    return outcomes


def _outcome_of_file(job: tuple[Path, Row, PreprocessParams]) -> InstanceOutcome:
    archive, row, params = job
    try:
        instance = preprocess_radiograph(read_radiograph(archive / row["path"]), params)
    except DicomImageError:
        instance = None
    return instance_outcome(row, instance, params.wrist.vocabulary)


class _Tally:
    """Hits and counts of one check, overall and per (dimension, value)."""

    def __init__(self) -> None:
        self.overall = [0, 0]
        self.groups: dict[str, dict[str, list[int]]] = {}

    def add(self, hit: bool, categories: Mapping[str, str]) -> None:
        for cell in (self.overall, *(self._cell(d, v) for d, v in categories.items())):
            cell[0] += int(hit)
            cell[1] += 1

    def _cell(self, dimension: str, value: str) -> list[int]:
        return self.groups.setdefault(dimension, {}).setdefault(value, [0, 0])

    def report(self) -> CheckReport:
        return CheckReport(
            Rate(*self.overall),
            {d: {v: Rate(*c) for v, c in sorted(self.groups[d].items())}
             for d in sorted(self.groups, key=DIMENSIONS.index)},
        )  # fmt: skip


def markdown_table(reports: Mapping[str, PreprocessingReport]) -> str:
    """One Markdown table: rows are the checks and their categories, one column per report
    (e.g. per world); cells 'rate [Wilson 95% CI] hits/n', '-' where a category is absent."""
    names = list(reports)
    lines = ["| check | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for check, title in CHECKS.items():
        per = [reports[n].checks[check] for n in names]
        lines.append(
            f"| **{check}**: {title} | " + " | ".join(_cell(c.overall) for c in per) + " |"
        )
        for dimension in sorted(_union(c.groups for c in per), key=DIMENSIONS.index):
            for value in sorted(_union(c.groups.get(dimension, {}) for c in per)):
                cells = [_cell(c.groups.get(dimension, {}).get(value)) for c in per]
                lines.append(f"| {check} · {dimension} = {value} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _union(keyed: Iterable[Iterable[str]]) -> set[str]:
    return {key for keys in keyed for key in keys}


def _cell(rate: Rate | None) -> str:
    if rate is None or rate.ci95 is None or rate.value is None:
        return "-"
    low, high = rate.ci95
    return f"{rate.value:.3f} [{low:.2f}, {high:.2f}] {rate.hits}/{rate.n}"
