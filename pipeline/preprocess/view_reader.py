"""The learned view reader as a second opinion beside the heuristics, and how they are reconciled.

`ViewNet` (pipeline.models.view_net), trained on domain-randomised synthetic worlds, reads the
whole image: wrist or not, inverted or not, where the fingers point, and (readers trained with
the body-part head) which body part it shows, the words of a refusal. The heuristics stay: each
decision below takes both, keeps the heuristic where they agree, and where they disagree takes
the conservative way (refuse the instance rather than analyse a picture nobody can vouch for,
or take the reader's orientation only when it is sure) and says so in the evidence.

Loading is cached per weights file: a bundle's preprocessing names the reader it was built with,
and every process (a `prepare` worker, a node worker) loads it once.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from pipeline.models.view_net import (
    ViewNet,
    ViewReading,
    load_view_net,
    reading_from_outputs,
    thumbnail,
)


@dataclass(frozen=True)
class ViewReaderParams:
    """Where the reader is and how much its opinion weighs."""

    path: str = ""
    """Folder holding `weights.pt` and `model.json`; empty: no reader (heuristics alone)."""
    refuse_below: float = 0.2
    """A wrist-tagged image whose wrist probability is below this is refused."""
    accept_above: float = 0.5
    """An untagged or arm-tagged image is accepted when its wrist probability reaches this."""
    sure: float = 0.9
    """A probability beyond sure (or below 1 - sure) is a confident reading."""
    direction_confidence: float = 0.7
    """The reader's direction is trusted when its raw vector is at least this long."""
    axis_tolerance_deg: float = 25.0
    """Heuristic and reader axes closer than this agree (up to the direction of the fingers)."""


class ViewReader:
    """A loaded reader: `read(pixels)` runs one image through it on the CPU."""

    def __init__(self, net: ViewNet, name: str) -> None:
        self.net = net.eval()
        self.name = name

    def read(self, pixels: np.ndarray) -> ViewReading:
        """The reading of one display-space image."""
        x = torch.from_numpy(thumbnail(pixels))[None, None]
        with torch.inference_mode():
            return reading_from_outputs(self.net(x), body_parts=self.net.body_parts)


BUNDLED_READER = "view-reader"
"""The folder, inside a model bundle, of the view reader its preprocessing uses: a bundle carries
its reader, so the node finds it wherever the bundle is installed."""


def reader_in_bundle(bundle: Path, params: ViewReaderParams) -> ViewReaderParams:
    """`params` with the reader's path resolved: inside the bundle folder first (a relative
    path, as `export` writes it), else as given (absolute, or relative to the working
    directory: bundles made before readers were carried). No reader: `params` unchanged.
    Raises FileNotFoundError naming the path when neither place holds the reader's weights,
    so a bundle that could not preprocess a single image is refused when it is loaded."""
    if not params.path:
        return params
    given = Path(params.path)
    for folder in ([] if given.is_absolute() else [bundle / given]) + [given]:
        if (folder / "weights.pt").is_file() and (folder / "model.json").is_file():
            return replace(params, path=str(folder))
    raise FileNotFoundError(
        f"its preprocessing names a view reader, {params.path!r}, that is neither in the "
        "bundle nor at that path (weights.pt and model.json)"
    )


@lru_cache(maxsize=2)
def load_view_reader(path: str) -> ViewReader:
    """The reader in folder `path` (weights.pt, model.json), loaded once per process."""
    folder = Path(path)
    weights = folder / "weights.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"view reader: no weights.pt in {folder}")
    net, info = load_view_net(folder)
    return ViewReader(net, f"{info.get('name', folder.name)} {info.get('version', '')}".strip())


@dataclass(frozen=True)
class Reconciled:
    """One decision after both opinions: the value taken, or None to refuse, and why."""

    value: float | bool | None
    rule: str
    evidence: str


def reconcile_inversion(
    heuristic: bool, reading: ViewReading, params: ViewReaderParams
) -> Reconciled:
    """Keep the heuristic's inversion unless the reader is sure of the opposite: then refuse."""
    p = reading.inverted_probability
    reader = p >= 0.5
    said = f"heuristic {'inverted' if heuristic else 'not inverted'}, view reader p={p:.2f}"
    if reader == heuristic:
        return Reconciled(heuristic, "inversion:agree", said)
    if 1.0 - params.sure < p < params.sure:  # the reader is unsure: the heuristic stands
        return Reconciled(heuristic, "inversion:heuristic", said)
    return Reconciled(None, "inversion:disagree", said + ": the cues disagree, not analysed")


def reconcile_rotation(
    heuristic_rotation_deg: float, reading: ViewReading, params: ViewReaderParams
) -> Reconciled:
    """The counter-clockwise turn that puts the fingers up, from both opinions.

    The heuristic's fine axis is kept when the two axes agree; its fingers end is overruled by
    a confident reader (the heuristic's weakest cue); when the axes disagree, a confident
    reader's angle is taken, else the heuristic's."""
    heuristic_angle = _wrap(-heuristic_rotation_deg)
    reader_angle = reading.finger_angle_deg
    said = (f"heuristic fingers at {heuristic_angle:.0f} deg, view reader {reader_angle:.0f} deg "
            f"(confidence {reading.direction_confidence:.2f})")  # fmt: skip
    sure = reading.direction_confidence >= params.direction_confidence
    difference = abs(_wrap(heuristic_angle - reader_angle))
    if difference <= params.axis_tolerance_deg or not sure:
        return Reconciled(heuristic_rotation_deg, "rotation:heuristic", said)
    if abs(difference - 180.0) <= params.axis_tolerance_deg:
        flipped = _wrap(heuristic_rotation_deg + 180.0)
        return Reconciled(flipped, "rotation:reader-flip", said + ": fingers end taken from reader")
    return Reconciled(_wrap(-reader_angle), "rotation:reader", said + ": reader's axis taken")


def _wrap(degrees: float) -> float:
    return (degrees + 180.0) % 360.0 - 180.0
