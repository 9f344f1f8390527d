"""Study labels from radiology report texts: a small, transparent rule-based classifier.

English only. The report is cut into sentences (at '.', ';', '!' and line breaks), after the
clinical history / indication section is dropped (its "?fracture" is the requester's question,
not a finding). Every mention of a fracture ("fracture", "fractures", "fractured", "fx") is
classed, in this order:

1. negated: a negation word ("no", "not", "without", "nor", "neither", "absence", "absent",
   "negative", "free") stands before the mention with only filler words between them
   ("evidence of", "signs of", "acute", "definite", "radiographic", "a", "the", ... and findings
   joined by "or" or a comma: "no dislocation or fracture"). "No displacement of the fracture"
   is therefore *not* negated: "displacement" is no filler, so the negation is about it;
2. uncertain: the sentence hedges ("possible", "suspected", "cannot be excluded", "?", ...);
3. negated, after the mention: "fracture is not seen", "fracture ruled out", "fracture: none";
4. old: an old or healing fracture: "healed", "healing", "old", "united", "previous", ... in
   the three words before the mention or anywhere after it in the sentence;
5. otherwise affirmed.

The report's label: 1 if any mention is affirmed; else unlabelled if any is uncertain or old
(whether a healing fracture counts depends on local convention, so such reports are left out
rather than guessed); else 0 if any is negated, or if the report says the study is normal
without naming fractures ("normal wrist", "no bony injury", "unremarkable"); else unlabelled.

Limits: no other languages, abbreviations beyond "fx" ("#" is not read), misspellings, or
laterality: a fracture anywhere in the report counts, even of another bone. Negation is only
recognised in the patterns above. Check a sample of its labels against the reports by hand
before trusting an acceptance run on them.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MENTION = re.compile(r"fractur(?:e|es|ed)|fxs?")
NEGATIONS = frozenset(
    {"no", "not", "without", "nor", "neither", "absence", "absent", "negative", "free"}
)
FILLERS = frozenset(
    {
        "evidence",
        "sign",
        "signs",
        "suggestion",
        "features",
        "of",
        "for",
        "a",
        "an",
        "the",
        "any",
        "acute",
        "new",
        "recent",
        "definite",
        "definitive",
        "obvious",
        "convincing",
        "clear",
        "visible",
        "apparent",
        "demonstrable",
        "discrete",
        "radiographic",
        "radiological",
        "bony",
        "osseous",
        "displaced",
        "other",
        "further",
        "associated",
        "significant",
        "underlying",
    }
)
LIST_WORDS = frozenset({"or", "nor"})
UNCERTAIN = re.compile(
    r"\?|\b(?:possibl[ey]|probabl[ey]|likely|suspect(?:ed)?|suspicio(?:n|us)|questionable|query"
    r"|equivocal|indeterminate|unclear|uncertain|whether|may|might|could|cannot|can ?not"
    r"|not (?:be )?(?:excluded|ruled out)|versus|vs)\b"
)
NEGATED_AFTER = re.compile(
    r"^(?:\s+(?!which\b|that\b|but\b|although\b)[a-z-]+){0,6}?\s*(?:\s(?:is|are|was|were|has|have|been|be))*\s*"
    r"(?:not (?:seen|identified|demonstrated|visible|evident|present|apparent|detected|shown)"
    r"|excluded|ruled out|absent|:\s*(?:none|no|negative))\b"
)
OLD = re.compile(
    r"\b(?:heal(?:ed|ing)|old|remote|(?:un|mal|non-?)?united|union|consolidat\w*|previous|prior"
    r"|known|chronic)\b"
)
AGE = re.compile(r"\b\d+[- ]?(?:years?|months?|yrs?|y)[- ]old\b")
NORMAL = re.compile(
    r"\bnormal (?:wrist|study|examination|exam|radiograph|appearances?)\b|\bunremarkable\b"
    r"|\bno (?:acute )?(?:bony|osseous|skeletal|traumatic) (?:injury|abnormality|pathology|lesion)"
    r"|\bno abnormality\b"
)
HISTORY = re.compile(
    r"\b(?:clinical (?:history|details|information|indication)|history|indications?"
    r"|reason for (?:examination|exam|study|request)|request)\s*:.*?"
    r"(?=\b(?:findings|report|impression|conclusions?|comments?|opinion)\s*:|\Z)",
    re.DOTALL,
)
SENTENCE_END = re.compile(r"[.;!\n]+")
TOKEN = re.compile(r"[a-z]+|[?,]")


@dataclass(frozen=True)
class ReportLabel:
    """The label of one report, and why."""

    label: int | None
    """1 fracture, 0 no fracture, None when the rules cannot tell."""
    reason: str
    """'affirmed', 'negated', 'normal', 'uncertain', 'old or healing', 'no fracture statement'."""


def label_report(text: str) -> ReportLabel:
    """Label one report text by the rules of this module's docstring."""
    findings = HISTORY.sub(" ", text.lower())
    kinds: set[str] = set()
    for sentence in SENTENCE_END.split(AGE.sub(" ", findings)):
        kinds.update(_mention_kinds(sentence))
    if "affirmed" in kinds:
        return ReportLabel(1, "affirmed")
    for hedge in ("uncertain", "old or healing"):
        if hedge in kinds:
            return ReportLabel(None, hedge)
    if "negated" in kinds:
        return ReportLabel(0, "negated")
    if NORMAL.search(findings):
        return ReportLabel(0, "normal")
    return ReportLabel(None, "no fracture statement")


def _mention_kinds(sentence: str) -> list[str]:
    tokens = [(m.group(), m.end()) for m in TOKEN.finditer(sentence)]
    kinds = []
    for i, (token, end) in enumerate(tokens):
        if not MENTION.fullmatch(token):
            continue
        if _negated_before([t for t, _ in tokens[:i]]):
            kinds.append("negated")
        elif UNCERTAIN.search(sentence):
            kinds.append("uncertain")
        elif NEGATED_AFTER.match(sentence[end:]):
            kinds.append("negated")
        elif OLD.search(" ".join(t for t, _ in tokens[max(0, i - 3) : i]) + " " + sentence[end:]):
            kinds.append("old or healing")
        else:
            kinds.append("affirmed")
    return kinds


def _negated_before(before: list[str]) -> bool:
    """Whether a negation governs the mention that follows `before` (see the docstring)."""
    after = ""  # the token just right of the one looked at
    in_list = False  # an "or" was passed: commas and other findings may follow
    for token in reversed(before):
        if token in NEGATIONS:
            return True
        in_list = in_list or token in LIST_WORDS
        listed = in_list and (token == "," or after in LIST_WORDS or after == ",")
        if not (token in FILLERS or token in LIST_WORDS or listed):
            return False
        after = token
    return False


@dataclass(frozen=True)
class LabelledReports:
    """Labels read from a report CSV, and the reports left out."""

    labels: dict[str, int]
    unlabelled: dict[str, str]
    """Study UID -> why its report could not be labelled."""
    reasons: Counter[str] = field(default_factory=Counter)
    """How many reports were labelled (or not) for each reason."""


def label_reports(path: Path) -> LabelledReports:
    """Label every report of a CSV with columns study_uid (or study_instance_uid), report_text."""
    labels: dict[str, int] = {}
    unlabelled: dict[str, str] = {}
    reasons: Counter[str] = Counter()
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        uid_column = study_uid_column(path, reader.fieldnames)
        if "report_text" not in (reader.fieldnames or ()):
            raise ValueError(f"{path}: needs a 'report_text' column")
        for row in reader:
            result = label_report(row["report_text"] or "")
            reasons[result.reason] += 1
            if result.label is None:
                unlabelled[row[uid_column].strip()] = result.reason
            else:
                labels[row[uid_column].strip()] = result.label
    return LabelledReports(labels, unlabelled, reasons)


def study_uid_column(path: Path, columns: object) -> str:
    """The CSV's study UID column ('study_uid' or 'study_instance_uid'), else ValueError."""
    names = list(columns) if isinstance(columns, list) else []
    for name in ("study_uid", "study_instance_uid"):
        if name in names:
            return name
    raise ValueError(f"{path}: needs a 'study_uid' (or 'study_instance_uid') column")
