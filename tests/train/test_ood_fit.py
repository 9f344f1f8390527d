"""Fitting a bundle's OOD detector: the threshold's validation rate, and `dicomnode-train
ood-fit` writing a detector the node then loads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.inference import ModelBundle
from pipeline.ood import OOD_FILE
from train.cli import main
from train.evaluation.metrics import wilson_interval
from train.ood_fit import ViewScores, allowed_abstentions, fit_detector, split_by_study
from train.phantoms.archive import generate_archive

BUNDLE = Path(__file__).resolve().parents[2] / "config" / "models" / "wrist-demo"


def _scores(n: int, seed: int, shift: float = 0.0) -> ViewScores:
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 5)) + shift
    return ViewScores({"penultimate": features}, rng.normal(size=n))


@pytest.mark.parametrize("kind", ["mahalanobis", "energy", "confidence"])
def test_fit_detector_sets_the_threshold_at_the_stated_rate(kind: str) -> None:
    validation = _scores(400, 2)
    detector = fit_detector(
        _scores(300, 1), validation, kind=kind, layer="penultimate", max_rate=0.02,
        rate_bound="point",
    )  # fmt: skip
    scores = detector.scores(validation.features["penultimate"], validation.logits)
    abstained = int(np.sum(scores > detector.threshold))
    assert abstained == detector.validation["abstained"] == 8  # floor(0.02 * 400)
    assert detector.validation["rate"] == pytest.approx(0.02)
    assert detector.validation["rate_ci95"] == pytest.approx(list(wilson_interval(8, 400)))
    assert detector.validation["views"] == 400 and detector.validation["fit_views"] == 300
    assert detector.validation["rate_bound"] == "point"


def test_fit_detector_holds_the_upper_bound_of_the_rate_by_default() -> None:
    """At 2% of 1000 views the measured share's interval reaches 3%: the default holds the upper
    Wilson bound to the target, so fewer views abstain, and one more would break it."""
    validation = _scores(1000, 2)
    detector = fit_detector(_scores(300, 1), validation, layer="penultimate", max_rate=0.02)
    scores = detector.scores(validation.features["penultimate"], validation.logits)
    abstained = int(np.sum(scores > detector.threshold))
    assert abstained == detector.validation["abstained"] == allowed_abstentions(1000, 0.02)
    assert 0 < abstained < 20
    assert wilson_interval(abstained, 1000)[1] <= 0.02 < wilson_interval(abstained + 1, 1000)[1]
    assert detector.validation["rate_ci95"][1] <= 0.02
    assert detector.validation["rate_bound"] == "upper"


def test_allowed_abstentions_refuses_a_validation_set_too_small_to_show_the_rate() -> None:
    assert allowed_abstentions(1000, 0.02, "point") == 20
    with pytest.raises(ValueError, match="more validation views"):
        allowed_abstentions(150, 0.02)  # even 0 of 150 has an upper bound of 2.5%
    with pytest.raises(ValueError, match="rate bound"):
        allowed_abstentions(1000, 0.02, "lower")


def test_mahalanobis_detector_flags_a_shifted_set() -> None:
    detector = fit_detector(_scores(300, 1), _scores(300, 2), layer="penultimate")
    far = _scores(100, 3, shift=4.0)
    rate = np.mean(detector.scores(far.features["penultimate"], far.logits) > detector.threshold)
    assert rate > 0.9


def test_split_by_study_keeps_studies_whole() -> None:
    studies = ["b", "a", "a", "c", "b", "d", "c"]
    first, second = split_by_study(studies)
    assert not np.any(first & second) and np.all(first | second)
    for uid in set(studies):
        sides = {bool(first[i]) for i, s in enumerate(studies) if s == uid}
        assert len(sides) == 1
    assert first.any() and second.any()


def test_ood_fit_command_writes_a_detector_the_bundle_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "archive"
    generate_archive(archive, studies=10, seed=21, syntaxes=("explicit_le",), workers=1)
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns(OOD_FILE))
    info = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    info.pop("ood", None)
    (bundle / "model.json").write_text(json.dumps(info), encoding="utf-8")

    # Ten studies are too few to show a 10% rate with confidence: refused, the bundle untouched.
    code = main(["ood-fit", "--bundle", str(bundle), "--archive", str(archive),
                 "--max-rate", "0.1"])  # fmt: skip
    assert code == 2 and "more validation views" in capsys.readouterr().err
    assert "ood" not in json.loads((bundle / "model.json").read_text(encoding="utf-8"))

    code = main(["ood-fit", "--bundle", str(bundle), "--archive", str(archive),
                 "--max-rate", "0.1", "--rate-bound", "point"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "in-distribution abstention on validation" in out and "Wilson 95%" in out
    written = json.loads((bundle / "model.json").read_text(encoding="utf-8"))
    entry = written["ood"]
    assert entry["kind"] == "mahalanobis" and entry["file"] == OOD_FILE
    assert entry["validation"]["rate"] <= 0.1
    assert {k: v for k, v in written.items() if k != "ood"} == info  # nothing else changed
    loaded = ModelBundle.load(bundle)
    assert loaded.ood is not None and loaded.ood.threshold == entry["threshold"]
    assert loaded.ood.layer == "pooled" and loaded.ood.mean.shape == (128 + 192,)


def test_ood_fit_refuses_a_folder_that_is_no_bundle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["ood-fit", "--bundle", str(tmp_path), "--archive", str(tmp_path)])
    assert code == 2
    assert "not a model bundle" in capsys.readouterr().err
