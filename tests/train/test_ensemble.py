"""Ensembles of single-view models: the mean logit, its Grad-CAM, export and the node's loading."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import train.export
from pipeline.dicomio import Radiograph, read_radiograph
from pipeline.drift import DriftReference
from pipeline.gradcam import grad_cam_batch
from pipeline.inference import BundleError, ModelBundle
from pipeline.models import (
    FlipAveraged,
    ViewEnsemble,
    build_view_model,
    member_archs,
    min_input_side,
    without_test_time_flip,
)
from tests.train.tiny_dataset import make_tiny_dataset
from train.cli import main
from train.data.datasets import read_views
from train.ensemble import export_ensemble
from train.evaluate import LoadedModel, evaluate, fix_calibration, load_model, split_scores
from train.evaluation.subgroups import SubgroupSpec
from train.export import export


def test_view_ensemble_is_the_mean_of_its_members() -> None:
    torch.manual_seed(0)
    ensemble = build_view_model(arch="ensemble:rx_lite_bn+resnet18_slim").eval()
    assert isinstance(ensemble, ViewEnsemble)
    assert ensemble.arch == "ensemble:rx_lite_bn+resnet18_slim"
    x = torch.randn(3, 1, 64, 48)
    with torch.no_grad():
        expected = (ensemble.members[0](x) + ensemble.members[1](x)) / 2
        torch.testing.assert_close(ensemble(x), expected)
        reloaded = build_view_model(arch=ensemble.arch).eval()
        reloaded.load_state_dict(ensemble.state_dict())
        torch.testing.assert_close(reloaded(x), ensemble(x))
    assert min_input_side(ensemble.arch) == min_input_side("rx_lite_bn")
    assert member_archs("rx_lite_bn") == ()
    with pytest.raises(ValueError, match="at least two members"):
        member_archs("ensemble:rx_lite_bn")
    with pytest.raises(ValueError, match="unknown model arch"):
        build_view_model(arch="ensemble:rx_lite_bn+vgg16")


def test_ensemble_grad_cam_is_the_renormalised_mean_of_member_maps() -> None:
    torch.manual_seed(4)  # a seed where both untrained members' maps are not all zero
    ensemble = build_view_model(arch="ensemble:rx_lite_bn+resnet18_slim").eval()
    x = torch.randn(2, 1, 64, 48)
    logits, maps = grad_cam_batch(ensemble, x)
    (a_logits, a_maps), (b_logits, b_maps) = (grad_cam_batch(m, x) for m in ensemble.members)
    assert a_maps.max() > 0 and b_maps.max() > 0 and not np.allclose(a_maps, b_maps)
    np.testing.assert_allclose(logits, (a_logits + b_logits) / 2, rtol=1e-5, atol=1e-6)
    mean = (a_maps + b_maps) / 2
    for i in range(2):
        assert maps[i].shape == (64, 48) and maps[i].max() == pytest.approx(1.0)
        np.testing.assert_allclose(maps[i], mean[i] / mean[i].max(), rtol=1e-5, atol=1e-6)


def test_ensemble_bundle_is_calibrated_on_its_own_data_and_runs_in_the_node(
    member_bundles: list[Path], calibration_data: Path, tmp_path: Path,
    synthetic_archive: Path,
) -> None:  # fmt: skip
    external = make_tiny_dataset(tmp_path / "external", studies=24, seed=7)
    # Studies 1.2.0 ... 1.2.23; every third is fractured (make_tiny_dataset).
    sites = tmp_path / "sites.csv"
    sites.write_text("study_instance_uid,site\n" + "".join(
        f"1.2.{s},{'north' if s < 12 else 'south'}\n" for s in range(24)))  # fmt: skip
    out = tmp_path / "ensemble"
    info = export_ensemble(member_bundles, out, calibration=calibration_data,
                           calibration_split="all", name="tiny-ensemble", version="0.0.2",
                           synthetic=True, external_test=external, n_boot=50,
                           external_subgroups=SubgroupSpec(sites, ("site",)))  # fmt: skip
    assert info.arch == "ensemble:rx_lite_bn+resnet18_slim"
    data = info.metrics["calibration_data"]
    assert (data["dataset"], data["split"], data["studies"]) == (calibration_data.name, "all", 30)
    assert [m["arch"] for m in info.metrics["members"]] == ["rx_lite_bn", "resnet18_slim"]
    # The node's drift monitor compares production with the calibration data's outputs.
    reference = DriftReference.from_dict(info.drift_reference)
    assert (reference.source, reference.n_studies) == (f"split all of {calibration_data.name}", 30)
    assert json.loads((out / "model.json").read_text())["drift_reference"] == info.drift_reference
    assert info.metrics["external_test"]["dataset"] == "external"
    card = (out / "MODEL_CARD.md").read_text()
    assert "Not for clinical use" in card and "ensemble of 2 single-view models" in card
    groups = info.metrics["external_test"]["subgroups"]["site"]
    assert {v: (g["n"], g["positives"]) for v, g in groups.items()} == {
        "north": (12, 4), "south": (12, 4)}  # fmt: skip
    assert "### Subgroups of the external test set" in card
    external_study = info.metrics["external_test"]["aggregations"][info.aggregation]["study"]
    assert "24 studies, 8 fractured" in card
    # The card's table gives each operating point's rates with their Wilson intervals.
    point = external_study["operating_points"]["high_sensitivity"]
    (sens_low, sens_high), (spec_low, spec_high) = (
        point["sensitivity_ci95"],
        point["specificity_ci95"],
    )
    assert (
        f"| {point['sensitivity']:.3f} [{sens_low:.2f}, {sens_high:.2f}] / "
        f"{point['specificity']:.3f} [{spec_low:.2f}, {spec_high:.2f}] |"
    ) in card
    assert "| site = north | 12 | 4 |" in card and "| site = south | 12 | 4 |" in card
    assert sorted(p.name for p in (out / "members").iterdir()) == [
        "0-rx_lite_bn-curves.png", "0-rx_lite_bn.md", "1-resnet18_slim-curves.png",
        "1-resnet18_slim.md"]  # fmt: skip

    # The weights are the members' own.
    weights = torch.load(out / "weights.pt", weights_only=True)["model"]
    for index, member in enumerate(member_bundles):
        own = torch.load(member / "weights.pt", weights_only=True)["model"]
        assert all(torch.equal(weights[f"members.{index}.{k}"], v) for k, v in own.items())

    # The node loads it: each view's logit is the mean of the members', with a heat map.
    bundle = ModelBundle.load(out)
    members = [ModelBundle.load(m) for m in member_bundles]
    prediction = bundle.predict(_radiographs(synthetic_archive), heatmaps=True)
    assert prediction.in_scope and prediction.level in ("negative", "possible", "likely")
    for view in prediction.views:
        x = bundle.tensor(view.view)
        with torch.no_grad():
            alone = [float(m.model(x)[0]) for m in members]
        assert view.logit == pytest.approx(sum(alone) / 2, rel=1e-4, abs=1e-5)
        assert view.heatmap is not None and view.heatmap.shape == view.view.pixels.shape

    # Evaluated elsewhere, it uses the operating points fixed on the calibration data.
    report = evaluate(out, external, split="all", n_boot=50)
    assert report["calibrated_on"] == (
        f"the bundle's calibration data ({calibration_data.name}, split all)"
    )
    recorded = info.metrics["calibration"]["study"]
    for method, levels in report["aggregations"].items():
        points = levels["study"]["operating_points"]
        for name, threshold in recorded[method]["thresholds"].items():
            assert points[name]["threshold"] == pytest.approx(threshold)


def _radiographs(archive: Path, count: int = 6) -> list[Radiograph]:
    radiographs = []
    for path in sorted((archive / "dicom").rglob("*.dcm"))[:count]:
        try:
            radiographs.append(read_radiograph(path))
        except ValueError:
            continue
    return radiographs


def test_test_time_flip_is_calibrated_and_served_on_the_same_scores(
    member_bundles: list[Path], calibration_data: Path, tmp_path: Path,
    synthetic_archive: Path,
) -> None:  # fmt: skip
    out = tmp_path / "flip"
    info = export_ensemble(member_bundles, out, calibration=calibration_data,
                           calibration_split="all", name="tiny-flip", version="0.0.3",
                           synthetic=True, test_time_flip=True, n_boot=50)  # fmt: skip
    assert info.test_time_flip and json.loads((out / "model.json").read_text())["test_time_flip"]
    assert "Test-time flip: every view is scored as it is and mirrored" in (
        out / "MODEL_CARD.md").read_text()  # fmt: skip
    weights = torch.load(out / "weights.pt", weights_only=True)["model"]
    assert all(key.startswith("members.") for key in weights)  # the plain ensemble's weights

    # The node scores each view and its mirror image with the plain ensemble and averages.
    bundle = ModelBundle.load(out)
    assert isinstance(bundle.model, FlipAveraged)
    plain = without_test_time_flip(bundle.model)
    prediction = bundle.predict(_radiographs(synthetic_archive), heatmaps=True)
    assert prediction.views
    for view in prediction.views:
        x = bundle.tensor(view.view)
        with torch.no_grad():
            both = float(plain(x)[0]) + float(plain(torch.flip(x, dims=(-1,)))[0])
        assert view.logit == pytest.approx(both / 2, rel=1e-4, abs=1e-5)
        assert view.heatmap is not None and view.heatmap.shape == view.view.pixels.shape

    # Calibration was fitted on flip-averaged scores, the ones evaluation and the node see.
    rows = read_views(calibration_data, ("all",))
    loaded = load_model(out)
    assert isinstance(loaded.model, FlipAveraged)
    served = fix_calibration(split_scores(loaded, rows))
    assert served.view.temperature == pytest.approx(info.view_temperature, rel=1e-6)
    unflipped = LoadedModel(without_test_time_flip(loaded.model), None, loaded.augment, None)
    assert fix_calibration(split_scores(unflipped, rows)).view.temperature != pytest.approx(
        info.view_temperature, rel=1e-6)  # fmt: skip


def test_single_model_export_with_test_time_flip(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Validation must score the flip-averaged model (the tiny validation split separates
    # perfectly, so the fitted temperatures alone cannot tell the two apart).
    scored: list[object] = []

    def spy(loaded: LoadedModel, rows: list[Any]) -> Any:
        scored.append(loaded.model)
        return split_scores(loaded, rows)

    monkeypatch.setattr(train.export, "split_scores", spy)
    out = tmp_path / "single"
    info = export(tiny_run, out, name="tiny-flip", version="0.0.1", synthetic=True,
                  test_time_flip=True, n_boot=50)  # fmt: skip
    assert info.test_time_flip and isinstance(ModelBundle.load(out).model, FlipAveraged)
    assert len(scored) == 1 and isinstance(scored[0], FlipAveraged)
    assert "Test-time flip" in (out / "MODEL_CARD.md").read_text()
    with pytest.raises(ValueError, match="learned aggregator"):
        export(tiny_run, tmp_path / "x", name="x", version="1", aggregator_run=tiny_run,
               test_time_flip=True)  # fmt: skip
    raw = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**raw, "aggregation": "learned"}))
    with pytest.raises(BundleError, match="test_time_flip does not apply"):
        ModelBundle.load(out)


def test_ensemble_refuses_members_that_do_not_fit_together(
    member_bundles: list[Path], calibration_data: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    first, second = member_bundles
    with pytest.raises(ValueError, match="at least two"):
        export_ensemble([first], tmp_path / "e", calibration=calibration_data, name="e",
                        version="1")  # fmt: skip
    with pytest.raises(ValueError, match="overwrite one of its members"):
        export_ensemble([first, second], second, calibration=calibration_data, name="e",
                        version="1")  # fmt: skip
    odd = tmp_path / "odd"
    shutil.copytree(second, odd)
    info = json.loads((odd / "model.json").read_text())
    (odd / "model.json").write_text(json.dumps({**info, "mean": info["mean"] + 0.1}))
    with pytest.raises(ValueError, match="mean differs"):
        export_ensemble([first, odd], tmp_path / "e", calibration=calibration_data, name="e",
                        version="1")  # fmt: skip
    no_val = make_tiny_dataset(tmp_path / "no-val", studies=3)  # every study in train
    with pytest.raises(ValueError, match="calibration needs fractured and intact studies"):
        export_ensemble([first, second], tmp_path / "e", calibration=no_val, name="e",
                        version="1")  # fmt: skip
    # Through the command line: a refusal is one line on stderr and status 2.
    command = ["ensemble", str(first), "--out", str(tmp_path / "e"), "--calibration",
               str(no_val)]  # fmt: skip
    assert main(command) == 2
    assert "dicomnode-train ensemble:" in capsys.readouterr().err
    no_columns = ["ensemble", str(first), str(second), "--out", str(tmp_path / "e"),
                  "--calibration", str(calibration_data), "--external-test", str(no_val),
                  "--external-subgroups", str(tmp_path / "any.csv")]  # fmt: skip
    assert main(no_columns) == 2  # no --by: refused before any work
    assert "need the attribute columns" in capsys.readouterr().err
    no_test = [*no_columns[:-4], "--external-subgroups", str(tmp_path / "any.csv"), "--by", "x"]
    assert main(no_test) == 2
    assert "need the external test dataset" in capsys.readouterr().err
    assert main([*no_columns[:-2], "--by", "x"]) == 2  # --by without the CSV
    assert "give the CSV too" in capsys.readouterr().err
    nested = tmp_path / "nested"
    assert main(["ensemble", str(first), str(second), "--out", str(nested), "--calibration",
                 str(calibration_data), "--calibration-split", "all"]) == 0  # fmt: skip
    assert "(ensemble:rx_lite_bn+resnet18_slim, aggregation" in capsys.readouterr().out
    with pytest.raises(ValueError, match="ensemble already"):
        export_ensemble([first, nested], tmp_path / "e", calibration=calibration_data,
                        name="e", version="1")  # fmt: skip
    assert not (tmp_path / "e").exists()
