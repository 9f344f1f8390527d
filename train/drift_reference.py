"""A bundle's `drift_reference` from a labelled-or-not DICOM archive, the way the node sees it.

Bundles exported by `export` and `ensemble` carry one from their calibration data. This gives an
older bundle one: every study of an archive (a synthetic one: `dicomnode-train synth`) goes
through the node's own path (DICOM reading, preprocessing, `ModelBundle.predict`), and the
calibrated study probabilities of the studies in scope become the reference.

    python -m train.drift_reference BUNDLE ARCHIVE --source "synth --studies 400 --seed 2002"
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import pydicom

from pipeline.dicomio import DicomImageError, read_radiograph
from pipeline.drift import reference_from_probabilities
from pipeline.inference import ModelBundle
from train.phantoms.archive import read_truth


def archive_probabilities(bundle: ModelBundle, archive: Path) -> tuple[list[float], int]:
    """Calibrated study probabilities of the archive's studies in scope, and how many studies
    were out of scope (or unreadable)."""
    studies: dict[str, list[Path]] = defaultdict(list)
    for row in read_truth(archive):
        studies[row["study_instance_uid"]].append(archive / row["path"])
    probabilities, out_of_scope = [], 0
    for uid in sorted(studies):
        radiographs = []
        for path in studies[uid]:
            try:
                radiographs.append(read_radiograph(pydicom.dcmread(path)))
            except (DicomImageError, OSError, ValueError):
                continue  # a corrupt instance, as the node skips it
        prediction = bundle.predict(radiographs, heatmaps=False) if radiographs else None
        if prediction is None or not prediction.in_scope:
            out_of_scope += 1
        else:
            probabilities.append(prediction.probability)
    return probabilities, out_of_scope


def add_reference(bundle_path: Path, archive: Path, source: str) -> dict[str, Any]:
    """Compute the reference and add it to the bundle's model.json, every other key as it was."""
    bundle = ModelBundle.load(bundle_path)
    probabilities, out_of_scope = archive_probabilities(bundle, archive)
    reference = reference_from_probabilities(probabilities, bundle.info.thresholds,
                                             source=source)  # fmt: skip
    reference["out_of_scope_studies"] = out_of_scope
    path = bundle_path / "model.json"
    info = json.loads(path.read_text(encoding="utf-8"))
    info["drift_reference"] = reference
    path.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return reference


def main(argv: list[str] | None = None) -> None:
    """Command line: add a drift reference to a bundle."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("archive", type=Path)
    parser.add_argument("--source", required=True, help="which data, recorded in the reference")
    args = parser.parse_args(argv)
    reference = add_reference(args.bundle, args.archive, args.source)
    print(json.dumps({k: v for k, v in reference.items() if k != "bin_edges"}, indent=2))


if __name__ == "__main__":  # pragma: no cover
    main()
