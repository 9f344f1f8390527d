"""Score an archive as the node would: its preprocessing, the bundle's model and its OOD detector.

`train.evaluate` reads a prepared dataset and knows nothing of the bundle's out-of-distribution
detector, so it cannot say what abstention does to the figures. This scores every wrist image of
a synthetic archive through the node's own steps (`train.ood_fit.archive_views`, then one
no-gradient pass that also captures the detector's features), and keeps per view the raw logit,
the OOD score and whether the view abstains, with the truth row it came from. Study results are
then computed from these views by `train.evaluation.abstention_transfer` exactly as
`ModelBundle.predict` does, once with the detector and once without.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.inference import ModelBundle
from pipeline.ood import FloatArray
from pipeline.preprocess.study import View
from train.ood_fit import archive_views, in_distribution, score_views
from train.phantoms.archive import read_truth


@dataclass(frozen=True)
class ArchiveScores:
    """Every view the node made of an archive's wrist images, scored."""

    views: tuple[View, ...]
    studies: tuple[str, ...]
    """Study Instance UID of each view."""
    logits: FloatArray
    """Raw (uncalibrated) view logits, test-time flip included when the bundle uses it."""
    ood_scores: FloatArray
    """The detector's score of each view (all zeros when the bundle has no detector)."""
    abstained: np.ndarray
    """Boolean: the detector abstains on the view."""
    truth: dict[str, dict[str, str]]
    """SOP Instance UID -> the archive's truth row."""
    labels: dict[str, int]
    """Study Instance UID -> study label (1: fractured), for every wrist study of the archive."""


def score_archive(bundle: ModelBundle, archive: Path, *, progress: bool = True) -> ArchiveScores:
    """The wrist images of `archive` (decoy body parts and corrupt files left out) through the
    node's preprocessing, the bundle's model and its detector."""
    rows = [r for r in read_truth(archive) if in_distribution(r)]
    found = archive_views(archive, bundle.preprocess_params, rows=in_distribution,
                          progress=progress)  # fmt: skip
    detector = bundle.ood
    layers = [detector.layer] if detector is not None and detector.needs_features else []
    scored = score_views(bundle, found.views, layers=layers, progress=progress)
    if detector is None:
        ood = np.zeros(len(found.views))
        abstained = np.zeros(len(found.views), dtype=bool)
    else:
        ood = detector.scores(scored.features.get(detector.layer), scored.logits)
        abstained = ood > detector.threshold
    return ArchiveScores(
        views=found.views,
        studies=found.studies,
        logits=scored.logits,
        ood_scores=np.asarray(ood, dtype=np.float64),
        abstained=np.asarray(abstained, dtype=bool),
        truth={r["sop_instance_uid"]: r for r in rows},
        labels={r["study_instance_uid"]: int(r["study_label"]) for r in rows},
    )
