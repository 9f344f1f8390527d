"""The cues behind each preprocessing decision reach `preprocess`, `prepare` and `preview`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from train.cli import main as train_main
from train.dataset.preview import CAPTION, CAPTION_LINES, TILE, caption_lines, write_preview
from train.dataset.split import load_or_create_key
from train.phantoms.archive import generate_archive, read_truth
from train.phantoms.contact_sheet import font

REFUSED_ORANGE = (255, 140, 90)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """16 studies; this seed draws a skull and a pelvis (tagged BASSIN) among the wrists."""
    out = tmp_path_factory.mktemp("evidence-archive")
    generate_archive(out, studies=16, seed=5, size="small", workers=2)
    return out


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("evidence-key") / "pseudonym.key"


@pytest.fixture(scope="module")
def dataset(archive: Path, key_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("evidence-dataset")
    command = ["prepare", str(archive), "--labels", str(archive / "labels.csv"), "--out", str(out)]
    assert train_main([*command, "--workers", "1", "--key-file", str(key_file)]) == 0
    return out


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_preprocess_json_lines_carry_the_cues(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    truth = [r for r in read_truth(archive) if not r["corrupt"]]
    wrist = next(r for r in truth if r["body_part"] == "wrist" and r["parts"] == "1")
    skull = next(r for r in truth if r["body_part"] == "skull")
    files = [str(archive / r["path"]) for r in (wrist, skull)]
    assert train_main(["preprocess", *files, "--out", str(tmp_path)]) == 0
    view, other = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    steps = [c["step"] for c in view["cues"]]
    assert steps[:2] == ["scope", "scope"] and steps[-1] == "orientation"
    assert {"inversion", "collimation", "parts"} <= set(steps)
    turn = view["cues"][-1]
    assert turn["part"] == view["part"] and turn["decision"].startswith("rotated")
    assert turn["confidence"] == pytest.approx(abs(turn["value"]), abs=1e-4)
    inversion = [c for c in view["cues"] if c["step"] == "inversion"]
    assert {c["decision"] for c in inversion} == {
        "inverted" if view["inverted"] else "not inverted"
    }
    assert other["is_wrist"] is False and [c["step"] for c in other["cues"]] == ["scope", "scope"]
    assert all(c["decision"] == f"refused ({other['wrist_rule']})" for c in other["cues"])


def test_prepare_stores_a_cue_line_per_view_and_per_refusal(dataset: Path) -> None:
    views = _csv(dataset / "metadata.csv")
    assert views and all(" | inv " in v["cues"] and " part" in v["cues"] for v in views)
    for v in views:
        flipped = v["cues"].endswith(" flip")
        assert flipped == (v["fingers_flipped"] == "True"), v["cues"]
        assert f"rot {float(v['rotation_deg']):+.0f}°" in v["cues"]
    refused = [r for r in _csv(dataset / "rejected.csv") if r["reason"].startswith("not a wrist")]
    assert len(refused) == 1  # the pelvis (the skull's study has no label)
    assert all(r["cues"].startswith("refused (") and "img 0." in r["cues"] for r in refused)


def test_caption_lines_wrap_the_cues_to_the_tile_width() -> None:
    text_font = font(12)
    row = {"label": "1", "split": "train", "part": "0", "n_parts": "1",
           "cues": "tag WRIST, img 0.97≥0.35 | inv no: MONO2, border, thesis agrees | "
                   "frame L,T | 1 part | rot -16° flip"}  # fmt: skip
    lines = caption_lines(row, text_font, 2 * TILE - 8)
    assert lines[0] == "label 1 train  part 1/1"
    assert " ".join(lines[1:]) == row["cues"] and len(lines) <= CAPTION_LINES
    assert all(text_font.getlength(line) <= 2 * TILE - 8 for line in lines)
    narrow = caption_lines(row, text_font, 120)
    assert len(narrow) == CAPTION_LINES and narrow[-1].endswith(" …")
    assert CAPTION_LINES * 16 <= CAPTION  # 12-point lines are 14-15 px high
    legacy = {**row, "cues": "", "wrist_rule": "tag:wrist", "inverted": "False",
              "inversion_rule": "background-border", "rotation_deg": "3.2",
              "fingers_flipped": "False"}  # fmt: skip
    assert "wrist: tag:wrist" in " ".join(caption_lines(legacy, text_font, 2 * TILE - 8))


def test_preview_draws_the_cues_and_the_refused_instances(
    archive: Path, dataset: Path, key_file: Path, tmp_path: Path
) -> None:
    key = load_or_create_key(key_file)
    with_cues = tmp_path / "cues.png"
    assert write_preview(dataset, archive, with_cues, key=key, count=3, columns=3) == 3
    blank = tmp_path / "blank-dataset"
    blank.mkdir()
    (blank / "views").symlink_to(dataset / "views")
    rows = _csv(dataset / "metadata.csv")
    with (blank / "metadata.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "cues": ""} for r in rows)
    without = tmp_path / "without.png"
    write_preview(blank, archive, without, key=key, count=3, columns=3)
    a, b = (np.asarray(Image.open(p).convert("RGB")) for p in (with_cues, without))
    assert a.shape == b.shape == (TILE + CAPTION, 3 * 2 * TILE, 3)
    differs = np.any(a != b, axis=2)
    assert differs[TILE:].sum() > 200 and not differs[:TILE].any()  # only the captions change

    sheet = tmp_path / "refused.png"
    command = ["preview", str(dataset), "--archive", str(archive), "--out", str(sheet)]
    assert (
        train_main([*command, "--count", "3", "--refused", "2", "--key-file", str(key_file)]) == 0
    )
    image = np.asarray(Image.open(sheet).convert("RGB"))
    assert image.shape == (2 * (TILE + CAPTION), 3 * 2 * TILE, 3)
    second_row = image[TILE + CAPTION : 2 * TILE + CAPTION]
    orange = np.all(second_row == REFUSED_ORANGE, axis=2)
    assert orange[:, TILE : 2 * TILE].sum() > 100  # "REFUSED" and the reason, beside the source
    assert not orange[:, 2 * TILE :].any()  # only one instance was refused
    assert second_row[:, :TILE].std() > 10  # the refused source is drawn
