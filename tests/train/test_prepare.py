"""`preprocess`, `prepare` and `preview` commands on a synthetic archive."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.cli import main as train_main
from train.dataset.prepare import prepare
from train.dataset.split import assign_splits, pseudonym
from train.phantoms.archive import generate_archive, read_truth


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prep-archive")
    generate_archive(out, studies=45, seed=23, size="small", workers=2)
    return out


@pytest.fixture(scope="module")
def labels(archive: Path) -> Path:
    """The archive's labels with one study's label missing and a label for a missing study."""
    lines = (archive / "labels.csv").read_text(encoding="utf-8").splitlines()
    path = archive / "labels-edited.csv"
    path.write_text("\n".join([lines[0], *lines[2:], "2.25.1,A999,1"]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("key") / "pseudonym.key"


@pytest.fixture(scope="module")
def dataset(
    archive: Path, labels: Path, key_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("dataset")
    command = ["prepare", str(archive), "--labels", str(labels), "--out", str(out)]
    assert train_main([*command, "--workers", "2", "--key-file", str(key_file)]) == 0
    assert key_file.stat().st_mode & 0o077 == 0  # the key is readable by its owner only
    assert not (out / "pseudonym.key").exists()
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_preprocess_command_prints_one_json_line_per_view(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = list(read_truth(archive))
    wrist = next(
        r for r in truth if r["body_part"] == "wrist" and not r["corrupt"] and r["parts"] == "1"
    )
    chest = next(r for r in truth if r["body_part"] != "wrist" and not r["corrupt"])
    broken = next(r for r in truth if r["corrupt"])
    files = [str(archive / r["path"]) for r in (wrist, chest, broken)]
    assert train_main(["preprocess", *files, "--out", str(tmp_path)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 3
    view, other, error = lines
    assert view["is_wrist"] and view["sop_instance_uid"] == wrist["sop_instance_uid"]
    assert {
        "source",
        "wrist_reason",
        "part",
        "inverted",
        "rotation_deg",
        "fingers_flipped",
        "bbox",
        "width",
        "height",
        "out",
        "to_source",
    } <= set(view)
    assert (view["width"], view["height"]) == (341, 512)
    assert Image.open(view["out"]).size == (341, 512)
    matrix = np.array(view["to_source"])
    centre = matrix @ np.array([170.0, 255.5, 1.0])
    x0, y0, x1, y1 = view["bbox"]
    assert x0 <= centre[0] <= x1 and y0 <= centre[1] <= y1
    assert other["is_wrist"] is False and other["wrist_reason"]
    assert "error" in error and broken["sop_instance_uid"] not in json.dumps(view)


def test_prepare_writes_views_metadata_rejections_and_stats(archive: Path, dataset: Path) -> None:
    views = _csv(dataset / "metadata.csv")
    assert views and all((dataset / v["path"]).exists() for v in views)
    assert {v["split"] for v in views} == {"train", "val", "test"}
    per_patient = defaultdict(set)
    for v in views:
        per_patient[v["patient_pseudonym"]].add(v["split"])
    assert all(len(splits) == 1 for splits in per_patient.values())  # split by patient
    studies = list((dataset / "studies").glob("*.csv"))
    assert len([s for s in studies if not s.name.endswith(".rejected.csv")]) > 30
    reasons = " ".join(r["reason"] for r in _csv(dataset / "rejected.csv"))
    for expected in ("corrupt", "no label", "label without images", "not a wrist"):
        assert expected in reasons
    stats = json.loads((dataset / "stats.json").read_text())
    assert 0.05 < stats["normalisation"]["mean"] < 0.6 and stats["normalisation"]["std"] > 0.05
    assert stats["splits"]["train"]["views"] > stats["splits"]["test"]["views"] > 0
    assert (dataset / "sizes.png").exists()


def test_no_patient_name_or_id_reaches_the_dataset(archive: Path, dataset: Path) -> None:
    ids = {r["patient_id"] for r in read_truth(archive)}
    text = "".join(p.read_text(encoding="utf-8") for p in dataset.rglob("*.csv"))
    text += (dataset / "stats.json").read_text()
    assert not any(patient in text for patient in ids)
    assert "^" not in text  # DICOM person names (FAMILY^GIVEN)


def test_second_run_does_no_work(
    archive: Path, labels: Path, key_file: Path, dataset: Path
) -> None:
    before = {p: p.stat().st_mtime_ns for p in (dataset / "views").rglob("*.png")}
    summary = prepare(archive, labels, dataset, workers=2, key_file=key_file)
    assert summary.studies_prepared == 0 and summary.studies_already_done > 30
    assert {p: p.stat().st_mtime_ns for p in (dataset / "views").rglob("*.png")} == before


def test_shards_together_make_the_whole_dataset(
    archive: Path, labels: Path, key_file: Path, dataset: Path, tmp_path: Path
) -> None:
    for k in (1, 2):
        prepare(
            archive,
            labels,
            tmp_path / "sharded",
            workers=1,
            shard=(k, 2),
            key_file=key_file,
        )
    whole = {(v["sop_instance_uid"], v["part"], v["split"]) for v in _csv(dataset / "metadata.csv")}
    sharded = {
        (v["sop_instance_uid"], v["part"], v["split"])
        for v in _csv(tmp_path / "sharded" / "metadata.csv")
    }
    assert sharded == whole


def test_split_is_stratified_and_deterministic() -> None:
    key = b"k" * 32
    patients = {pseudonym(key, f"P{i}"): int(i % 3 == 0) for i in range(300)}
    splits = assign_splits(patients, key)
    assert splits == assign_splits(dict(reversed(patients.items())), key)
    for label in (0, 1):
        chosen = [splits[p] for p, lab in patients.items() if lab == label]
        share = {s: chosen.count(s) / len(chosen) for s in ("train", "val", "test")}
        assert share["train"] == pytest.approx(0.7, abs=0.02)
        assert share["test"] == pytest.approx(0.15, abs=0.02)
    assert pseudonym(key, "P1") != pseudonym(b"x" * 32, "P1")


def test_preview_draws_a_sheet(
    key_file: Path, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sheet = tmp_path / "sheet.png"
    assert (
        train_main(
            [
                "preview",
                str(dataset),
                "--out",
                str(sheet),
                "--count",
                "6",
                "--key-file",
                str(key_file),
            ]
        )
        == 0
    )
    assert "preview of 6 views" in capsys.readouterr().out
    with Image.open(sheet) as image:
        assert image.size == (3 * 2 * 256, 2 * (256 + 64))
        assert np.asarray(image).std() > 20
