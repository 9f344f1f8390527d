"""The out-of-distribution scores and detector (`pipeline.ood`) on small known inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.models import build_view_model, with_test_time_flip
from pipeline.models.flip import mirror
from pipeline.ood import (
    OodDetector,
    feature_layers,
    gaussian_fit,
    ledoit_wolf,
    logit_scores,
    mahalanobis,
    threshold_at,
    view_features,
)


def _samples(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d))
    return rng.normal(size=(n, d)) @ mixing + rng.normal(size=d) * 5


def test_mahalanobis_matches_a_direct_computation() -> None:
    x = _samples(200, 6)
    mean, precision, _ = gaussian_fit(x)
    # The same estimate written out: standardise, shrink, invert, map back.
    scale = x.std(axis=0)
    covariance, _ = ledoit_wolf((x - x.mean(axis=0)) / scale)
    covariance = covariance * np.outer(scale, scale)
    inverse = np.linalg.inv(covariance)
    probes = _samples(5, 6, seed=1)
    direct = [float((p - x.mean(axis=0)) @ inverse @ (p - x.mean(axis=0))) for p in probes]
    np.testing.assert_allclose(mahalanobis(probes, mean, precision), direct, rtol=1e-9)
    # Far from the data is farther: the score orders by distance.
    far = x.mean(axis=0) + 50 * scale
    assert mahalanobis(far[None], mean, precision)[0] > max(direct)


def test_ledoit_wolf_matches_its_per_sample_definition() -> None:
    x = _samples(40, 8)
    covariance, shrinkage = ledoit_wolf(x)
    centred = x - x.mean(axis=0)
    n, d = centred.shape
    sample = centred.T @ centred / n
    mu = np.trace(sample) / d
    gap = np.sum((sample - mu * np.eye(d)) ** 2) / d
    noise = sum(np.sum((np.outer(r, r) - sample) ** 2) for r in centred) / n**2 / d
    expected = min(noise, gap) / gap
    assert shrinkage == pytest.approx(expected, rel=1e-9)
    assert 0.0 < shrinkage < 1.0
    np.testing.assert_allclose(covariance, (1 - expected) * sample + expected * mu * np.eye(d))


def test_ledoit_wolf_is_invertible_with_fewer_samples_than_dimensions() -> None:
    covariance, shrinkage = ledoit_wolf(_samples(10, 30))
    assert shrinkage > 0.0
    assert np.linalg.eigvalsh(covariance).min() > 0.0


@pytest.mark.parametrize(("n", "rate"), [(1000, 0.02), (347, 0.02), (50, 0.05), (99, 0.0)])
def test_threshold_gives_the_stated_rate(n: int, rate: float) -> None:
    scores = np.random.default_rng(n).normal(size=n)
    threshold = threshold_at(scores, rate)
    measured = float(np.mean(scores > threshold))
    assert measured <= rate
    assert measured > rate - 1.0 / n  # the smallest threshold that keeps to the rate


def test_logit_scores_are_higher_for_the_unusual() -> None:
    logits = np.array([-6.0, -0.1, 0.0, 0.2, 6.0])
    confidence = logit_scores("confidence", logits)
    assert confidence.argmax() == 2 and confidence[0] == confidence[4] == -6.0
    energy = logit_scores("energy", logits)
    np.testing.assert_allclose(energy, -np.log1p(np.exp(logits)))
    with pytest.raises(ValueError, match="not a logit score"):
        logit_scores("mahalanobis", logits)


def test_features_average_the_flip_and_concatenate_the_members() -> None:
    torch.manual_seed(0)
    model = with_test_time_flip(build_view_model(arch="ensemble:rx_lite_bn+resnet18_slim"), True)
    model.eval()
    x = torch.randn(3, 1, 64, 48)
    features, logits = view_features(model, x, "pooled")
    plain = model.model
    with torch.no_grad():
        expected = torch.cat(
            [(m.features(x) + m.features(mirror(x))) / 2 for m in plain.members], dim=1
        )
        np.testing.assert_allclose(logits, model(x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(features, expected.double().numpy(), rtol=1e-5, atol=1e-6)
    assert features.shape == (3, 128 + 192)
    penultimate, _ = view_features(model, x, "penultimate")
    assert penultimate.shape == (3, 32 + 192)  # rx's last hidden layer, resnet's pooled features
    # Hooks are gone after the pass.
    assert all(not layer._forward_pre_hooks for layer in feature_layers(model, "penultimate"))


def test_detector_round_trips_through_the_bundle_files(tmp_path: Path) -> None:
    mean, precision, _ = gaussian_fit(_samples(100, 4))
    detector = OodDetector("mahalanobis", 12.5, "pooled", mean, precision, {"rate": 0.02})
    entry = detector.save(tmp_path)
    loaded = OodDetector.load(tmp_path, entry)
    assert loaded.kind == "mahalanobis" and loaded.layer == "pooled"
    assert loaded.threshold == 12.5 and loaded.validation == {"rate": 0.02}
    np.testing.assert_array_equal(loaded.precision, precision)
    assert loaded.abstains(12.6) and not loaded.abstains(12.5)
    with pytest.raises(ValueError, match="unknown OOD score"):
        OodDetector("distance", 1.0)
    with pytest.raises(ValueError, match="square precision"):
        OodDetector("mahalanobis", 1.0, mean=mean, precision=precision[:2])


DEMO = Path(__file__).resolve().parents[2] / "config" / "models" / "wrist-demo"


def test_demo_bundle_card_states_its_abstention_figures() -> None:
    entry = json.loads((DEMO / "model.json").read_text(encoding="utf-8"))["ood"]
    validation = entry["validation"]
    assert validation["rate"] <= validation["target_rate"] <= 0.02
    assert validation["views"] >= 500 and validation["fit_views"] >= 500
    low, high = validation["rate_ci95"]
    card = (DEMO / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "## Abstention" in card
    assert f"Threshold {entry['threshold']:.1f}" in card
    assert f"{validation['abstained']}/{validation['views']} = {validation['rate']:.2%}" in card
    assert f"[Wilson 95% {low:.2%}, {high:.2%}]" in card
