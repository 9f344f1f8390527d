"""Tests of train.evaluation: metrics, study aggregation and calibration, on hand-computed cases."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from sklearn import metrics as sklearn_metrics

from pipeline.aggregation import AGGREGATIONS, aggregate, aggregate_studies
from train.evaluation.calibration import (
    apply_temperature,
    expected_calibration_error,
    fit_temperature,
)
from train.evaluation.metrics import (
    LevelReport,
    bootstrap_auc_ci,
    confusion,
    format_rates,
    level_report,
    operating_point,
    roc_auc,
    roc_curve,
    threshold_for_sensitivity,
    threshold_for_specificity,
    wilson_interval,
)

HAND_LABELS = [0, 0, 1, 1, 0, 1]
HAND_SCORES = [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]
# Positives .35, .8, .9 against negatives .1, .4, .2: .35 beats two, .8 and .9 beat all three.
HAND_AUC = 8 / 9

TIED_LABELS = [0, 1, 0, 1]
TIED_SCORES = [0.5, 0.5, 0.2, 0.7]
# Positive .5: half a win against the negative .5, a win against .2; positive .7: two wins.
TIED_AUC = 3.5 / 4

# Ten positives and ten negatives with distinct scores, for the operating-point thresholds.
POS_SCORES = [0.30, 0.45, 0.55, 0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90]
NEG_SCORES = [0.05, 0.10, 0.15, 0.20, 0.25, 0.35, 0.40, 0.50, 0.58, 0.62]
OP_LABELS = np.array([1] * 10 + [0] * 10)
OP_SCORES = np.array(POS_SCORES + NEG_SCORES)


def _noisy_scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.4).astype(int)
    return labels, labels + rng.normal(0.0, 1.0, n)


# --- roc_auc --------------------------------------------------------------------------------


def test_auc_perfect_reversed_and_tied() -> None:
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5


def test_auc_hand_cases() -> None:
    assert roc_auc(HAND_LABELS, HAND_SCORES) == pytest.approx(HAND_AUC)
    assert roc_auc(TIED_LABELS, TIED_SCORES) == pytest.approx(TIED_AUC)
    assert roc_auc(np.array(TIED_LABELS, dtype=bool), TIED_SCORES) == pytest.approx(TIED_AUC)


def test_auc_is_invariant_to_row_order_and_monotone_transforms() -> None:
    labels, scores = _noisy_scores(300, seed=1)
    order = np.random.default_rng(2).permutation(300)
    auc = roc_auc(labels, scores)
    assert roc_auc(labels[order], scores[order]) == pytest.approx(auc)
    assert roc_auc(labels, np.exp(scores)) == pytest.approx(auc)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_auc_needs_both_classes(labels: list[int]) -> None:
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(labels, [0.1, 0.5, 0.9])


def test_auc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="binary"):
        roc_auc([0, 2, 1], [0.1, 0.5, 0.9])
    with pytest.raises(ValueError, match="shape"):
        roc_auc([0, 1, 1], [0.1, 0.5])
    with pytest.raises(ValueError, match="finite"):
        roc_auc([0, 1, 1], [0.1, np.nan, 0.9])


# --- roc_curve ------------------------------------------------------------------------------


def test_roc_curve_hand_case() -> None:
    fpr, tpr, thresholds = roc_curve(HAND_LABELS, HAND_SCORES)
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.8, 0.4, 0.35, 0.2, 0.1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])


def test_roc_curve_ties_make_one_diagonal_step() -> None:
    fpr, tpr, thresholds = roc_curve(TIED_LABELS, TIED_SCORES)
    np.testing.assert_allclose(thresholds, [np.inf, 0.7, 0.5, 0.2])
    np.testing.assert_allclose(tpr, [0, 0.5, 1, 1])
    np.testing.assert_allclose(fpr, [0, 0, 0.5, 1])
    fpr_all, tpr_all, _ = roc_curve([0, 1, 0, 1], [0.5] * 4)
    np.testing.assert_allclose(fpr_all, [0, 1])
    np.testing.assert_allclose(tpr_all, [0, 1])


def test_roc_curve_endpoints_monotone_and_area_equals_auc() -> None:
    labels, scores = _noisy_scores(500, seed=3)
    scores = np.round(scores, 1)  # plenty of ties
    fpr, tpr, thresholds = roc_curve(labels, scores)
    assert (fpr[0], tpr[0]) == (0.0, 0.0)
    assert (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert np.all(np.diff(thresholds) < 0)
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc(labels, scores), abs=1e-12)


# --- operating points -----------------------------------------------------------------------


@pytest.mark.parametrize(("target", "expected"), [(0.95, 0.30), (0.9, 0.45), (0.5, 0.70)])
def test_threshold_for_sensitivity_is_the_highest_reaching_target(
    target: float, expected: float
) -> None:
    threshold = threshold_for_sensitivity(OP_LABELS, OP_SCORES, target)
    assert threshold == expected
    assert operating_point(OP_LABELS, OP_SCORES, threshold, "s").sensitivity >= target
    scores = OP_SCORES
    for higher in scores[scores > threshold]:
        assert operating_point(OP_LABELS, OP_SCORES, higher, "s").sensitivity < target


@pytest.mark.parametrize(("target", "expected"), [(0.95, 0.65), (0.9, 0.60), (0.5, 0.30)])
def test_threshold_for_specificity_is_the_lowest_reaching_target(
    target: float, expected: float
) -> None:
    threshold = threshold_for_specificity(OP_LABELS, OP_SCORES, target)
    assert threshold == expected
    assert operating_point(OP_LABELS, OP_SCORES, threshold, "s").specificity >= target
    scores = OP_SCORES
    for lower in scores[scores < threshold]:
        assert operating_point(OP_LABELS, OP_SCORES, lower, "s").specificity < target


def test_thresholds_with_ties_and_all_negative_specificity() -> None:
    # The tied positive and negative at .5 move together: 100% sensitivity needs t <= .2.
    assert threshold_for_sensitivity(TIED_LABELS, TIED_SCORES, 1.0) == 0.5
    assert threshold_for_specificity(TIED_LABELS, TIED_SCORES, 1.0) == 0.7
    # The highest score is a negative: only "everything negative" has full specificity.
    threshold = threshold_for_specificity([1, 0], [0.2, 0.9], 1.0)
    assert 0.9 < threshold < 0.9 + 1e-12
    assert operating_point([1, 0], [0.2, 0.9], threshold, "x").specificity == 1.0
    with pytest.raises(ValueError, match="target"):
        threshold_for_sensitivity(TIED_LABELS, TIED_SCORES, 0.0)


def test_operating_point_hand_case() -> None:
    point = operating_point(HAND_LABELS, HAND_SCORES, 0.35, "mid")
    assert (point.name, point.threshold) == ("mid", 0.35)
    assert (point.sensitivity, point.specificity) == (1.0, pytest.approx(2 / 3))
    assert point.sensitivity_ci95 == pytest.approx((0.4385, 1.0), abs=1e-4)
    assert point.specificity_ci95 == pytest.approx((0.2077, 0.9385), abs=1e-4)


def test_confusion_hand_case() -> None:
    labels = [0, 0, 1, 1, 1, 0]
    predictions = [0, 1, 1, 0, 1, 0]
    assert confusion(labels, predictions) == [[2, 1], [1, 2]]
    assert confusion(np.array(labels, bool), np.array(predictions, bool)) == [[2, 1], [1, 2]]


# --- level_report ---------------------------------------------------------------------------

THRESHOLDS = {"high_sensitivity": 0.3, "high_specificity": 0.8}


def test_level_report_json_has_exactly_the_documented_keys() -> None:
    report = level_report(HAND_LABELS, HAND_SCORES, thresholds=THRESHOLDS, n_boot=50)
    data = json.loads(json.dumps(report.to_json()))
    assert set(data) == {
        "n",
        "positives",
        "auc",
        "auc_ci95",
        "accuracy",
        "balanced_accuracy",
        "confusion",
        "operating_points",
        "ece",
    }
    assert set(data["operating_points"]) == {"high_sensitivity", "high_specificity"}
    for point in data["operating_points"].values():
        assert set(point) == {
            "threshold",
            "sensitivity",
            "specificity",
            "sensitivity_ci95",
            "specificity_ci95",
        }
    assert data["n"] == 6 and data["positives"] == 3
    assert data["auc"] == pytest.approx(HAND_AUC)
    assert len(data["auc_ci95"]) == 2
    # At 0.5 only .8 and .9 are positive: [[tn=3, fp=0], [fn=1 (.35), tp=2]].
    assert data["confusion"] == [[3, 0], [1, 2]]
    assert data["accuracy"] == pytest.approx(5 / 6)
    assert data["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    # Every score in a bin of its own: the mean of |label - score| = 1.65 / 6.
    assert data["ece"] == pytest.approx(0.275)
    # Wilson 95% by hand (z = 1.96, n = 3): 3/3 -> [0.4385, 1.0]; 2/3 -> [0.2077, 0.9385].
    all_three, two_of_three = (
        pytest.approx([0.4385, 1.0], abs=1e-4),
        pytest.approx([0.2077, 0.9385], abs=1e-4),
    )
    assert data["operating_points"]["high_sensitivity"] == {
        "threshold": 0.3,
        "sensitivity": 1.0,
        "specificity": pytest.approx(2 / 3),
        "sensitivity_ci95": all_three,
        "specificity_ci95": two_of_three,
    }
    # At 0.8: positives .8 and .9 found, no negative reaches it.
    assert data["operating_points"]["high_specificity"] == {
        "threshold": 0.8,
        "sensitivity": pytest.approx(2 / 3),
        "specificity": 1.0,
        "sensitivity_ci95": two_of_three,
        "specificity_ci95": all_three,
    }


def test_level_report_counts_a_score_of_one_half_as_positive() -> None:
    report = level_report([0, 1, 1], [0.2, 0.5, 0.9], thresholds=THRESHOLDS, n_boot=20)
    assert report.confusion == [[1, 0], [0, 2]]
    assert report.accuracy == 1.0


def test_level_report_uses_the_given_thresholds_only() -> None:
    with pytest.raises(ValueError, match="high_specificity"):
        level_report(HAND_LABELS, HAND_SCORES, thresholds={"high_sensitivity": 0.3})


def test_balanced_accuracy_of_everything_negative() -> None:
    labels = np.array([1] * 31 + [0] * 69)
    scores = np.full(100, 0.1)
    report = level_report(labels, scores, thresholds=THRESHOLDS, n_boot=20)
    assert isinstance(report, LevelReport)
    assert report.accuracy == pytest.approx(0.69)
    assert report.balanced_accuracy == pytest.approx(0.5)
    assert report.confusion == [[69, 0], [31, 0]]
    assert report.auc == 0.5


# --- bootstrap ------------------------------------------------------------------------------


def test_bootstrap_ci_contains_auc_and_is_deterministic() -> None:
    labels, scores = _noisy_scores(200, seed=4)
    low, high = bootstrap_auc_ci(labels, scores, n_boot=500, seed=7)
    assert low < roc_auc(labels, scores) < high
    assert bootstrap_auc_ci(labels, scores, n_boot=500, seed=7) == (low, high)
    assert bootstrap_auc_ci(labels, scores, n_boot=500, seed=8) != (low, high)
    narrow = bootstrap_auc_ci(labels, scores, n_boot=500, seed=7, level=0.5)
    assert low < narrow[0] < narrow[1] < high


def test_bootstrap_ci_narrows_with_more_data() -> None:
    small = bootstrap_auc_ci(*_noisy_scores(100, seed=5), n_boot=500)
    large = bootstrap_auc_ci(*_noisy_scores(1600, seed=5), n_boot=500)
    # The width shrinks like 1/sqrt(n): 16 times the data, about a quarter of the width.
    assert large[1] - large[0] < 0.5 * (small[1] - small[0])


def test_bootstrap_groups_are_resampled_whole() -> None:
    labels, scores = _noisy_scores(200, seed=6)
    base = bootstrap_auc_ci(labels, scores, n_boot=1000)
    twice_labels, twice_scores = np.repeat(labels, 2), np.repeat(scores, 2)
    groups = np.repeat(np.arange(200), 2)
    grouped = bootstrap_auc_ci(twice_labels, twice_scores, n_boot=1000, groups=groups)
    naive = bootstrap_auc_ci(twice_labels, twice_scores, n_boot=1000)
    base_width, grouped_width = base[1] - base[0], grouped[1] - grouped[0]
    naive_width = naive[1] - naive[0]
    # Duplicates add no information: resampled as groups the interval keeps its width, while
    # naive resampling pretends there are 400 independent samples (about 1/sqrt(2) as wide).
    assert grouped_width == pytest.approx(base_width, rel=0.05)
    assert naive_width < 0.85 * grouped_width


def test_bootstrap_groups_can_be_strings() -> None:
    labels, scores = _noisy_scores(60, seed=9)
    groups = [f"study-{i // 3}" for i in range(60)]
    low, high = bootstrap_auc_ci(labels, scores, n_boot=200, groups=groups)
    assert 0.0 <= low < high <= 1.0


def test_bootstrap_skips_one_class_resamples() -> None:
    # A third of the resamples of two samples hold one class; every other one has AUC 1 (or 0).
    assert bootstrap_auc_ci([0, 1], [0.2, 0.8], n_boot=200) == (1.0, 1.0)
    assert bootstrap_auc_ci([1, 0], [0.2, 0.8], n_boot=200) == (0.0, 0.0)


# --- aggregation ----------------------------------------------------------------------------


def test_aggregation_hand_cases() -> None:
    views = [0.2, 0.9]
    assert aggregate(views, "alo") == 0.9  # one view positive: the study is positive
    assert aggregate(views, "max") == 0.9
    assert aggregate(views, "mean") == pytest.approx(0.55)
    majority = aggregate(views, "majority")
    assert majority == pytest.approx(0.5 + 1e-3 * 0.55)
    assert majority >= 0.5  # a one-one tie counts as positive


def test_alo_is_at_least_one_view_not_noisy_or() -> None:
    four_weak_views = [0.3, 0.3, 0.3, 0.3]
    assert aggregate(four_weak_views, "alo") == 0.3  # noisy-OR would give 0.76, a positive
    assert aggregate(four_weak_views, "alo") < 0.5


def test_majority_decision_and_tie_break() -> None:
    assert aggregate([0.6, 0.1, 0.2], "majority") == pytest.approx(1 / 3 + 1e-3 * 0.3)
    assert aggregate([0.6, 0.1, 0.2], "majority") < 0.5
    # A minority of 49 certain views among 99 stays negative despite the tie-break.
    assert aggregate([1.0] * 49 + [0.0] * 50, "majority") < 0.5
    # Equal fractions are ordered by the mean probability.
    assert aggregate([0.9, 0.4], "majority") > aggregate([0.6, 0.1], "majority")
    # A view exactly at the threshold votes positive.
    assert aggregate([0.5, 0.5, 0.1], "majority") == pytest.approx(2 / 3 + 1e-3 * 1.1 / 3)
    # The view threshold decides which views vote positive.
    assert aggregate([0.35, 0.4], "majority", threshold=0.3) == pytest.approx(1 + 1e-3 * 0.375)


def test_aggregate_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate([0.5], "learned")
    with pytest.raises(ValueError, match="non-empty"):
        aggregate([], "mean")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        aggregate([0.5, 1.2], "mean")
    assert AGGREGATIONS == ("alo", "majority", "mean", "max")


@pytest.mark.parametrize("method", AGGREGATIONS)
def test_aggregate_studies_is_independent_of_row_order(method: str) -> None:
    ids = ["b", "a", "b", "c", "a", "b"]
    probabilities = np.array([0.1, 0.7, 0.8, 0.4, 0.2, 0.3])
    expected_ids = ["a", "b", "c"]
    expected = [
        aggregate([0.7, 0.2], method),
        aggregate([0.1, 0.8, 0.3], method),
        aggregate([0.4], method),
    ]
    study_ids, scores = aggregate_studies(ids, probabilities, method)
    assert study_ids == expected_ids
    np.testing.assert_allclose(scores, expected)
    order = [5, 3, 0, 4, 1, 2]
    shuffled_ids, shuffled = aggregate_studies(
        [ids[i] for i in order], probabilities[order], method
    )
    assert shuffled_ids == expected_ids
    np.testing.assert_allclose(shuffled, expected)


def test_aggregate_studies_checks_lengths() -> None:
    with pytest.raises(ValueError, match="shape"):
        aggregate_studies(["a", "b"], np.array([0.1]), "mean")


# --- calibration ----------------------------------------------------------------------------


def test_temperature_one_is_the_sigmoid_and_extremes_are_stable() -> None:
    logits = np.linspace(-30.0, 30.0, 121)
    np.testing.assert_allclose(apply_temperature(logits, 1.0), 1.0 / (1.0 + np.exp(-logits)))
    np.testing.assert_allclose(apply_temperature(logits, 2.0), 1.0 / (1.0 + np.exp(-logits / 2)))
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        np.testing.assert_allclose(apply_temperature(np.array([-1e4, 1e4]), 1.0), [0.0, 1.0])
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(logits, 0.0)


def test_fit_temperature_recovers_over_confidence() -> None:
    rng = np.random.default_rng(10)
    true_logit = rng.normal(0.0, 2.0, 20_000)
    labels = (rng.random(true_logit.size) < 1.0 / (1.0 + np.exp(-true_logit))).astype(int)
    over_confident = 3.0 * true_logit
    temperature = fit_temperature(over_confident, labels)
    assert temperature == pytest.approx(3.0, rel=0.15)
    before = expected_calibration_error(apply_temperature(over_confident, 1.0), labels)
    after = expected_calibration_error(apply_temperature(over_confident, temperature), labels)
    assert after < 0.5 * before
    assert fit_temperature(true_logit, labels) == pytest.approx(1.0, rel=0.15)


def test_expected_calibration_error_hand_cases() -> None:
    # Bin [0.1, 0.2): p .1, rate .5, half the data -> .2; bin [0.9, 1]: p .9, rate 1 -> .05.
    assert expected_calibration_error([0.1, 0.1, 0.9, 0.9], [0, 1, 1, 1]) == pytest.approx(0.25)
    assert expected_calibration_error([0.5, 0.5], [0, 1]) == 0.0
    assert expected_calibration_error([1.0, 0.0], [1, 0]) == 0.0
    assert expected_calibration_error([1.0], [0], bins=1) == 1.0


def test_wilson_interval_matches_hand_computation_and_refuses_nonsense() -> None:
    # 117 of 130 (the demo model's 400-study held-out sensitivity): p = 0.9, z = 1.96,
    # centre (p + z^2/2n) / (1 + z^2/n) = 0.88852, half-width 0.05211.
    assert wilson_interval(117, 130) == pytest.approx((0.83641, 0.94062), abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0
    for hits, n in ((1, 0), (-1, 5), (6, 5)):
        with pytest.raises(ValueError):
            wilson_interval(hits, n)


def test_format_rates_with_and_without_recorded_intervals() -> None:
    point = {"threshold": 0.3, "sensitivity": 0.9, "specificity": 0.943,
             "sensitivity_ci95": [0.83641, 0.94062], "specificity_ci95": [0.9, 0.97]}  # fmt: skip
    assert format_rates(point) == "0.900 [0.84, 0.94] / 0.943 [0.90, 0.97]"
    # Reports recorded before the intervals existed (older bundles' model.json) still render.
    older = {"threshold": 0.3, "sensitivity": 0.9, "specificity": 0.943}
    assert format_rates(older) == "0.900 / 0.943"


# -- ROC and AUC against scikit-learn as the oracle ------------------------------------------


@st.composite
def _scored_samples(
    draw: st.DrawFn, *, weighted: bool, zero_weights: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Labels with both classes, scores with many ties (a few distinct values, or any floats),
    and optionally sample weights (some zero, when allowed)."""
    n = draw(st.integers(2, 40))
    labels = draw(st.lists(st.integers(0, 1), min_size=n, max_size=n))
    positive, negative = draw(st.lists(st.integers(0, n - 1), min_size=2, max_size=2, unique=True))
    labels[positive], labels[negative] = 1, 0
    pool = draw(
        st.one_of(
            st.lists(st.integers(0, 4).map(float), min_size=1, max_size=5),  # heavy ties
            st.just([]),
        )
    )
    element = st.sampled_from(pool) if pool else st.floats(-1e3, 1e3, allow_nan=False)
    scores = draw(st.lists(element, min_size=n, max_size=n))
    weights = None
    if weighted:
        low = 0.0 if zero_weights else 0.05
        weights = draw(st.lists(st.floats(low, 10.0), min_size=n, max_size=n))
        y = np.asarray(labels, bool)
        w = np.asarray(weights)
        assume(w[y].sum() > 1e-3 and w[~y].sum() > 1e-3)
    return (
        np.asarray(labels),
        np.asarray(scores, dtype=np.float64),
        None if weights is None else np.asarray(weights, dtype=np.float64),
    )


@settings(max_examples=300, deadline=None)
@given(_scored_samples(weighted=False))
def test_roc_auc_matches_scikit_learn(sample: tuple[np.ndarray, np.ndarray, None]) -> None:
    labels, scores, _ = sample
    assert roc_auc(labels, scores) == pytest.approx(
        sklearn_metrics.roc_auc_score(labels, scores), rel=1e-12, abs=1e-12
    )


@settings(max_examples=300, deadline=None)
@given(_scored_samples(weighted=True))
def test_weighted_roc_auc_matches_scikit_learn(
    sample: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    labels, scores, weights = sample
    expected = sklearn_metrics.roc_auc_score(labels, scores, sample_weight=weights)
    assert roc_auc(labels, scores, sample_weight=weights) == pytest.approx(
        expected, rel=1e-9, abs=1e-9
    )


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(_scored_samples(weighted=False), _scored_samples(weighted=True, zero_weights=False))
)
def test_roc_curve_matches_scikit_learn(
    sample: tuple[np.ndarray, np.ndarray, np.ndarray | None],
) -> None:
    # scikit-learn drops the samples of zero weight from the curve; we keep their threshold
    # (a repeated point), so zero weights are compared through the AUC only.
    labels, scores, weights = sample
    fpr, tpr, thresholds = roc_curve(labels, scores, sample_weight=weights)
    want_fpr, want_tpr, want_thresholds = sklearn_metrics.roc_curve(
        labels, scores, sample_weight=weights, drop_intermediate=False
    )
    assert thresholds[0] == np.inf and want_thresholds[0] == np.inf
    np.testing.assert_array_equal(thresholds, want_thresholds)
    np.testing.assert_allclose(fpr, want_fpr, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(tpr, want_tpr, rtol=1e-9, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(_scored_samples(weighted=False), st.data())
def test_integer_weights_are_repeated_samples_and_zero_weights_are_absent(
    sample: tuple[np.ndarray, np.ndarray, None], data: st.DataObject
) -> None:
    labels, scores, _ = sample
    counts = np.asarray(
        data.draw(st.lists(st.integers(0, 3), min_size=labels.size, max_size=labels.size))
    )
    kept = np.repeat(np.arange(labels.size), counts)
    assume(0 < labels[kept].sum() < kept.size)
    assert roc_auc(labels, scores, sample_weight=counts) == pytest.approx(
        roc_auc(labels[kept], scores[kept]), rel=1e-12
    )


def test_sample_weights_are_validated() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        roc_auc(HAND_LABELS, HAND_SCORES, sample_weight=[1, 1, 1, 1, 1, -1])
    with pytest.raises(ValueError, match="both classes a positive total weight"):
        roc_auc(HAND_LABELS, HAND_SCORES, sample_weight=[1, 1, 0, 0, 1, 0])
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(6,\)"):
        roc_curve(HAND_LABELS, HAND_SCORES, sample_weight=[1, 1])
