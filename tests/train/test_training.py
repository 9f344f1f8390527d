"""Training package: sampler, augmentation, fit, DDP, evaluation format, export round trip."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.dicomio import read_radiograph
from pipeline.inference import ModelBundle
from tests.train.tiny_dataset import HEIGHT, WIDTH, make_tiny_dataset
from train.data.augment import AugmentParams, evaluation_transform, training_transform
from train.data.sampler import BalancedSampler
from train.evaluate import evaluate
from train.export import export
from train.fit import FitConfig, fit

TINY = AugmentParams(height=HEIGHT, width=WIDTH)


def test_sampler_balances_classes_without_repeats() -> None:
    labels = [0] * 690 + [1] * 310
    sampler = BalancedSampler(labels, seed=3)
    drawn = list(sampler)
    assert len(drawn) == 2 * 310 and len(set(drawn)) == len(drawn)  # Eq. 4.3: 2 x n_min
    share = Counter(labels[i] for i in drawn)[1] / len(drawn)
    # Eq. 4.3 starts balanced; without replacement the minority's mass runs out faster, so an
    # epoch of 2 x n_min draws holds about 40% minority (uniform sampling would give 31%).
    assert 0.37 < share < 0.45
    sampler.set_epoch(1)
    assert list(sampler) != drawn  # a new draw each epoch
    halves = [list(BalancedSampler(labels, seed=3, rank=r, world_size=2)) for r in (0, 1)]
    assert not set(halves[0]) & set(halves[1]) and len(halves[0]) == len(halves[1]) == 310
    with pytest.raises(ValueError):
        BalancedSampler([0, 0, 0])


def test_augmentation_keeps_shape_and_is_random() -> None:
    params = AugmentParams(height=512, width=341, mean=0.3, std=0.2)
    image = torch.rand(1, 480, 400)  # another aspect ratio: padded, then resized
    train = training_transform(params)
    outs = [train(image) for _ in range(3)]
    assert all(o.shape == (1, 512, 341) for o in outs)
    assert not torch.equal(outs[0], outs[1])
    evaluation = evaluation_transform(params)
    assert torch.equal(evaluation(image), evaluation(image))
    inverted = training_transform(replace(params, invert=True, flip=0.0, crop_min=1.0))
    dark = image * 0.4  # mean about 0.2: inverted, about 0.8
    flips = {bool(inverted(dark).mean() > evaluation(dark).mean()) for _ in range(30)}
    assert flips == {True, False}  # inversion applied to some draws, not all


def test_fit_lowers_the_loss_and_writes_the_run_folder(tiny_run: Path) -> None:
    rows = [json.loads(line) for line in (tiny_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert max(r["val_auc_study"] for r in rows) > 0.8
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["git_commit"] and len(config["dataset_hash"]) == 64
    for name in ("best.pt", "last.pt", "curves.png", "roc.png", "checkpoints/epoch_004.pt"):
        assert (tiny_run / name).exists(), name


def test_fit_resumes_from_last_checkpoint(tiny: Path, tiny_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    config = FitConfig(dataset=str(tiny), arch="rx_lite_bn", epochs=5, batch_size=8, workers=0,
                       augment=TINY)  # fmt: skip
    fit(config, run, resume=True)
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3, 4, 5]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize(
    "extra", [[], ["--preload", "--schedule", "cosine"]], ids=["dataloader", "preload-cosine"]
)
def test_ddp_with_two_gloo_processes_keeps_replicas_identical(
    tiny: Path, tmp_path: Path, extra: list[str]
) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        str(torchrun),
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "train.cli",
        "fit",
        str(tiny),
        "--arch",
        "rx_lite_bn",
        "--out",
        str(tmp_path / "ddp"),
        "--epochs",
        "2",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--input-size",
        f"{WIDTH}x{HEIGHT}",
        *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env,
                            cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [r["ranks"] for r in rows] == [2, 2]
    assert all(r["ranks_agree"] is True for r in rows)


def test_evaluate_json_has_the_documented_shape(tiny: Path, tiny_run: Path) -> None:
    report = evaluate(tiny_run, tiny, split="test", n_boot=200)
    assert report["selected"] in report["aggregations"]
    assert set(report["aggregations"]) == {"alo", "majority", "mean", "max"}
    for levels in report["aggregations"].values():
        for level in ("study", "instance"):
            r = levels[level]
            assert {"auc", "auc_ci95", "accuracy", "confusion", "operating_points"} <= set(r)
            assert set(r["operating_points"]) == {"high_sensitivity", "high_specificity"}
            assert {"threshold", "sensitivity", "specificity"} <= set(
                r["operating_points"]["high_sensitivity"]
            )
            assert len(r["confusion"]) == 2 and sum(map(sum, r["confusion"])) == r["n"]


def test_exported_bundle_reloads_and_predicts_identically(
    tiny_run: Path, tmp_path: Path, synthetic_archive: Path
) -> None:
    bundle_dir = tmp_path / "bundle"
    info = export(tiny_run, bundle_dir, name="tiny", version="0.0.1", synthetic=True, n_boot=100)
    assert (bundle_dir / "MODEL_CARD.md").read_text().count("synthetic") >= 1
    assert (bundle_dir / "curves.png").read_bytes() == (tiny_run / "curves.png").read_bytes()
    assert 0 <= info.thresholds["possible"] <= info.thresholds["likely"] <= 1
    assert info.drift_reference["source"].startswith("split val of ")
    assert sum(info.drift_reference["bin_fractions"]) == pytest.approx(1.0)
    first, second = ModelBundle.load(bundle_dir), ModelBundle.load(bundle_dir)
    paths = sorted((synthetic_archive / "dicom").rglob("*.dcm"))[:6]
    radiographs = []
    for path in paths:
        try:
            radiographs.append(read_radiograph(path))
        except ValueError:
            continue
    a = first.predict(radiographs, heatmaps=True)
    b = second.predict(radiographs, heatmaps=False)
    assert a.in_scope and a.probability == b.probability and a.level == b.level
    assert [v.probability for v in a.views] == [v.probability for v in b.views]
    for view in a.views:
        assert view.heatmap is not None and view.heatmap.shape == view.view.pixels.shape
    # The bundle's model is the run's best model.
    state = torch.load(tiny_run / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(state[k], v) for k, v in first.model.state_dict().items())
    np.testing.assert_allclose(a.views[0].probability, b.views[0].probability)


def test_bundle_evaluated_elsewhere_uses_only_its_own_calibration(
    tiny_run: Path, tmp_path: Path
) -> None:
    other = make_tiny_dataset(tmp_path / "other", studies=30, seed=9)
    bundle_dir = tmp_path / "bundle"
    info = export(tiny_run, bundle_dir, name="tiny", version="0.0.1", synthetic=True,
                  external_test=other, n_boot=100)  # fmt: skip
    recorded = info.metrics["calibration"]
    assert set(recorded["study"]) == {"alo", "majority", "mean", "max"}
    external = info.metrics["external_test"]
    assert external["split"] == "all" and external["dataset"] == "other"
    assert sum(sum(row) for row in external["aggregations"]["mean"]["study"]["confusion"]) == 30
    card = (bundle_dir / "MODEL_CARD.md").read_text()
    assert "external test set (other" in card and f"**{info.aggregation}** (bundle)" in card
    # Nothing is fitted on the evaluated data: every operating point is the bundle's, even if
    # the other dataset's own validation split would move it.
    report = evaluate(bundle_dir, other, split="all", n_boot=100)
    assert report["calibrated_on"] == "the bundle's validation split"
    for method, levels in report["aggregations"].items():
        points = levels["study"]["operating_points"]
        for name, threshold in recorded["study"][method]["thresholds"].items():
            assert points[name]["threshold"] == pytest.approx(threshold)
    view_points = report["aggregations"]["mean"]["instance"]["operating_points"]
    assert view_points["high_specificity"]["threshold"] == pytest.approx(
        recorded["view"]["thresholds"]["high_specificity"]
    )


def test_bundle_with_a_learned_aggregator_competes_on_validation(
    tiny: Path, tiny_run: Path, tmp_path: Path
) -> None:
    aggregator_run = tmp_path / "aggregator"
    config = FitConfig(dataset=str(tiny), arch="aggregator", epochs=1, batch_size=4, workers=0,
                       init_from=str(tiny_run), trunk_arch="rx_lite_bn", augment=TINY)  # fmt: skip
    fit(config, aggregator_run)
    bundle_dir = tmp_path / "bundle"
    info = export(tiny_run, bundle_dir, name="tiny", version="0.0.1", aggregator_run=aggregator_run,
                  synthetic=True, n_boot=100)  # fmt: skip
    assert "learned" in info.metrics["validation_study_auc"]
    assert "learned" in info.metrics["calibration"]["study"]
    weights = torch.load(bundle_dir / "weights.pt", weights_only=True)
    assert weights["aggregator"] and all(
        t.device.type == "cpu" for t in weights["aggregator"].values()
    )
    trained = torch.load(aggregator_run / "best.pt", weights_only=False)["model"]
    assert all(torch.equal(trained[k], v) for k, v in weights["aggregator"].items())
    report = evaluate(bundle_dir, tiny, split="test", n_boot=100)
    assert "learned" in report["aggregations"]
