"""A small analysed wrist study for the presentation-state tests: three images of one synthetic
study, chosen for how they are displayed, and the demo model's prediction on them."""

from __future__ import annotations

import dataclasses
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom

from dicomnode.reports import ReportContext
from dicomnode.reports.sr import level_of
from pipeline.dicomio import read_radiograph
from pipeline.inference import ModelBundle, StudyPrediction, ViewPrediction
from train.phantoms.archive import write_instance_file
from train.phantoms.plan import plan_study

DEMO = Path(__file__).resolve().parents[2] / "config" / "models" / "wrist-demo"
LOOKS = (
    ("CR", "monochrome2", "window"),  # a window to copy
    ("DX_PRESENTATION", "monochrome1", "window"),  # MONOCHROME1 saying INVERSE itself
    ("CR", "monochrome1", "none"),  # MONOCHROME1 without a Presentation LUT Shape or window
)
"""SOP kind, photometric situation and VOI of each image, in order."""


@dataclasses.dataclass(frozen=True)
class GspsStudy:
    paths: list[Path]
    sources: list[pydicom.Dataset]
    prediction: StudyPrediction
    context: ReportContext
    bundle: ModelBundle

    def views_of(self, index: int) -> list[ViewPrediction]:
        uid = str(self.sources[index].SOPInstanceUID)
        return [v for v in self.prediction.views if v.view.sop_instance_uid == uid]


def build_study(out: Path) -> GspsStudy:
    """Write the three images under `out` and predict on them with the demo bundle."""
    plan = next(
        p
        for i in range(200)
        if (p := plan_study(17, i, size="small", n_patients=100)).body_part == "wrist"
        and p.conformant
        and p.has_images
    )
    base = plan.instances[0]
    rng = np.random.default_rng(0)
    paths = []
    for number, (kind, photometric, voi) in enumerate(LOOKS, start=1):
        instance = replace(base, sop_kind=kind, photometric=photometric, voi=voi,
                           syntax="explicit_le", corrupt="", bits_stored=12,
                           sop_instance_uid=f"{base.sop_instance_uid}.{number}")  # fmt: skip
        paths.append(out / write_instance_file(out, plan, instance, rng)["path"])
    bundle = ModelBundle.load(DEMO)
    prediction = bundle.predict([read_radiograph(p) for p in paths])
    assert prediction.in_scope, prediction.reason
    sources = [pydicom.dcmread(p) for p in paths]
    context = ReportContext(sources=sources, bundle=bundle.info, institution="Test")
    return GspsStudy(paths, sources, prediction, context, bundle)


def blob(view: ViewPrediction) -> np.ndarray:
    """A heat map with one small blob in the middle of the view: a region well inside."""
    height, width = view.view.pixels.shape
    heat = np.zeros((height, width), dtype=np.float32)
    heat[height // 2 : height // 2 + 12, width // 3 : width // 3 + 10] = 1.0
    return heat


def marked(
    study: GspsStudy, index: int, probabilities: list[float], *, heat: bool = True
) -> tuple[list[ViewPrediction], StudyPrediction]:
    """Image `index`'s views with the given probabilities (views beyond the list: 0.01), the
    first with a blob heat map when `heat`, the others without a map; and the study prediction
    holding them, at the highest probability."""
    views = study.views_of(index)
    wanted = [*probabilities, *[0.01] * (len(views) - len(probabilities))]
    changed = [
        replace(v, probability=p, heatmap=blob(v) if heat and n == 0 else None)
        for n, (v, p) in enumerate(zip(views, wanted, strict=True))
    ]
    top = max(wanted)
    level = level_of(top, study.bundle.info)
    prediction = replace(study.prediction, probability=top, level=level, views=tuple(changed))
    return changed, prediction
