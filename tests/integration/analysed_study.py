"""A fractured synthetic wrist study run through the node's own analysis: the objects a
radiologist's viewer gets (SR, GSPS, SC), made by the product path and not by hand."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pydicom

from dicomnode.analysis import analyse_study
from dicomnode.index import InstanceRow
from dicomnode.model_check import load_checked
from dicomnode.spool import Spool
from train.phantoms.archive import generate_archive, read_truth

REPO = Path(__file__).resolve().parents[2]
DEMO_BUNDLE = REPO / "config" / "models" / "wrist-demo"
# Seed 4 (the `make demo` seed) with six studies holds one fractured two-view wrist study.
ARCHIVE_SEED = 4
ARCHIVE_STUDIES = 6


@dataclass(frozen=True)
class AnalysedStudy:
    """One study's source images and the result objects the node wrote for it."""

    study_uid: str
    sources: tuple[Path, ...]
    sr: Path
    gsps: tuple[Path, ...]
    sc: tuple[Path, ...]

    @property
    def files(self) -> tuple[Path, ...]:
        """Every instance of the study, sources and results."""
        return (*self.sources, self.sr, *self.gsps, *self.sc)

    def source_of(self, presentation_state: Path) -> Path:
        """The source image a presentation state applies to."""
        ps = pydicom.dcmread(presentation_state, stop_before_pixels=True)
        uid = str(
            ps.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID
        )
        return next(p for p in self.sources if p.stem == uid)


def analysed_fractured_study(workdir: Path) -> AnalysedStudy:
    """Generate the synthetic archive under `workdir`, pick its fractured study and analyse it
    with the bundled demo model as the node's worker does."""
    archive = workdir / "archive"
    generate_archive(archive, studies=ARCHIVE_STUDIES, seed=ARCHIVE_SEED,
                     syntaxes=("explicit_le",))  # fmt: skip
    studies: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in read_truth(archive):
        if row["study_label"] == "1" and not row["corrupt"]:
            studies[row["study_instance_uid"]].append(row)
    if not studies:
        raise RuntimeError(f"the archive of seed {ARCHIVE_SEED} has no fractured study")
    study_uid, rows = next(iter(studies.items()))
    instances = [
        InstanceRow(sop_uid=row["sop_instance_uid"], study_uid=study_uid, series_uid="",
                    sop_class_uid="", path=archive / row["path"], calling_aet="VIEWERTEST",
                    association_id="viewer", received_at=time.time(), ours=False)
        for row in rows
    ]  # fmt: skip
    outcome = analyse_study(study_uid, instances, load_checked(DEMO_BUNDLE),
                            Spool(workdir / "results"))  # fmt: skip
    if not outcome.in_scope:
        raise RuntimeError(f"study {study_uid} was not analysed: {outcome.reason}")
    by_modality: dict[str, list[Path]] = defaultdict(list)
    for path in outcome.files:
        by_modality[str(pydicom.dcmread(path, stop_before_pixels=True).Modality)].append(path)
    (sr,) = by_modality["SR"]
    return AnalysedStudy(
        study_uid=study_uid,
        sources=tuple(archive / row["path"] for row in rows),
        sr=sr,
        gsps=tuple(sorted(by_modality["PR"])),
        sc=tuple(sorted(by_modality["OT"])),
    )
