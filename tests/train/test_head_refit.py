"""Group-balanced refit of the last layer: weights, the fit, its features, the ensemble export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.inference import ModelBundle
from pipeline.models import FlipAveraged, build_model
from tests.train.conftest import TINY
from tests.train.tiny_dataset import make_tiny_dataset
from train.cli import main
from train.data.datasets import read_views
from train.ensemble import export_ensemble
from train.evaluate import evaluate
from train.evaluation.subgroups import SubgroupSpec
from train.export import export
from train.fit import load_weights, predict_views
from train.head_refit import (
    Head,
    HeadRefitSpec,
    group_names,
    group_weights,
    last_linear,
    penultimate_features,
    refit_head,
    study_folds,
)


def test_group_weights_give_each_label_half_shared_by_its_groups() -> None:
    labels = np.array([0, 0, 0, 1, 1])
    groups = ["intact plain", "intact plain", "intact implant", "fx", "fx"]
    weights = group_weights(labels, groups)
    # Intact: two groups of a quarter each, the first shared by two views; fractured: one group.
    np.testing.assert_allclose(weights, [1 / 8, 1 / 8, 1 / 4, 1 / 4, 1 / 4])
    assert weights.sum() == pytest.approx(1.0)
    only_intact = group_weights(np.array([0, 0, 0]), ["a", "b", "b"])
    np.testing.assert_allclose(only_intact, [1 / 2, 1 / 4, 1 / 4])


def test_group_names_and_study_folds() -> None:
    names = group_names([1, 0], [{"implant": "1", "cast": "0"}, {"implant": "0", "cast": "0"}])
    assert names == ["label=1 cast=0 implant=1", "label=0 cast=0 implant=0"]
    studies = [f"1.2.{s // 2}" for s in range(400)]
    folds = study_folds(studies)
    assert all(folds[i] == folds[i + 1] for i in range(0, 400, 2))  # views of a study stay together
    assert sorted(set(folds.tolist())) == [0, 1, 2, 3, 4]
    np.testing.assert_array_equal(folds, study_folds(studies))  # stable


def _shortcut_data(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Features (signal, implant) of views whose implant comes with fractures far more often
    (25% vs 3%), as in the synthetic archive; returns features, labels, implant, studies."""
    rng = np.random.default_rng(seed)
    n = 4000
    labels = (rng.random(n) < 0.3).astype(int)
    implant = (rng.random(n) < np.where(labels == 1, 0.25, 0.03)).astype(int)
    signal = 2.0 * labels + rng.normal(0, 1, n)
    features = np.stack([signal, implant + rng.normal(0, 0.1, n)], axis=1)
    return features, labels, implant, np.arange(n)


def test_refit_removes_a_shortcut_that_training_learned() -> None:
    features, labels, implant, ids = _shortcut_data(0)
    # A layer that leans on the implant as much as on the real signal, as a shortcut does.
    trained = Head(np.array([2.0, 4.0]), -3.0)
    groups = group_names(labels.tolist(), [{"implant": str(i)} for i in implant])
    weights = group_weights(labels, groups)
    folds = study_folds([str(i) for i in ids])
    refitted, record = refit_head(features, labels, weights, folds, trained)

    assert abs(refitted.weight[1]) < 0.1 * refitted.weight[0]  # the implant no longer counts
    assert record["penalty"] < 1.0  # cross-validation chose to move away from the trained layer
    assert record["relative_weight_change"] > 0.1

    # On fresh data: intact wrists with an implant are flagged far less often at the same
    # sensitivity, and fractures stay found.
    test, test_labels, test_implant, _ = _shortcut_data(1)

    def flagged(head: Head, implant: int) -> float:
        """Share of intact views with/without an implant flagged at 90% sensitivity."""
        logits = test @ head.weight + head.bias
        threshold = np.quantile(logits[test_labels == 1], 0.10)
        return float((logits[(test_labels == 0) & (test_implant == implant)] >= threshold).mean())

    assert flagged(trained, 1) > 0.7  # the shortcut: most intact wrists with an implant
    assert flagged(refitted, 1) < 0.4
    assert flagged(refitted, 1) < flagged(refitted, 0) + 0.15  # about as often as without one


def test_a_strong_pull_keeps_the_trained_layer() -> None:
    features, labels, implant, ids = _shortcut_data(2)
    features = features * np.array([3.0, 0.5]) + np.array([1.0, -2.0])  # not standardised
    trained = Head(np.array([0.7, 1.5]), -0.4)
    weights = group_weights(labels, [str(x) for x in labels * 2 + implant])
    refitted, _ = refit_head(features, labels, weights, study_folds([str(i) for i in ids]), trained,
                             penalties=(1e9,))  # fmt: skip
    np.testing.assert_allclose(refitted.weight, trained.weight, atol=1e-6)
    assert refitted.bias == pytest.approx(trained.bias, abs=1e-6)


@pytest.mark.parametrize("arch", ["rx_lite_bn", "resnet18_slim"])
@pytest.mark.parametrize("flip", [False, True])
def test_features_are_what_the_last_layer_sees(arch: str, flip: bool, tmp_path: Path) -> None:
    torch.manual_seed(3)
    model = build_model(arch=arch).eval()
    rows = read_views(make_tiny_dataset(tmp_path, studies=6), ("all",))
    features = penultimate_features(model, rows, TINY, flip=flip)
    layer = last_linear(model)
    assert features.shape == (len(rows), layer.in_features)
    scored = FlipAveraged(model) if flip else model
    expected = predict_views(scored, rows, TINY, torch.device("cpu"))
    weight = layer.weight.detach().double().numpy().reshape(-1)
    logits = features @ weight + float(layer.bias.detach())
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def _sites(path: Path, studies: int) -> Path:
    path.write_text("study_instance_uid,site\n" + "".join(
        f"1.2.{s},{'north' if s % 4 else 'south'}\n" for s in range(studies)))  # fmt: skip
    return path


def test_ensemble_with_a_head_refit_changes_only_the_last_layers(
    member_bundles: list[Path], calibration_data: Path, tmp_path: Path
) -> None:
    head_data = make_tiny_dataset(tmp_path / "head", studies=40, seed=11)
    spec = HeadRefitSpec(head_data, SubgroupSpec(_sites(tmp_path / "sites.csv", 40), ("site",)))
    out = tmp_path / "refitted"
    info = export_ensemble(member_bundles, out, calibration=calibration_data,
                           calibration_split="all", name="tiny-refit", version="0.0.3",
                           synthetic=True, test_time_flip=True, head_refit=spec,
                           n_boot=20)  # fmt: skip
    refit = info.metrics["head_refit"]
    assert (refit["dataset"], refit["studies"], refit["columns"]) == ("head", 40, ["site"])
    assert refit["test_time_flip"] is True
    assert set(refit["groups"]) == {f"label={label} site={site}" for label in (0, 1)
                                    for site in ("north", "south")}  # fmt: skip
    assert sum(g["weight"] for g in refit["groups"].values()) == pytest.approx(1.0, abs=1e-3)
    assert [m["arch"] for m in refit["members"]] == ["rx_lite_bn", "resnet18_slim"]
    assert "Last layer refitted with group balance" in (out / "MODEL_CARD.md").read_text()

    weights = torch.load(out / "weights.pt", weights_only=True)["model"]
    last = {0: ("classifier.6.weight", "classifier.6.bias"), 1: ("fc.weight", "fc.bias")}
    for index, member in enumerate(member_bundles):
        own = torch.load(member / "weights.pt", weights_only=True)["model"]
        changed = {k for k, v in own.items() if not torch.equal(weights[f"members.{index}.{k}"], v)}
        assert changed and changed <= set(last[index])
    ModelBundle.load(out)  # the node loads it

    # Refusals: the head-fitting data may not be the calibration data; every study needs groups.
    same = HeadRefitSpec(calibration_data, spec.groups)
    with pytest.raises(ValueError, match="must not be the calibration data"):
        export_ensemble(member_bundles, tmp_path / "x", calibration=calibration_data,
                        name="x", version="0", head_refit=same)  # fmt: skip
    partial = HeadRefitSpec(head_data, SubgroupSpec(_sites(tmp_path / "few.csv", 10), ("site",)))
    with pytest.raises(ValueError, match="30 studies of the head-fitting data have no attributes"):
        export_ensemble(member_bundles, tmp_path / "y", calibration=calibration_data,
                        name="y", version="0", head_refit=partial)  # fmt: skip


def test_cli_refuses_half_given_refit_options(
    member_bundles: list[Path], calibration_data: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    args = ["ensemble", *map(str, member_bundles), "--out", str(tmp_path / "e"),
            "--calibration", str(calibration_data), "--refit-head", str(tmp_path)]  # fmt: skip
    assert main(args) == 2
    assert "--refit-head, --refit-groups and --refit-by together" in capsys.readouterr().err
    assert not (tmp_path / "e" / "model.json").exists()


def test_single_model_export_with_a_head_refit(tiny_run: Path, tmp_path: Path) -> None:
    head_data = make_tiny_dataset(tmp_path / "head", studies=40, seed=12)
    spec = HeadRefitSpec(head_data, SubgroupSpec(_sites(tmp_path / "sites.csv", 40), ("site",)))
    out = tmp_path / "bundle"
    info = export(tiny_run, out, name="tiny", version="0.0.4", head_refit=spec, n_boot=20)
    assert info.metrics["head_refit"]["members"][0]["arch"] == "rx_lite_bn"
    weights = torch.load(out / "weights.pt", weights_only=True)["model"]
    trained = load_weights(tiny_run)
    changed = {k for k, v in trained.items() if not torch.equal(weights[k], v)}
    assert changed and changed <= {"classifier.6.weight", "classifier.6.bias"}
    assert "Last layer refitted with group balance" in (out / "MODEL_CARD.md").read_text()
    # Validation scored the refitted model: its recorded AUCs are those of the saved weights.
    report = evaluate(out, Path(json.loads((tiny_run / "config.json").read_text())["dataset"]),
                      split="val", n_boot=20)  # fmt: skip
    for method, auc in info.metrics["validation_study_auc"].items():
        assert report["aggregations"][method]["study"]["auc"] == pytest.approx(auc)

    with pytest.raises(ValueError, match="learned aggregator has none"):
        export(tiny_run, tmp_path / "x", name="x", version="0", aggregator_run=tiny_run,
               head_refit=spec)  # fmt: skip
