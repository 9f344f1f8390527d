"""Domain randomisation of the phantom world's images (`synth --randomise`, and `mixed`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from tests.phantom_specs import PLAIN
from train.phantoms.anatomy import render_view
from train.phantoms.appearance import randomise
from train.phantoms.archive import generate_archive, read_truth


def test_randomised_looks_differ_and_record_what_drew_them() -> None:
    image = render_view(PLAIN, np.random.default_rng(1)).image
    looks = [randomise(image, np.random.default_rng(seed)) for seed in range(40)]
    for out, params in looks:
        assert out.dtype == np.float32 and out.shape == image.shape
        assert out.min() >= 0.0 and out.max() <= 1.0
        json.dumps(params)  # JSON-ready for truth.csv
        assert {"tone", "processing", "noise", "contrast", "blur_px"} <= set(params)
    assert {p["tone"] for _, p in looks} == {"linear", "gamma", "s_curve"}
    assert {p["processing"] for _, p in looks} == {"none", "unsharp", "multiscale"}
    # The looks really differ: the grey level of the bone and the background moves around.
    medians = [float(np.median(out)) for out, _ in looks]
    assert np.std(medians) > 0.03
    again, params = randomise(image, np.random.default_rng(3))
    assert np.array_equal(again, looks[3][0]) and params == looks[3][1]


def test_the_look_changes_but_the_anatomy_stays_where_it_was() -> None:
    image = render_view(PLAIN, np.random.default_rng(2)).image
    out, _ = randomise(image, np.random.default_rng(5))
    bone = image > np.percentile(image, 90)
    air = image < np.percentile(image, 20)
    assert out[bone].mean() > out[air].mean() + 0.2  # still bright bone on a dark background
    assert np.corrcoef(out.ravel(), image.ravel())[0, 1] > 0.8


def test_randomise_leaves_files_and_truth_of_the_anatomy_alone(tmp_path: Path) -> None:
    generate_archive(tmp_path / "plain", studies=3, seed=8, syntaxes=("explicit_le",))
    generate_archive(tmp_path / "looks", studies=3, seed=8, syntaxes=("explicit_le",),
                     randomise=True)  # fmt: skip
    plain, looks = list(read_truth(tmp_path / "plain")), list(read_truth(tmp_path / "looks"))
    geometry = ("path", "part_boxes", "arm_angle_deg", "fracture_line", "photometric", "frame")
    assert [[r[k] for k in geometry] for r in plain] == [[r[k] for k in geometry] for r in looks]
    assert all(r["appearance"] == "{}" for r in plain)
    assert all(json.loads(r["appearance"])["renderer"] == "phantom" for r in looks)
    differ = [
        (tmp_path / "plain" / r["path"]).read_bytes()
        != (tmp_path / "looks" / r["path"]).read_bytes()
        for r in plain
        if not r["corrupt"]
    ]
    assert all(differ)


def test_a_mixed_archive_holds_both_worlds_each_with_its_appearance(tmp_path: Path) -> None:
    generate_archive(tmp_path, studies=12, seed=3, renderer="mixed", syntaxes=("explicit_le",))
    rows = list(read_truth(tmp_path))
    assert {r["renderer"] for r in rows} == {"phantom", "projection"}
    for row in rows:
        assert json.loads(row["appearance"])["renderer"] == row["renderer"]
