"""Subgroup figures (train.evaluation.subgroups) by hand, and through `evaluate`."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from train.cli import main
from train.evaluate import evaluate
from train.evaluation.metrics import wilson_interval
from train.evaluation.subgroups import (
    MISSING,
    NONE,
    SubgroupSpec,
    format_subgroups,
    markdown_subgroups,
    read_study_attributes,
    subgroup_report,
)

POINTS = {"high_sensitivity": 0.3, "high_specificity": 0.7}


def _write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_a_studys_value_joins_its_distinct_non_empty_values(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "truth.csv", [
        {"study_instance_uid": "1", "kind": "scaphoid", "implant": "0"},
        {"study_instance_uid": "1", "kind": "", "implant": "0"},
        {"study_instance_uid": "2", "kind": "buckle", "implant": "1"},
        {"study_instance_uid": "2", "kind": "oblique", "implant": "1"},
        {"study_instance_uid": "3", "kind": "", "implant": "0"},
    ])  # fmt: skip
    assert read_study_attributes(path, ("kind", "implant")) == {
        "1": {"kind": "scaphoid", "implant": "0"},
        "2": {"kind": "buckle+oblique", "implant": "1"},
        "3": {"kind": NONE, "implant": "0"},
    }
    with pytest.raises(ValueError, match="no column cast"):
        read_study_attributes(path, ("kind", "cast"))


def test_operating_points_within_groups_by_hand() -> None:
    ids = ["a", "b", "c", "d", "e", "f", "g"]
    labels = np.array([1, 1, 0, 0, 1, 0, 0])
    probabilities = np.array([0.9, 0.5, 0.8, 0.1, 0.2, 0.4, 0.6])
    attributes = {i: {"implant": "1"} for i in ("a", "b", "c")}
    attributes |= {i: {"implant": "0"} for i in ("d", "e", "f")}  # "g" is not in the CSV
    report = subgroup_report(ids, labels, probabilities, POINTS, attributes, ("implant",))
    groups = report["implant"]
    assert list(groups) == ["(missing)", "0", "1"] and MISSING in groups
    implant = groups["1"]
    assert (implant["n"], implant["positives"]) == (3, 2)
    assert implant["auc"] == pytest.approx(0.5)  # c (0.8) outranks b (0.5), not a (0.9)
    # At 0.3 both fractures are called and the intact study c is a false positive;
    # at 0.7 only a is called, c still is.
    hs, hp = implant["high_sensitivity"], implant["high_specificity"]
    assert (hs["sensitivity"]["count"], hs["sensitivity"]["n"]) == (2, 2)
    assert hs["sensitivity"]["ci95"] == pytest.approx([0.3424, 1.0], abs=1e-4)  # Wilson, 2/2
    assert hs["specificity"]["value"] == 0.0 and hp["specificity"]["value"] == 0.0
    assert hp["sensitivity"]["value"] == pytest.approx(0.5)
    plain = groups["0"]
    assert plain["auc"] == pytest.approx(0.5)  # the fracture e (0.2) outranks d, not f
    assert plain["high_sensitivity"]["sensitivity"]["value"] == 0.0
    assert plain["high_sensitivity"]["specificity"]["count"] == 1  # d cleared, f (0.4) not
    missing = groups["(missing)"]
    assert missing["auc"] is None and missing["high_sensitivity"]["sensitivity"]["value"] is None
    assert missing["high_specificity"]["specificity"]["count"] == 1  # g at 0.6 < 0.7
    table = format_subgroups(report, tuple(POINTS))
    assert "implant=1" in table and "2/2    1.00 [0.34,1.00]" in table
    card = markdown_subgroups(report, tuple(POINTS))
    assert "| implant = 1 | 3 | 2 | 0.500 | 2/2 = 1.00 [0.34, 1.00] | 0/1 = 0.00" in card
    with pytest.raises(ValueError, match="same length"):
        subgroup_report(ids[:-1], labels, probabilities, POINTS, attributes, ("implant",))


def test_evaluate_reports_subgroups_that_add_up_to_the_whole(
    tiny: Path, tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with (tiny / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        studies = sorted({row["study_instance_uid"] for row in csv.DictReader(handle)})
    path = _write_csv(tmp_path / "attributes.csv", [
        {"study_instance_uid": uid, "site": "north" if i % 2 else "south"}
        for i, uid in enumerate(studies)
    ])  # fmt: skip
    with pytest.raises(ValueError, match="need the attribute columns"):
        SubgroupSpec(path, ())
    spec = SubgroupSpec(path, ("site",))
    report = evaluate(tiny_run, tiny, split="test", n_boot=20, subgroups=spec)
    whole = report["aggregations"][report["selected"]]["study"]
    groups = report["subgroups"]["site"]
    assert set(groups) == {"north", "south"}
    assert sum(g["n"] for g in groups.values()) == whole["n"]
    assert sum(g["positives"] for g in groups.values()) == whole["positives"]
    (tn, fp), (fn, tp) = whole["confusion"]
    for name, point in whole["operating_points"].items():
        detected = sum(g[name]["sensitivity"]["count"] for g in groups.values())
        assert detected / whole["positives"] == pytest.approx(point["sensitivity"])
        assert point["sensitivity_ci95"] == list(wilson_interval(detected, whole["positives"]))
        cleared = sum(g[name]["specificity"]["count"] for g in groups.values())
        assert cleared / (whole["n"] - whole["positives"]) == pytest.approx(point["specificity"])
        assert point["specificity_ci95"] == list(
            wilson_interval(cleared, whole["n"] - whole["positives"])
        )
    assert tn + fp + fn + tp == whole["n"]

    base = ["evaluate", str(tiny_run), str(tiny), "--bootstrap", "20", "--subgroups", str(path)]
    assert main(base) == 2
    assert "need the attribute columns" in capsys.readouterr().err
    assert main([*base, "--by", "ward"]) == 2
    assert "no column ward" in capsys.readouterr().err
    assert main([*base, "--by", "site"]) == 0
    out = capsys.readouterr().out
    assert "site=north" in out and "site=south" in out
    point = whole["operating_points"]["high_sensitivity"]
    (sens_low, sens_high), (spec_low, spec_high) = (
        point["sensitivity_ci95"],
        point["specificity_ci95"],
    )
    assert (
        f"high_sensitivity {point['sensitivity']:.3f} [{sens_low:.2f}, {sens_high:.2f}] / "
        f"{point['specificity']:.3f} [{spec_low:.2f}, {spec_high:.2f}]"
    ) in out
