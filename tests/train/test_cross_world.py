"""A bundle's figures across worlds: `--world-test` on export, at the bundle's own thresholds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.train.tiny_dataset import make_tiny_dataset
from train.cli import main
from train.evaluation.cross_world import cross_world_entry, format_entry


def _report(possible: float, likely: float) -> dict[str, Any]:
    point = {"sensitivity": 0.95, "specificity": 0.4, "sensitivity_ci95": [0.9, 0.97],
             "specificity_ci95": [0.3, 0.5]}  # fmt: skip
    study = {
        "n": 200, "positives": 60, "auc": 0.931, "auc_ci95": [0.902, 0.958], "ece": 0.123,
        "operating_points": {"high_sensitivity": {**point, "threshold": possible},
                             "high_specificity": {**point, "sensitivity": 0.8,
                                                  "specificity": 0.9, "threshold": likely}},
    }  # fmt: skip
    return {"selected": "max", "aggregations": {"max": {"study": study}}}


def test_an_entry_is_the_selected_study_level_at_the_bundles_thresholds() -> None:
    entry = cross_world_entry(_report(0.3, 0.6), {"possible": 0.3, "likely": 0.6})
    assert (entry["n"], entry["positives"], entry["ece"]) == (200, 60, 0.123)
    assert entry["possible"]["threshold"] == 0.3 and entry["likely"]["specificity"] == 0.9
    assert format_entry(entry) == (
        "AUC 0.93 [0.90, 0.96] · possible 0.95/0.40 · likely 0.80/0.90 · ECE 0.12"
    )
    with pytest.raises(ValueError, match="must stay those of the training world"):
        cross_world_entry(_report(0.3, 0.5), {"possible": 0.3, "likely": 0.6})


def test_export_records_and_prints_the_figures_in_every_world(
    tiny_run: Path, tmp_path: Path
) -> None:
    worlds = {name: make_tiny_dataset(tmp_path / name, studies=18, seed=seed)
              for name, seed in (("phantom", 3), ("projection", 4))}  # fmt: skip
    out = tmp_path / "bundle"
    options = [f"--world-test={name}={path}" for name, path in worlds.items()]
    assert main(["export", str(tiny_run), "--out", str(out), "--synthetic", *options]) == 0
    info = json.loads((out / "model.json").read_text(encoding="utf-8"))
    cross = info["metrics"]["cross_world"]
    assert list(cross) == ["phantom", "projection"]
    for name, entry in cross.items():
        assert (entry["n"], entry["positives"], entry["dataset"]) == (18, 6, name)
        assert 0.0 <= entry["ece"] <= 1.0 and len(entry["auc_ci95"]) == 2
        # The bundle's own operating points, fixed on its validation split, not refitted here.
        assert entry["possible"]["threshold"] == info["thresholds"]["possible"]
        assert entry["likely"]["threshold"] == info["thresholds"]["likely"]
    card = (out / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "## Across worlds" in card and "| bundle / tested on | phantom | projection |" in card
    trained = Path(json.loads((tiny_run / "config.json").read_text())["dataset"]).name
    assert f"| wrist-fracture 0.1.0 (trained on `{trained}`) | " in card
    assert format_entry(cross["projection"]) in card
    assert "what a hospital should expect at best" in card


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--world-test", "phantom"], "is not NAME=DATASET"),
     (["--world-test", "a=x", "--world-test", "a=y"], "names world 'a' twice")],
)  # fmt: skip
def test_malformed_world_tests_are_refused(
    options: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Refused before the run folder is even read.
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "b"), *options]) == 2
    assert message in capsys.readouterr().err
