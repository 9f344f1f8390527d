"""The synthetic archive: what it contains, how often, and that the reader reads it right."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.dicomio import DicomImageError, read_radiograph
from tests.phantom_specs import folder_digest
from train.cli import main as train_main
from train.phantoms.archive import generate_archive, read_truth
from train.phantoms.encoding import TRANSFER_SYNTAXES
from train.phantoms.plan import as_code_string, plan_study


def test_same_seed_same_archive_other_seed_other_archive(tmp_path: Path) -> None:
    generate_archive(tmp_path / "a", studies=4, seed=5)
    generate_archive(tmp_path / "b", studies=4, seed=5, workers=2)
    generate_archive(tmp_path / "c", studies=4, seed=6)
    assert folder_digest(tmp_path / "a") == folder_digest(tmp_path / "b")
    assert folder_digest(tmp_path / "a") != folder_digest(tmp_path / "c")


def test_archive_files_labels_and_truth_agree(synthetic_archive: Path) -> None:
    truth = list(read_truth(synthetic_archive))
    files = {
        p.relative_to(synthetic_archive).as_posix()
        for p in (synthetic_archive / "dicom").rglob("*.dcm")
    }
    assert files == {row["path"] for row in truth}
    with (synthetic_archive / "labels.csv").open(newline="") as handle:
        labels = list(csv.DictReader(handle))
    assert set(labels[0]) == {"study_instance_uid", "accession_number", "label"}
    by_study = {row["study_instance_uid"]: row["label"] for row in labels}
    for row in truth:
        if row["study_instance_uid"] in by_study:
            assert by_study[row["study_instance_uid"]] == row["study_label"]
        if row["fracture_visible"] == "1":
            assert row["study_label"] == "1"


def test_archive_covers_every_situation() -> None:
    plans = [plan_study(11, i, size="small", n_patients=340) for i in range(400)]
    instances = [i for p in plans for i in p.instances]
    specs = [i.spec for i in instances]
    assert {i.sop_kind for i in instances} == {
        "CR",
        "DX_PRESENTATION",
        "DX_PROCESSING",
        "SC_GREY8",
        "SC_GREY16",
        "SC_RGB",
    }
    assert {i.photometric for i in instances} == {"monochrome1", "monochrome2", "inverted"}
    assert {i.voi for i in instances} == {"window", "sigmoid", "voi_lut", "none"}
    assert {8, 10, 12, 14, 16} <= {i.bits_stored for i in instances}
    assert {i.syntax for i in instances} == set(TRANSFER_SYNTAXES)
    assert {p.body_part for p in plans} == {"wrist", "chest", "pelvis", "skull"}
    assert {s.fracture.kind for s in specs if s.fracture} == {
        "transverse",
        "oblique",
        "buckle",
        "scaphoid",
    }
    assert any(s.fracture and s.fracture.subtle for s in specs)
    assert any(s.implant for s in specs) and any(s.cast for s in specs)
    assert {s.layout for s in specs} == {"single", "side_by_side", "joined"}
    assert any(s.fingers_down for s in specs) and any(abs(s.angle_deg) > 45 for s in specs)
    assert {s.frame for s in specs} == {None, "black", "white"}
    assert any(s.ruler for s in specs) and {s.marker for s in specs} == {None, "L", "R"}
    assert {i.corrupt for i in instances} == {"", "truncated", "header"}


def test_frequencies_follow_the_thesis_data() -> None:
    plans = [plan_study(3, i, size="small", n_patients=1700) for i in range(2000)]
    wrist = [p for p in plans if p.body_part == "wrist"]
    prevalence = sum(p.label for p in wrist) / len(wrist)
    assert 0.27 < prevalence < 0.35  # thesis Sec. 3.1: 31.13%
    views = Counter(len(p.instances) for p in wrist)
    assert views.most_common(1)[0][0] == 2 and max(views) <= 8
    fractured = [p for p in wrist if p.label and len(p.instances) >= 2]
    everywhere = sum(all(i.spec.fracture for i in p.instances) for p in fractured)
    assert 0.74 < everywhere / len(fractured) < 0.88  # thesis Sec. 6.3: 81%
    assert sum(not p.has_images for p in plans) > 0 and sum(not p.has_labels for p in plans) > 0
    assert len({p.patient_id for p in plans}) < len(plans)  # some patients have several studies
    tags = Counter(p.body_part_tag for p in wrist)
    assert {"WRIST", "MUNECA", "CANELL", "POIGNET", "HANDGELENK", "PUNHO", ""} <= set(tags)
    assert any(not p.conformant for p in plans)
    mistagged = [p for p in plans if p.body_part != "wrist" and p.body_part_tag in ("ARM", "BRAZO")]
    assert mistagged


def test_code_string_folding() -> None:
    assert as_code_string("muñeca izq") == "MUNECA IZQ"
    assert as_code_string("Poignet-G") == "POIGNET G"
    assert as_code_string("Handgelenk links rechts") == "HANDGELENK LINKS"


def _box_contrast(pixels: np.ndarray, boxes: list[list[int]]) -> float:
    """Mean of the arm's central region minus the mean of the background outside all boxes."""
    inside = np.zeros(pixels.shape, dtype=bool)
    centre = np.zeros(pixels.shape, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        inside[y0:y1, x0:x1] = True
        w, h = x1 - x0, y1 - y0
        centre[y0 + h // 3 : y1 - h // 3, x0 + w // 3 : x1 - w // 3] = True
    return float(pixels[centre].mean() - pixels[~inside].mean())


def test_every_instance_reads_with_bone_bright_unless_inverted(synthetic_archive: Path) -> None:
    checked = 0
    for row in read_truth(synthetic_archive):
        path = synthetic_archive / row["path"]
        if row["corrupt"]:
            with pytest.raises(DicomImageError):
                read_radiograph(path)
            continue
        image = read_radiograph(path)
        assert image.sop_instance_uid == row["sop_instance_uid"]
        assert image.pixels.shape == (int(row["rows"]), int(row["columns"]))
        boxes = json.loads(row["part_boxes"])
        if row["body_part"] != "wrist" or row["frame"] or not boxes:
            continue
        contrast = _box_contrast(image.pixels, boxes)
        if np.isnan(contrast):
            continue  # the arm fills the whole image: no background to compare with
        if row["photometric"] == "inverted":
            assert contrast < -0.05, row["path"]  # what the pipeline's inversion step must fix
        else:
            assert contrast > 0.05, row["path"]
        checked += 1
    assert checked > 40


def test_synth_command_writes_archive_and_contact_sheet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet = tmp_path / "sheet.png"
    assert (
        train_main(
            [
                "synth",
                "--out",
                str(tmp_path / "a"),
                "--studies",
                "30",
                "--seed",
                "2",
                "--preview",
                str(sheet),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "instances in" in out and "contact sheet of" in out
    tiles = int(out.split("contact sheet of ")[1].split()[0])
    assert tiles >= 12
    from PIL import Image

    with Image.open(sheet) as image:
        assert image.width == 5 * 256 and image.height >= 3 * 256
        assert np.asarray(image).std() > 20  # pictures, not an empty canvas


def test_full_size_archive_has_detector_sizes(tmp_path: Path) -> None:
    generate_archive(tmp_path, studies=3, seed=21, size="full")
    rows = [r for r in read_truth(tmp_path) if not r["corrupt"]]
    assert rows
    for row in rows:
        rows_, columns = int(row["rows"]), int(row["columns"])
        assert min(rows_, columns) >= 250 and max(rows_, columns) <= 4000
        assert read_radiograph(tmp_path / row["path"]).pixels.shape == (rows_, columns)
    assert max(max(int(r["rows"]), int(r["columns"])) for r in rows) > 1000
