"""One record per preprocessed view: what `preprocess` prints and what `prepare` stores.

PNG views are 8-bit: they hold display-space images (after the VOI LUT), which is what a
radiologist's 8-10 bit monitor shows; one grey step (1/255) is below the quantum noise of any
radiograph, while 16-bit PNGs would double the dataset for no information the model can use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.files import atomic_writer
from pipeline.preprocess.evidence import for_view
from pipeline.preprocess.study import PreprocessedInstance, View


def write_png(pixels: np.ndarray, path: Path) -> None:
    """Write a [0, 1] float image as an 8-bit PNG, atomically and durably."""
    image = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    with atomic_writer(path) as handle:
        image.save(handle, format="PNG")


def read_png(path: Path) -> np.ndarray:
    """An 8-bit PNG view back as float32 in [0, 1]."""
    with Image.open(path) as image:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0


def view_record(
    source: str, instance: PreprocessedInstance, view: View, out: str
) -> dict[str, Any]:
    """The JSON-ready description of one view (field names are a documented interface)."""
    inversion = instance.inversion
    return {
        "source": source,
        "sop_instance_uid": instance.sop_instance_uid,
        "is_wrist": True,
        "wrist_reason": instance.wrist.reason,
        "wrist_rule": instance.wrist.rule,
        "part": view.part,
        "n_parts": view.n_parts,
        "inverted": view.inverted,
        "inversion_rule": inversion.rule if inversion else "",
        "rotation_deg": round(view.rotation_deg, 2),
        "fingers_flipped": view.fingers_flipped,
        "bbox": list(view.bbox),
        "width": int(view.pixels.shape[1]),
        "height": int(view.pixels.shape[0]),
        "out": out,
        "to_source": [[round(v, 6) for v in row] for row in view.transform.as_list()],
        "cues": [cue.as_dict() for cue in for_view(instance.cues, view.part)],
    }


def rejection_record(source: str, instance: PreprocessedInstance) -> dict[str, Any]:
    """The record of an instance the wrist filter turned away."""
    return {
        "source": source,
        "sop_instance_uid": instance.sop_instance_uid,
        "is_wrist": False,
        "wrist_reason": instance.wrist.reason,
        "wrist_rule": instance.wrist.rule,
        "cues": [cue.as_dict() for cue in instance.cues],
    }
