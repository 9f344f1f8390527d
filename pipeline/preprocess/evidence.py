"""The evidence behind each preprocessing decision, in a form people read.

Every step already returns its decision with the numbers behind it (`WristDecision`,
`InversionDecision` with its `Collimation`, `Split`, `Alignment`). This module only restates
them as `Cue`s: which cue decided, its value, and the threshold it was compared with. Nothing
here decides anything; the cues are derived after the fact, so building them cannot change a
result. A cue's confidence is its distance from that threshold, on the cue's own scale, and None
when no threshold was involved: the heuristics give margins, not probabilities, and inventing
probabilities would mislead the radiologist who reads them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pipeline.models.view_net import body_part_words
from pipeline.preprocess.collimation import SIDES, Collimation
from pipeline.preprocess.inversion import InversionDecision, InversionParams
from pipeline.preprocess.part_splitter import Split, SplitterParams
from pipeline.preprocess.rotation import Alignment
from pipeline.preprocess.wrist_filter import WristDecision

_PHOTOMETRIC_SHORT = {"MONOCHROME1": "MONO1", "MONOCHROME2": "MONO2"}


@dataclass(frozen=True)
class Cue:
    """One piece of evidence behind one step's decision."""

    step: str
    """'scope', 'inversion', 'collimation', 'parts' or 'orientation'."""
    decision: str
    """What the step decided, e.g. 'wrist', 'refused (tag:other)', 'not inverted', '2 parts'."""
    cue: str
    """Which cue and its value, in words: 'image check: extremity score 0.41 below 0.70'."""
    short: str
    """The same in a few characters, for a caption under a thumbnail."""
    value: float | None = None
    threshold: float | None = None
    part: int | None = None
    """The view's part index for per-view cues (orientation); None for the whole image."""

    @property
    def confidence(self) -> float | None:
        """Distance of the value from its threshold (the cue's own scale), or None."""
        if self.value is None or self.threshold is None:
            return None
        return abs(self.value - self.threshold)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the fields, numbers rounded, and the confidence."""
        confidence = self.confidence
        return {
            "step": self.step,
            "decision": self.decision,
            "cue": self.cue,
            "value": _round(self.value),
            "threshold": _round(self.threshold),
            "confidence": _round(confidence),
            "part": self.part,
        }

    def text(self) -> str:
        """One line: 'inversion: not inverted (border ring 4% bright, ...)'."""
        return f"{self.step}: {self.decision} ({self.cue})"


def scope_cues(
    decision: WristDecision,
    *,
    min_match: float,
    veto: float,
    accept: float,
    reader: bool = False,
) -> tuple[Cue, ...]:
    """The tag and image cues of the wrist filter's verdict.

    `min_match` is the vocabulary's min_score; `veto` and `accept` the image thresholds the
    filter used (the view reader's when `reader`)."""
    source, _, kind = decision.rule.partition(":")
    verdict = "wrist" if decision.is_wrist else f"refused ({decision.rule})"
    cues: list[Cue] = []
    if source == "image":  # refused after the filter, by another step (e.g. inversion)
        return (Cue("scope", verdict, decision.reason, kind),)
    if source in ("tag", "description") and decision.score is not None:
        where = "Body Part Examined" if source == "tag" else "description"
        cue = (
            f"{where} matches {decision.matched_term!r} "
            f"(similarity {decision.score:.0f}, at least {min_match:.0f})"
        )
        short = f"{'tag' if source == 'tag' else 'descr'} {decision.matched_term}"
        cues.append(Cue("scope", verdict, cue, short, decision.score, min_match))
    else:
        said = "no tag or description" if source == "empty" else "no term matches the tags"
        cues.append(Cue("scope", verdict, said, "no tag" if source == "empty" else "tag ?"))
    score = decision.image_score
    name = "view reader wrist probability" if reader else "extremity score"
    if score is None:
        cues.append(Cue("scope", verdict, "image check skipped", "no img"))
        return tuple(cues)
    threshold = {"wrist": veto, "wrist+image-veto": veto, "other": None}.get(kind, accept)
    if threshold is None:  # the tag decided; the score is shown, not compared
        cue, short = f"image check: {name} {score:.2f} (not needed)", f"img {score:.2f}"
    else:
        above = score >= threshold
        cue = f"image check: {name} {score:.2f} {'at least' if above else 'below'} {threshold:.2f}"
        short = f"img {score:.2f}{'≥' if above else '<'}{threshold:.2f}"
    if reader and decision.image_body_part is not None:  # what the reader took the image for
        part, probability = decision.image_body_part
        cue += f"; looks like: {body_part_words(part)} (p={probability:.2f})"
        short += f" {body_part_words(part)}"
    cues.append(Cue("scope", verdict, cue, short, score, threshold))
    return tuple(cues)


def inversion_cues(
    decision: InversionDecision, photometric: str, params: InversionParams
) -> tuple[Cue, ...]:
    """The header, image and thesis cues of the inversion decision, and whether they agree."""
    verdict = "inverted" if decision.inverted else "not inverted"
    header = _PHOTOMETRIC_SHORT.get(photometric, photometric or "?")
    flipped = " (flipped to display when read)" if photometric == "MONOCHROME1" else ""
    cues = [Cue("inversion", verdict, f"Photometric Interpretation {photometric}{flipped}", header)]
    if decision.rule == "background-border" and decision.border_bright_fraction is not None:
        bright = decision.border_bright_fraction
        threshold = params.ring_majority if decision.inverted else 1.0 - params.ring_majority
        cue = (
            f"background at the border: {bright:.0%} of the border ring bright "
            f"(inverted from {params.ring_majority:.0%}, upright to {1 - params.ring_majority:.0%})"
        )
        cues.append(Cue("inversion", verdict, cue, "border", bright, threshold))
    elif decision.rule == "tails-no-background" and decision.tail_lengths is not None:
        dark, bright_tail = decision.tail_lengths
        cue = (
            f"histogram tails, no background at the border: dark tail {dark:.2f}, "
            f"bright tail {bright_tail:.2f} (the longer one is bone)"
        )
        cues.append(Cue("inversion", verdict, cue, "tails", bright_tail - dark, 0.0))
    else:
        cues.append(Cue("inversion", verdict, f"rule {decision.rule}", decision.rule))
    agrees = decision.thesis_would_invert == decision.inverted
    cue = (
        f"thesis Eq. 4.1: corner mean {decision.thesis_corner_mean:.0f} "
        f"{'at least' if decision.thesis_would_invert else 'below'} {params.thesis_threshold:.0f}"
        f", {'agrees' if agrees else 'disagrees'}"
    )
    short = "thesis agrees" if agrees else "thesis disagrees"
    thesis = Cue("inversion", verdict, cue, short, decision.thesis_corner_mean,
                 params.thesis_threshold)  # fmt: skip
    return (*cues, thesis)


def collimation_cue(collimation: Collimation) -> Cue:
    """Which of the four borders carry a uniform band (frame or collimation)."""
    found = [side for side in SIDES if side in collimation.bands]
    sides = ", ".join(f"{side} {'band' if side in found else 'none'}" for side in SIDES)
    if collimation.band_level is not None:
        sides += f"; band level {collimation.band_level:.2f}"
    decision = f"frame on {', '.join(found)}" if found else "no frame"
    short = f"frame {','.join(s[0].upper() for s in found)}" if found else "no frame"
    return Cue("collimation", decision, sides, short)


def parts_cue(split: Split, params: SplitterParams) -> Cue:
    """How many anatomic parts were kept, out of how many components."""
    n = len(split.parts)
    cue = (
        f"Otsu threshold {split.threshold:.2f}: {split.components_before_filtering} component(s), "
        f"{n} kept (at least {params.min_area_fraction:.0%} of the image and "
        f"{params.min_relative_area:.0%} of the largest)"
    )
    return Cue("parts", f"{n} part{'s' if n != 1 else ''}", cue, f"{n} part{'s' if n != 1 else ''}")


def orientation_cue(alignment: Alignment, rotation_deg: float, part: int) -> Cue:
    """The turn applied to one part and the fingers-end evidence behind the flip."""
    flipped = alignment.fingers_flipped
    decision = f"rotated {rotation_deg:+.0f} deg, fingers {'flipped up' if flipped else 'up'}"
    cue = (
        f"arm axis {alignment.axis_angle_deg:+.0f} deg from vertical (elongation "
        f"{alignment.elongation:.1f}); fingers-end score {alignment.finger_score:+.2f} "
        f"(below 0 flips)"
    )
    if abs(rotation_deg - alignment.rotation_deg) > 0.5:
        cue += f"; view reader overruled the heuristic {alignment.rotation_deg:+.0f} deg"
    short = f"rot {rotation_deg:+.0f}°{' flip' if flipped else ''}"
    return Cue("orientation", decision, cue, short, alignment.finger_score, 0.0, part)


def reader_cue(step: str, rule: str, evidence: str, part: int | None = None) -> Cue:
    """How the learned view reader's opinion was reconciled with the heuristic's."""
    return Cue(step, rule, f"view reader: {evidence}", f"reader {rule.partition(':')[2]}",
               part=part)  # fmt: skip


def for_view(cues: Iterable[Cue], part: int) -> tuple[Cue, ...]:
    """The whole-image cues and the given part's own ones."""
    return tuple(c for c in cues if c.part is None or c.part == part)


def summary(cues: Iterable[Cue]) -> str:
    """A compact line of the deciding cues, step by step: 'tag WRIST, img 0.92≥0.35 | inv no:
    MONO2, border, thesis agrees | no frame | 1 part | rot -12°'."""
    groups: dict[str, list[str]] = {}
    verdicts: dict[str, str] = {}
    for cue in cues:
        groups.setdefault(cue.step, []).append(cue.short)
        verdicts.setdefault(cue.step, cue.decision)
    out = []
    for step, shorts in groups.items():
        text = ", ".join(shorts)
        if step == "inversion":
            text = f"inv {'yes' if verdicts[step] == 'inverted' else 'no'}: {text}"
        elif step == "scope" and verdicts[step] != "wrist":
            text = f"{verdicts[step]}: {text}"
        out.append(text)
    return " | ".join(out)


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 4)
