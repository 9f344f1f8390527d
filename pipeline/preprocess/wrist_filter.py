"""Wrist filter (thesis Section 4.2.2.1): is this instance a wrist radiograph?

Body Part Examined is free text in most archives (languages, case, accents, typos, mojibake), so
it is normalised and fuzzy-matched against a configurable vocabulary (`wrist_vocabulary.toml`);
when it says nothing, Study then Series Description are used. Unlike the thesis, the tag is not
trusted blindly: an image check (`extremity_check`) confirms ambiguous arm tags, vetoes a chest
or skull tagged as a wrist, and decides alone when there is no usable text.
"""

from __future__ import annotations

import functools
import re
import tomllib
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path

from rapidfuzz.distance import OSA

from pipeline.dicomio import Radiograph
from pipeline.models.view_net import body_part_words
from pipeline.preprocess.extremity_check import ExtremityParams, extremity_evidence

_LISTS = ("wrist_terms", "arm_terms", "other_terms", "qualifiers")
_OPTIONAL_LISTS = ("hand_terms",)
_CATEGORIES = ("wrist", "hand", "arm", "other")  # also the precedence on equal scores
HAND_POLICIES = ("refuse", "image", "analyse")
_SHORT = 4
"""Terms or words this short match only exactly: one edit in four letters is another word."""


@dataclass(frozen=True)
class WristVocabulary:
    """The words the filter recognises; configuration, loaded from TOML."""

    wrist_terms: tuple[str, ...]
    arm_terms: tuple[str, ...]
    other_terms: tuple[str, ...]
    qualifiers: tuple[str, ...]
    min_score: float = 80.0
    hand_terms: tuple[str, ...] = ()
    """Hand radiographs: what happens to them is `WristFilterParams.hand`, a site's policy."""
    """OSA similarity (0-100) a word must reach; one typo in a 5-6 letter word scores 80-83."""

    @classmethod
    def load(cls, path: Path | None = None) -> WristVocabulary:
        """Load a vocabulary TOML; None loads the packaged default. Raises ValueError on a bad
        file, naming the key and the file."""
        if path is None:
            source = resources.files("pipeline.preprocess").joinpath("wrist_vocabulary.toml")
            where, text = "the packaged wrist_vocabulary.toml", source.read_text(encoding="utf-8")
        else:
            where, text = str(path), Path(path).read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{where} is not valid TOML: {exc}") from exc
        for key in data:
            if key not in (*_LISTS, *_OPTIONAL_LISTS, "min_score"):
                raise ValueError(f"unknown key {key!r} in {where}")
        lists: dict[str, tuple[str, ...]] = {}
        for key in (*_LISTS, *(k for k in _OPTIONAL_LISTS if k in data)):
            value = data.get(key)
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise ValueError(f"key {key!r} in {where} must be a list of non-empty strings")
            lists[key] = tuple(value)
        score = data.get("min_score", 80.0)
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0 < score <= 100:
            raise ValueError(f"key 'min_score' in {where} must be a number in (0, 100]")
        return cls(**lists, min_score=float(score))


@dataclass(frozen=True)
class WristFilterParams:
    """How the filter decides; the extremity-score thresholds are on a 0-1 scale."""

    vocabulary: WristVocabulary
    check_image: bool = True
    accept_score: float = 0.7
    """Extremity score at or above which an image confirms an arm tag or, with no usable text,
    is taken as a wrist. Phantom wrists score >= 0.6 (5th percentile 0.88), trunks and skulls
    <= 0.65 (99th percentile about 0.55): an unconfirmed arm tag is the cheaper error."""
    veto_score: float = 0.35
    """Extremity score below which an image overrules a wrist tag: clearly not an extremity.
    Low, because vetoing a true wrist loses a study."""
    hand: str = "refuse"
    """A study tagged HAND (vocabulary `hand_terms`): "refuse" it (a hand series is another
    examination), let the "image" decide as for an arm tag, or "analyse" it as a wrist."""
    extremity: ExtremityParams = field(default_factory=ExtremityParams)


@dataclass(frozen=True)
class WristDecision:
    """The filter's verdict on one instance and why."""

    is_wrist: bool
    rule: str
    """Machine-readable: 'tag:wrist', 'tag:wrist+image-veto', 'tag:arm+image',
    'tag:arm+image-reject', 'tag:arm+no-image', 'tag:other', the same with 'description:',
    'empty:image', 'empty:no-image', 'unmatched:image', 'unmatched:no-image'."""
    reason: str
    matched_term: str | None
    score: float | None
    image_score: float | None
    image_body_part: tuple[str, float] | None = None
    """The view reader's body part and its probability, when its body-part head was read."""


@dataclass(frozen=True)
class _Match:
    category: str
    term: str
    score: float
    field: str
    text: str


def normalise_tag(text: str, qualifiers: Iterable[str] | None = None) -> str:
    """Mojibake repaired, NFKD accents folded, upper case, punctuation to spaces, qualifier
    words removed (None: the packaged vocabulary's), whitespace collapsed."""
    quals = _default_qualifiers() if qualifiers is None else _qualifier_tokens(tuple(qualifiers))
    tokens, kept, i = _fold(text).split(), [], 0
    while i < len(tokens):
        skip = next((len(q) for q in quals if tuple(tokens[i : i + len(q)]) == q), 0)
        if skip == 0:
            kept.append(tokens[i])
        i += max(skip, 1)
    return " ".join(kept)


def decide_wrist(
    image: Radiograph | None,
    *,
    body_part: str,
    study_description: str = "",
    series_description: str = "",
    params: WristFilterParams,
    reader_wrist: float | None = None,
    reader_thresholds: tuple[float, float] = (0.2, 0.5),
    reader_body_part: tuple[str, float] | None = None,
) -> WristDecision:
    """Decide whether an instance is a wrist radiograph from its tags and, when given, its image.

    `reader_wrist`, the learned view reader's wrist probability, replaces the extremity score
    as the image's opinion (the extremity check separates limbs from trunks, not wrists from
    knees); `reader_thresholds` are then (refuse a wrist tag below, accept an arm tag from).
    `reader_body_part` (the reader's body part and its probability) lets a refusal by the
    reader say what the image looks like; it never changes the decision."""
    decision = _decide(image, body_part, study_description, series_description, params,
                       reader_wrist, reader_thresholds)  # fmt: skip
    if reader_wrist is None:
        return decision
    decision = replace(decision, image_body_part=reader_body_part)
    if decision.is_wrist or decision.image_score is None or decision.rule.endswith(":other"):
        return decision  # accepted, or refused by the tag: the reader did not refuse it
    looks = reader_refusal(reader_wrist, reader_body_part)
    return replace(decision, reason=f"{looks}; {decision.reason}")


NAME_PART_FROM = 0.7
"""A refusal says what the image looks like only when the reader's body part is at least this
probable. On the shipped reader's projection-world test set (1.1.0, seed 2) its top part was
right for 44% of the refused decoys, and for 81% of those whose part reached 0.7 (the phantom
world: 100% either way); a wrong name would mislead more than no name."""


def reader_refusal(
    wrist_probability: float,
    body_part: tuple[str, float] | None,
    name_from: float = NAME_PART_FROM,
) -> str:
    """What a refusing view reader saw, in words: 'image looks like a chest, not a wrist (view
    reader: chest p=0.87, wrist p=0.05)', or 'image does not look like a wrist (...)' when it
    names no other part surely (no body-part head, its top class is the wrist itself, or that
    class is less probable than `name_from`)."""
    wrist = f"wrist p={wrist_probability:.2f}"
    if body_part is None or not body_part[0]:
        return f"image does not look like a wrist (view reader: {wrist})"
    name, probability = body_part
    words = body_part_words(name)
    if name == "wrist" or probability < name_from:
        said = f"{wrist}; most likely body part: {words}, p={probability:.2f}"
        return f"image does not look like a wrist (view reader: {said})"
    article = "an" if words[:1].lower() in "aeiou" else "a"
    return (
        f"image looks like {article} {words}, not a wrist "
        f"(view reader: {words} p={probability:.2f}, {wrist})"
    )


def _decide(
    image: Radiograph | None,
    body_part: str,
    study_description: str,
    series_description: str,
    params: WristFilterParams,
    reader_wrist: float | None,
    reader_thresholds: tuple[float, float],
) -> WristDecision:
    """`decide_wrist` without the reader's words about what the image looks like."""
    vocab = params.vocabulary
    match = _match(body_part, "Body Part Examined", vocab)
    for text, name in ((study_description, "Study"), (series_description, "Series")):
        match = match or _match(text, f"{name} Description", vocab)
    evidence = None
    if image is not None and params.check_image:
        evidence = extremity_evidence(image.pixels, params.extremity)
    img = None if evidence is None else evidence.score
    if evidence is None:
        why = "no image was given" if image is None else "the image check is disabled"
        seen = f"; image check skipped: {why}"
    else:
        seen = f"; image check: extremity score {evidence.score:.2f}"
    looks = "an extremity"
    if reader_wrist is not None:
        img, looks = reader_wrist, "a wrist"
        also = "" if evidence is None else f" (extremity score {evidence.score:.2f})"
        seen = f"; image check, view reader: wrist probability {reader_wrist:.2f}{also}"
        params = replace(params, veto_score=reader_thresholds[0],
                         accept_score=reader_thresholds[1])  # fmt: skip

    if match is None:
        blank = not any(t.strip() for t in (body_part, study_description, series_description))
        kind = "empty" if blank else "unmatched"
        text = "no tag or description" if blank else "no tag or description matches a term"
        if img is None:
            return WristDecision(False, f"{kind}:no-image", f"{text.capitalize()}{seen}", *_none())
        ok = img >= params.accept_score
        compared = "at least" if ok else "below"
        verdict = f"looks like {looks}" if ok else f"does not look like {looks}"
        reason = f"{text.capitalize()}{seen}, {compared} {params.accept_score:.2f}: {verdict}"
        return WristDecision(ok, f"{kind}:image", reason, None, None, img)

    source = "tag" if match.field == "Body Part Examined" else "description"
    said = f"{match.field} {match.text!r} matches {match.category} term {match.term!r}"
    said += f" (score {match.score:.0f})"
    if match.category == "hand":
        if params.hand not in HAND_POLICIES:
            raise ValueError(f"hand policy must be one of {HAND_POLICIES}, not {params.hand!r}")
        said += f"; hand policy {params.hand!r}"
        category = {"refuse": "other", "image": "arm", "analyse": "wrist"}[params.hand]
        match = replace(match, category=category)
    if match.category == "other":
        return WristDecision(False, f"{source}:other", said + seen, match.term, match.score, img)
    if match.category == "wrist":
        if img is not None and img < params.veto_score:
            rule, ok = f"{source}:wrist+image-veto", False
            seen += f", below the veto threshold {params.veto_score:.2f}: not {looks}"
        else:
            rule, ok = f"{source}:wrist", True
        return WristDecision(ok, rule, said + seen, match.term, match.score, img)
    if img is None:
        rule, ok = f"{source}:arm+no-image", False
        seen += ", so the ambiguous arm tag cannot be confirmed"
    elif img >= params.accept_score:
        rule, ok = f"{source}:arm+image", True
        seen += f", at least {params.accept_score:.2f}: {looks}"
    else:
        rule, ok = f"{source}:arm+image-reject", False
        seen += f", below {params.accept_score:.2f}: not {looks}"
    return WristDecision(ok, rule, said + seen, match.term, match.score, img)


def _none() -> tuple[None, None, None]:
    return None, None, None


def _repair_mojibake(text: str) -> str:
    """Undo UTF-8 bytes decoded as Latin-1/CP1252 ('MUÃ‘ECA' -> 'MUÑECA')."""
    if "Ã" not in text and "Â" not in text:
        return text
    for codec in ("cp1252", "latin-1"):
        try:
            return text.encode(codec).decode("utf-8")
        except UnicodeError:
            continue
    return text


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", _repair_mojibake(text))
    bare = "".join(c for c in decomposed if not unicodedata.combining(c)).upper()
    return " ".join(re.sub(r"[\W_]+", " ", bare).split())


@functools.lru_cache(maxsize=32)
def _qualifier_tokens(qualifiers: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    # Longest first, so "2 VIEWS" goes before "2" could leave "VIEWS" behind.
    folded = {tuple(_fold(q).split()) for q in qualifiers} - {()}
    return tuple(sorted(folded, key=len, reverse=True))


@functools.cache
def _default_qualifiers() -> tuple[tuple[str, ...], ...]:
    return _qualifier_tokens(WristVocabulary.load().qualifiers)


@functools.lru_cache(maxsize=32)
def _folded_terms(terms: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((_fold(t), t) for t in terms if _fold(t))


def _similarity(word: str, term: str) -> float:
    if min(len(word), len(term)) <= _SHORT:
        return 100.0 if word == term else 0.0
    return 100.0 * OSA.normalized_similarity(word, term)


def _match(text: str, field_name: str, vocab: WristVocabulary) -> _Match | None:
    """The best term for the text, or None when nothing reaches min_score.

    Candidates are the whole normalised text and every run of 1-3 of its words, so free-text
    descriptions ("RX MUNECA", "Wrist 2 views") match like bare tags. Ties go to the longer
    candidate, then to wrist over arm over other ("HAND WRIST" is a wrist).
    """
    words = normalise_tag(text, vocab.qualifiers).split()
    candidates = {" ".join(words[i : i + n]) for n in (1, 2, 3) for i in range(len(words))}
    candidates.add(" ".join(words))
    candidates.discard("")
    lists = (vocab.wrist_terms, vocab.hand_terms, vocab.arm_terms, vocab.other_terms)
    best: tuple[float, int, int] | None = None
    found: _Match | None = None
    for rank, (category, terms) in enumerate(zip(_CATEGORIES, lists, strict=True)):
        for folded, term in _folded_terms(terms):
            for cand in candidates:
                score = _similarity(cand, folded)
                key = (score, len(cand), -rank)
                if score >= vocab.min_score and (best is None or key > best):
                    best, found = key, _Match(category, term, score, field_name, text)
    return found
