"""The pure parts of issue 18's transfer figures: abstention-aware study results, the weak
subgroups, and where a heat map's mass falls on a view."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from pipeline.dicomio import read_radiograph
from pipeline.inference import ModelBundle
from train.evaluation.abstention_transfer import (
    StudyOutcome,
    confounder_attributes,
    markdown_transfer,
    study_outcomes,
    study_probability,
    transfer_entry,
    weak_groups,
)
from train.evaluation.attention import (
    OVERLAYS,
    REGIONS,
    area_by_region,
    mass_by_region,
    region_masks,
    spread,
    summarise_shares,
)
from train.evaluation.node_scores import score_archive
from train.phantoms.archive import generate_archive, read_truth


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def test_study_probability_is_the_node_formula() -> None:
    # alo takes the highest raw view probability, then the study temperature applies.
    assert study_probability([-1.0, 2.0], "alo", 0.5) == pytest.approx(_sigmoid(4.0))
    assert study_probability([0.0, 2.0], "mean", 1.0) == pytest.approx((0.5 + _sigmoid(2.0)) / 2.0)


def test_outcomes_drop_abstained_views_and_mark_all_abstained_studies() -> None:
    outcomes = study_outcomes(
        ["b", "a", "a", "b", "c"],
        [3.0, -2.0, 1.0, -3.0, 0.0],
        [True, False, True, False, True],
        {"a": 1, "b": 0, "c": 0},
        aggregation="alo",
        study_temperature=1.0,
    )
    by_id = {o.study: o for o in outcomes}
    assert [o.study for o in outcomes] == ["a", "b", "c"]
    assert by_id["a"].probability_all == pytest.approx(_sigmoid(1.0))
    assert by_id["a"].probability_analysed == pytest.approx(_sigmoid(-2.0))
    assert by_id["b"].probability_all == pytest.approx(_sigmoid(3.0))
    assert by_id["b"].probability_analysed == pytest.approx(_sigmoid(-3.0))
    assert by_id["c"].probability_analysed is None
    assert (by_id["c"].views, by_id["c"].abstained_views) == (1, 1)


def test_outcomes_refuse_misaligned_views() -> None:
    with pytest.raises(ValueError, match="same length"):
        study_outcomes(["a"], [1.0, 2.0], [False], {"a": 1}, aggregation="alo",
                       study_temperature=1.0)  # fmt: skip


def test_confounder_attributes_count_a_study_with_any_image_showing_one() -> None:
    derived = confounder_attributes({
        "s1": {"fracture_kind": "oblique+scaphoid", "implant": "0", "cast": "0+1"},
        "s2": {"fracture_kind": "(none)", "implant": "1", "cast": "0"},
    })  # fmt: skip
    assert derived == {"s1": {"scaphoid": "1", "implant": "0", "cast": "1"},
                       "s2": {"scaphoid": "0", "implant": "1", "cast": "0"}}  # fmt: skip


def _outcomes() -> tuple[list[StudyOutcome], dict[str, dict[str, str]]]:
    logits = {"f1": 3.0, "f2": -3.0, "i1": 2.0, "i2": -2.0, "i3": -2.0, "i4": 2.0}
    labels = {"f1": 1, "f2": 1, "i1": 0, "i2": 0, "i3": 0, "i4": 0}
    abstained = {"f1": False, "f2": False, "i1": True, "i2": False, "i3": False, "i4": False}
    ids = sorted(logits)
    outcomes = study_outcomes(ids, [logits[s] for s in ids], [abstained[s] for s in ids],
                              labels, aggregation="alo", study_temperature=1.0)  # fmt: skip
    attributes = {
        "f1": {"scaphoid": "1", "implant": "0", "cast": "0"},
        "f2": {"scaphoid": "1", "implant": "0", "cast": "0"},
        "i1": {"scaphoid": "0", "implant": "1", "cast": "0"},
        "i2": {"scaphoid": "0", "implant": "1", "cast": "1"},
        "i3": {"scaphoid": "0", "implant": "0", "cast": "0"},
        "i4": {"scaphoid": "0", "implant": "0", "cast": "0"},
    }
    return list(outcomes), attributes


def test_weak_groups_all_and_analysed() -> None:
    outcomes, attributes = _outcomes()
    every = weak_groups(outcomes, attributes, 0.5, analysed=False)
    assert every["scaphoid (sensitivity)"]["count"] == 1
    assert every["scaphoid (sensitivity)"]["n"] == 2
    # i1 (implant, called) and i2 (implant and cast, cleared)
    assert (every["intact, implant (specificity)"]["count"],
            every["intact, implant (specificity)"]["n"]) == (1, 2)  # fmt: skip
    assert (every["intact, cast (specificity)"]["count"],
            every["intact, cast (specificity)"]["n"]) == (1, 1)  # fmt: skip
    assert (every["intact, neither (specificity)"]["count"],
            every["intact, neither (specificity)"]["n"]) == (1, 2)  # fmt: skip
    kept = weak_groups(outcomes, attributes, 0.5, analysed=True)
    # i1 abstained entirely: the implant group loses its false positive.
    assert (kept["intact, implant (specificity)"]["count"],
            kept["intact, implant (specificity)"]["n"]) == (1, 1)  # fmt: skip


def test_transfer_entry_counts_abstention_and_keeps_the_thresholds() -> None:
    outcomes, attributes = _outcomes()
    entry = transfer_entry(outcomes, {"possible": 0.5, "likely": 0.9}, attributes,
                           studies_without_view=1, n_boot=50)  # fmt: skip
    assert entry["studies"] == 6 and entry["positives"] == 2
    assert entry["abstention"]["studies"]["count"] == 1
    assert entry["abstention"]["views"]["n"] == 6
    everything, analysed = entry["all"], entry["analysed"]
    assert everything["n"] == 6 and analysed["n"] == 5
    assert everything["possible"]["threshold"] == 0.5
    assert everything["likely"]["threshold"] == 0.9
    # all: f1 found, f2 missed; i1, i4 called -> specificity 2/4; analysed: i4 only -> 2/3.
    assert everything["possible"]["sensitivity"] == pytest.approx(0.5)
    assert everything["possible"]["specificity"] == pytest.approx(0.5)
    assert analysed["possible"]["specificity"] == pytest.approx(2 / 3)
    assert everything["ece_bins"] == 10
    table = markdown_transfer({"w": entry})
    assert "| not analysable: studies | - | 1/6 = 0.17" in table


def test_transfer_entry_with_one_class_left_has_no_level_figures() -> None:
    outcomes = study_outcomes(["a", "b"], [1.0, -1.0], [True, False], {"a": 1, "b": 0},
                              aggregation="alo", study_temperature=1.0)  # fmt: skip
    entry = transfer_entry(outcomes, {"possible": 0.5, "likely": 0.9}, {},
                           studies_without_view=0, n_boot=20)  # fmt: skip
    assert entry["all"] is not None and entry["analysed"] is None
    assert "- (one class)" in markdown_transfer({"w": entry})


def _tiny_view() -> np.ndarray:
    """Black background, a grey forearm (soft tissue), a bright bone inside it."""
    view = np.zeros((96, 64))
    view[:, 12:52] = 0.35
    view[:, 24:40] = 0.9
    return view


def test_regions_of_a_tiny_view_are_where_they_should_be() -> None:
    masks = region_masks(_tiny_view(), band_px=3, border_px=4)
    assert set(masks) == set(REGIONS) | set(OVERLAYS)
    exclusive = np.stack([masks[r] for r in REGIONS]).sum(axis=0)
    assert (exclusive == 1).all()  # every pixel in exactly one region
    assert masks["bone"][48, 32] and not masks["bone"][48, 25]
    assert masks["bone edge"][48, 24] and masks["bone edge"][48, 22]
    assert masks["soft tissue"][48, 18]
    assert masks["skin edge"][48, 12] and masks["skin edge"][48, 10]
    assert masks["background"][48, 3] and masks["background"][48, 60]
    assert masks["frame border"][0, 30] and not masks["frame border"][48, 32]
    assert masks["strongest edges"][48, 24] and not masks["strongest edges"][48, 32]


def test_mass_by_region_splits_the_heat_map() -> None:
    masks = region_masks(_tiny_view(), band_px=3, border_px=4)
    cam = np.zeros((96, 64))
    cam[40:50, 30:34] = 1.0  # inside the bone, away from its edges
    cam[40:50, 2:6] = 1.0  # in the background
    shares = mass_by_region(cam, masks)
    assert shares["bone"] == pytest.approx(0.5)
    assert shares["background"] == pytest.approx(0.5)
    assert shares["bone edge"] == shares["soft tissue"] == shares["skin edge"] == 0.0
    assert sum(shares[r] for r in REGIONS) == pytest.approx(1.0)
    assert mass_by_region(np.zeros((96, 64)), masks)["bone"] == 0.0
    areas = area_by_region(masks)
    assert sum(areas[r] for r in REGIONS) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="heat map"):
        mass_by_region(np.zeros((10, 10)), masks)


def test_summarise_shares() -> None:
    summary = summarise_shares([{"bone": 0.0}, {"bone": 1.0}, {"bone": 0.5}])
    assert summary["bone"]["mean"] == pytest.approx(0.5)
    assert summary["bone"]["q25"] == pytest.approx(0.25)
    assert summarise_shares([]) == {}


def test_spread_is_small_for_a_focused_map_and_large_for_a_flat_one() -> None:
    focused = np.zeros((10, 10))
    focused[4:6, 4:6] = 1.0
    focused[0, 0] = 0.4  # below half the peak: not counted
    assert spread(focused) == pytest.approx(0.04)
    assert spread(np.full((10, 10), 0.3)) == pytest.approx(1.0)
    assert spread(np.zeros((10, 10))) == 0.0


BUNDLE = Path(__file__).resolve().parents[2] / "config" / "models" / "wrist-demo"


def test_archive_scores_give_the_node_results(tmp_path: Path) -> None:
    """The bench's study results, detector on, equal what `ModelBundle.predict` reports."""
    archive = tmp_path / "archive"
    generate_archive(archive, studies=4, seed=11, syntaxes=("explicit_le",))
    bundle = ModelBundle.load(BUNDLE)
    scores = score_archive(bundle, archive, progress=False)
    assert len(scores.views) == len(scores.logits) == len(scores.abstained) > 0
    assert bundle.ood is not None
    assert (scores.abstained == (scores.ood_scores > bundle.ood.threshold)).all()
    outcomes = study_outcomes(list(scores.studies), scores.logits.tolist(),
                              scores.abstained.tolist(), scores.labels,
                              aggregation=bundle.info.aggregation,
                              study_temperature=bundle.info.study_temperature)  # fmt: skip
    assert any(o.probability_analysed is not None for o in outcomes)
    paths: dict[str, list[Path]] = defaultdict(list)
    for row in read_truth(archive):
        if row["body_part"] == "wrist" and not row["corrupt"]:
            paths[row["study_instance_uid"]].append(archive / row["path"])
    for outcome in outcomes:
        node = bundle.predict([read_radiograph(p) for p in paths[outcome.study]], heatmaps=False)
        assert len(node.views) == outcome.views
        assert sum(v.abstained for v in node.views) == outcome.abstained_views
        if outcome.probability_analysed is None:
            assert node.abstained
        else:
            assert node.probability == pytest.approx(outcome.probability_analysed, abs=1e-5)
