"""Tests of the wrist filter (tags, descriptions, vocabulary) and its image check."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.dicomio import Radiograph, read_radiograph
from pipeline.preprocess.extremity_check import extremity_evidence
from pipeline.preprocess.wrist_filter import (
    WristDecision,
    WristFilterParams,
    WristVocabulary,
    decide_wrist,
    normalise_tag,
)
from train.phantoms.anatomy import random_view_spec, render_view
from train.phantoms.archive import generate_archive, read_truth

VOCAB = WristVocabulary.load()
PARAMS = WristFilterParams(VOCAB)

WRIST_TAGS = [
    "WRIST", "Wrist", "MUÑECA", "MUNECA", "muñeca izq", "CANELL", "POIGNET", "HANDGELENK",
    "PUNHO", "PULSO", "CARPO", "CARPE", "HAND WRIST", "WRSIT", "MUÑEKA", "MUNYECA",
    "MUÑECA DCHA", "Poignet G", "MUÃ‘ECA", "Muñeca-Izquierda", "  wrist  ",
]  # fmt: skip
OTHER_TAGS = [
    "CHEST", "TORAX", "TÓRAX", "THORAX", "PELVIS", "BASSIN", "BECKEN", "SKULL", "CRANEO",
    "CRÁNEO", "CRANI", "KNEE", "MANO", "HAND", "CODO", "ELBOW", "TOBILLO", "ANKLE", "SPINE",
]  # fmt: skip
ARM_TAGS = ["ARM", "BRAZO", "FOREARM", "ANTEBRAZO", "AVANTBRAÇ", "UNTERARM", "ANTEBRAÇO"]


def radiograph(pixels: np.ndarray) -> Radiograph:
    h, w = pixels.shape
    return Radiograph(
        pixels=pixels.astype(np.float32), sop_instance_uid="1.2.3", sop_class_uid="",
        study_instance_uid="", series_instance_uid="", modality="CR", body_part_examined="",
        study_description="", series_description="", view_position="", laterality="",
        image_laterality="", pixel_spacing=None, photometric_interpretation="MONOCHROME2",
        manufacturer="", rows=h, columns=w, bits_stored=16, transfer_syntax_uid="",
        voi_source="window",
    )  # fmt: skip


def rendered(part: str, seed: int, *, invert: bool = False) -> Radiograph:
    rng = np.random.default_rng(seed)
    pixels = render_view(random_view_spec(rng, body_part=part), rng).image
    return radiograph(1.0 - pixels if invert else pixels)


def decide(tag: str, image: Radiograph | None = None, **kw: str) -> WristDecision:
    return decide_wrist(image, body_part=tag, params=PARAMS, **kw)


# --- text ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tag", WRIST_TAGS)
def test_wrist_spellings_are_wrists(tag: str) -> None:
    d = decide(tag)
    assert d.is_wrist, d.reason
    assert d.rule == "tag:wrist"
    assert d.matched_term is not None and d.score is not None and d.score >= VOCAB.min_score
    assert d.image_score is None and "skipped" in d.reason


@pytest.mark.parametrize("tag", OTHER_TAGS)
def test_other_parts_are_not_wrists(tag: str) -> None:
    d = decide(tag)
    assert not d.is_wrist and d.rule == "tag:other", d.reason


def test_borderline_typos_match_the_intended_term() -> None:
    assert decide("MUÑEKA").matched_term == "MUÑECA"
    assert decide("WRSIT").matched_term == "WRIST"
    assert decide("MUNYECA").matched_term == "MUÑECA"
    # A hand study is not a wrist study, even though "MANO" shares letters with "MUÑECA".
    assert decide("MANO").matched_term == "MANO"
    # Short words match only exactly: "MAN" is neither "MANO" nor the abbreviation "MUN".
    assert decide("MAN").rule == "unmatched:no-image"
    # Two typos in a six-letter word are too many.
    assert decide("MONEKA").rule == "unmatched:no-image"


def test_reason_names_field_text_term_and_score() -> None:
    d = decide("MUÑEKA")
    assert "Body Part Examined 'MUÑEKA'" in d.reason and "'MUÑECA'" in d.reason
    assert "score 83" in d.reason


def test_normalise_tag() -> None:
    assert normalise_tag("muñeca izq") == "MUNECA"
    assert normalise_tag("Poignet F+P") == "POIGNET"
    assert normalise_tag("  Wrist,  2 views ") == "WRIST"
    assert normalise_tag("MUÃ‘ECA") == "MUNECA"
    assert normalise_tag("AVANTBRAÇ ESQ.") == "AVANTBRAC"
    assert normalise_tag("muñeca izq", qualifiers=()) == "MUNECA IZQ"


@pytest.mark.parametrize(
    "description", ["RX MUÑECA DERECHA", "Wrist 2 views", "RX CANELL ESQ", "Poignet F+P"]
)
def test_descriptions_decide_when_the_tag_is_empty(description: str) -> None:
    d = decide("", study_description=description)
    assert d.is_wrist and d.rule == "description:wrist", d.reason
    assert "Study Description" in d.reason
    d = decide("", series_description=description)
    assert d.is_wrist and "Series Description" in d.reason


def test_tag_wins_over_description_and_unmatched_tag_falls_through() -> None:
    assert decide("CHEST", study_description="RX MUÑECA").rule == "tag:other"
    d = decide("XYZZY", study_description="RX TÓRAX")
    assert not d.is_wrist and d.rule == "description:other"


def test_arm_tag_without_image_is_not_accepted() -> None:
    for tag in ARM_TAGS:
        d = decide(tag)
        assert not d.is_wrist and d.rule == "tag:arm+no-image", (tag, d.reason)


def test_empty_metadata_without_image() -> None:
    d = decide("", study_description="", series_description="PA")
    assert not d.is_wrist and d.rule == "unmatched:no-image"
    assert decide("").rule == "empty:no-image"


# --- vocabulary file ----------------------------------------------------------------------


def test_custom_vocabulary_adds_a_term(tmp_path: Path) -> None:
    assert not decide("RANNE").is_wrist  # Finnish; not in the packaged list
    path = tmp_path / "vocab.toml"
    path.write_text(
        'min_score = 90\nwrist_terms = ["WRIST", "RANNE"]\narm_terms = ["ARM"]\n'
        'other_terms = ["CHEST"]\nqualifiers = ["VASEN", "OIKEA"]\n',
        encoding="utf-8",
    )
    vocab = WristVocabulary.load(path)
    assert vocab.min_score == 90.0 and "RANNE" in vocab.wrist_terms
    d = decide_wrist(None, body_part="Ranne vasen", params=WristFilterParams(vocab))
    assert d.is_wrist and d.matched_term == "RANNE", d.reason
    # The stricter threshold of that file rejects a typo the default accepts.
    assert not decide_wrist(None, body_part="WRSIT", params=WristFilterParams(vocab)).is_wrist


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('wrist_terms=["W"]\narm_terms=[]\nother_terms=[]\nqualifiers=[]\ncolour="red"', "colour"),
        ('wrist_terms="WRIST"\narm_terms=[]\nother_terms=[]\nqualifiers=[]', "wrist_terms"),
        ('wrist_terms=["W"]\narm_terms=[1]\nother_terms=[]\nqualifiers=[]', "arm_terms"),
        ('wrist_terms=["W"]\narm_terms=[]\nother_terms=[]', "qualifiers"),
        ('wrist_terms=["W"]\narm_terms=[]\nother_terms=[]\nqualifiers=[]\nmin_score="x"', "min"),
        ("wrist_terms = [", "TOML"),
    ],
)
def test_bad_vocabulary_names_key_and_file(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        WristVocabulary.load(path)
    assert str(path) in str(info.value)


def test_packaged_vocabulary_has_every_language() -> None:
    folded = {normalise_tag(t, qualifiers=()) for t in VOCAB.wrist_terms}
    assert {"WRIST", "MUNECA", "CANELL", "POIGNET", "HANDGELENK", "PUNHO", "CARPO"} <= folded
    assert VOCAB.min_score == 80.0


# --- image check --------------------------------------------------------------------------


@pytest.mark.parametrize("part", ["chest", "pelvis", "skull"])
@pytest.mark.parametrize("tag", ["ARM", "ANTEBRAZO"])
def test_trunk_tagged_as_arm_is_rejected_by_the_image(part: str, tag: str) -> None:
    for seed in range(4):
        d = decide(tag, rendered(part, seed, invert=seed % 2 == 1))
        assert not d.is_wrist and d.rule == "tag:arm+image-reject", d.reason
        assert d.image_score is not None and d.image_score < PARAMS.accept_score


def test_wrist_tagged_as_arm_is_accepted_by_the_image() -> None:
    for seed in range(6):
        d = decide("FOREARM", rendered("wrist", seed, invert=seed % 2 == 1))
        assert d.is_wrist and d.rule == "tag:arm+image", d.reason


def test_wrist_tag_on_a_skull_is_vetoed_and_disabling_the_check_trusts_the_tag() -> None:
    image = rendered("skull", 3)
    d = decide("WRIST", image)
    assert not d.is_wrist and d.rule == "tag:wrist+image-veto", d.reason
    trusting = replace(PARAMS, check_image=False)
    d = decide_wrist(image, body_part="WRIST", params=trusting)
    assert d.is_wrist and d.image_score is None and "disabled" in d.reason


def test_empty_metadata_is_decided_by_the_image() -> None:
    d = decide("", rendered("wrist", 1))
    assert d.is_wrist and d.rule == "empty:image"
    d = decide("", rendered("chest", 1, invert=True))
    assert not d.is_wrist and d.rule == "empty:image"


def test_polarity_comes_from_the_border() -> None:
    image = rendered("wrist", 2)
    assert not extremity_evidence(image.pixels).inverted
    assert extremity_evidence(1.0 - image.pixels).inverted


def test_degenerate_images_do_not_crash() -> None:
    for pixels in (np.zeros((64, 64)), np.ones((20, 300)), np.random.default_rng(0).random((9, 9))):
        d = decide("", radiograph(pixels))
        assert d.rule == "empty:image" and d.image_score is not None


def test_extremity_score_separates_rendered_parts() -> None:
    rng = np.random.default_rng(123)
    scores: dict[str, list[float]] = {"wrist": [], "other": []}
    for i in range(60):
        part = "wrist" if i % 2 == 0 else ("chest", "pelvis", "skull")[(i // 2) % 3]
        pixels = render_view(random_view_spec(rng, body_part=part), rng).image
        pixels = 1.0 - pixels if rng.random() < 0.3 else pixels
        scores["wrist" if part == "wrist" else "other"].append(extremity_evidence(pixels).score)
    assert min(scores["wrist"]) >= PARAMS.veto_score
    assert max(scores["other"]) < PARAMS.accept_score
    assert np.median(scores["wrist"]) - np.median(scores["other"]) > 0.5


# --- against the synthetic archive's ground truth -----------------------------------------


@pytest.fixture(scope="module")
def larger_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wrist_filter_archive")
    generate_archive(out, studies=150, seed=4, size="small", workers=2)
    return out


def _decisions(folder: Path) -> list[tuple[dict[str, str], WristDecision]]:
    out = []
    for row in read_truth(folder):
        if row["corrupt"]:
            continue
        image = read_radiograph(folder / row["path"])
        d = decide_wrist(
            image,
            body_part=image.body_part_examined,
            study_description=image.study_description,
            series_description=image.series_description,
            params=PARAMS,
        )
        out.append((row, d))
    return out


@pytest.mark.parametrize("which", ["synthetic_archive", "larger_archive"])
def test_agrees_with_archive_truth(which: str, request: pytest.FixtureRequest) -> None:
    decisions = _decisions(request.getfixturevalue(which))
    agree = [d.is_wrist == (row["body_part"] == "wrist") for row, d in decisions]
    wrong = [
        (row["path"], row["body_part_tag"], d.rule)
        for (row, d), ok in zip(decisions, agree, strict=True)
        if not ok
    ]
    assert np.mean(agree) >= 0.99, wrong
    arm_tags = ("ARM", "BRAZO", "FOREARM", "ANTEBRAZO")
    mistagged = [
        (row, d)
        for row, d in decisions
        if row["body_part"] != "wrist" and row["body_part_tag"] in arm_tags
    ]
    for row, d in mistagged:
        assert not d.is_wrist and "image" in d.rule, (row["path"], d.reason)
    if which == "larger_archive":
        assert len(mistagged) >= 3
        assert sum(row["body_part"] != "wrist" for row, _ in decisions) >= 10


# --- the site's hand policy ------------------------------------------------------------------


@pytest.mark.parametrize("tag", ["HAND", "MANO IZQ", "Main droite", "HANDS"])
def test_hand_tags_follow_the_site_policy(tag: str) -> None:
    refused = decide(tag)  # the default policy: a hand series is another examination
    assert not refused.is_wrist and refused.rule == "tag:other" and "hand policy" in refused.reason
    wrist = rendered("wrist", 1)
    chest = rendered("chest", 1)
    by_image = replace(PARAMS, hand="image")
    assert decide_wrist(wrist, body_part=tag, params=by_image).rule == "tag:arm+image"
    assert not decide_wrist(chest, body_part=tag, params=by_image).is_wrist
    analyse = replace(PARAMS, hand="analyse")
    assert decide_wrist(None, body_part=tag, params=analyse).is_wrist
    assert decide("HAND WRIST").rule == "tag:wrist"  # the wrist term still wins a tie
    with pytest.raises(ValueError, match="hand policy"):
        decide_wrist(None, body_part=tag, params=replace(PARAMS, hand="maybe"))
