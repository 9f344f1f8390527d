"""A bundle carries its view reader: `export`/`ensemble` copy it in, the node finds it inside the
bundle from any working directory, and a bundle whose reader is missing is refused at load."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from pipeline.dicomio import read_radiograph
from pipeline.inference import BundleError, ModelBundle
from pipeline.preprocess.params_io import params_from_dict, params_to_dict
from pipeline.preprocess.study import PreprocessParams, preprocess_radiograph
from pipeline.preprocess.view_reader import BUNDLED_READER, ViewReaderParams
from train.bundle_reader import carry_view_reader
from train.cli import main
from train.phantoms.archive import generate_archive, read_truth

ROOT = Path(__file__).resolve().parents[2]
READER = ROOT / "config" / "models" / "view-reader"
DEMO = ROOT / "config" / "models" / "wrist-demo"


def _with_reader(path: str) -> dict[str, object]:
    return params_to_dict(replace(PreprocessParams(), view_reader=ViewReaderParams(path=path)))


def test_export_copies_a_reader_named_relative_to_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(READER, tmp_path / "readers" / "vr")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "bundle"
    carried = carry_view_reader(_with_reader("readers/vr"), tmp_path / "dataset", out)
    assert params_from_dict(carried).view_reader.path == BUNDLED_READER
    for name in ("weights.pt", "model.json", "MODEL_CARD.md"):
        assert (out / BUNDLED_READER / name).read_bytes() == (READER / name).read_bytes()
    # An ensemble takes it from its first member, where it is named inside the member.
    ensemble = tmp_path / "ensemble"
    again = carry_view_reader(carried, out, ensemble)
    assert again == carried
    assert (ensemble / BUNDLED_READER / "weights.pt").is_file()


def test_preprocessing_without_a_reader_is_left_as_it_is(tmp_path: Path) -> None:
    plain = params_to_dict(PreprocessParams())
    assert carry_view_reader(plain, tmp_path, tmp_path / "out") == plain
    assert not (tmp_path / "out").exists()


def test_a_reader_that_is_nowhere_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no/such/reader"):
        carry_view_reader(_with_reader("no/such/reader"), tmp_path, tmp_path / "out")


def _bundle_naming(tmp_path: Path, reader: str, *, carry: bool) -> Path:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEMO, bundle, ignore=shutil.ignore_patterns(BUNDLED_READER))
    if carry:
        shutil.copytree(READER, bundle / BUNDLED_READER)
    info = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    info["preprocess"]["view_reader"] = {"path": reader}
    (bundle / "model.json").write_text(json.dumps(info), encoding="utf-8")
    return bundle


def test_the_node_finds_the_carried_reader_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle = _bundle_naming(tmp_path, BUNDLED_READER, carry=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    loaded = ModelBundle.load(bundle)
    assert Path(loaded.preprocess_params.view_reader.path) == bundle / BUNDLED_READER
    archive = tmp_path / "archive"
    generate_archive(archive, studies=3, seed=5, syntaxes=("explicit_le",), workers=1)
    row = next(r for r in read_truth(archive) if r["body_part"] == "wrist" and not r["corrupt"])
    done = preprocess_radiograph(read_radiograph(archive / row["path"]), loaded.preprocess_params)
    assert done.evidence and done.evidence[0].startswith("view reader view-reader 1.1.0")


def test_a_bundle_whose_reader_is_missing_is_refused_when_loaded(tmp_path: Path) -> None:
    bundle = _bundle_naming(tmp_path, BUNDLED_READER, carry=False)
    with pytest.raises(BundleError, match="names a view reader, 'view-reader'"):
        ModelBundle.load(bundle)


def test_prepare_with_a_view_reader_records_it_for_export(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    generate_archive(archive, studies=3, seed=6, syntaxes=("explicit_le",), workers=1)
    dataset = tmp_path / "dataset"
    code = main(["prepare", str(archive), "--labels", str(archive / "labels.csv"),
                 "--out", str(dataset), "--workers", "1",
                 "--view-reader", str(READER)])  # fmt: skip
    assert code == 0
    recorded = json.loads((dataset / "preprocess.json").read_text(encoding="utf-8"))
    assert recorded["view_reader"]["path"] == str(READER)
    with (dataset / "metadata.csv").open(encoding="utf-8") as handle:
        cues = [row["cues"] for row in csv.DictReader(handle)]
    assert cues and all("reader" in c for c in cues)  # every view's scope was read by it
    out = tmp_path / "bundle"
    carried = carry_view_reader(recorded, dataset, out)
    assert params_from_dict(carried).view_reader.path == BUNDLED_READER


def test_a_view_reader_folder_without_weights_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"no weights\.pt"):
        main(["prepare", str(tmp_path), "--labels", str(tmp_path / "labels.csv"),
              "--out", str(tmp_path / "dataset"), "--view-reader", str(tmp_path)])  # fmt: skip
