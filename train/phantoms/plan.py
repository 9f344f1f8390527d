"""What a synthetic archive contains: patients, studies, views and how each instance is stored.

Planning is separate from rendering so the frequencies are readable in one place and a study's
plan depends only on (seed, study index): any study can be regenerated alone, in any process.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import date, timedelta
from typing import Any

import numpy as np

from train.phantoms.anatomy import Fracture, ViewSpec, random_view_spec
from train.phantoms.encoding import TRANSFER_SYNTAXES
from train.projection import spec as projection_spec

FRACTURE_PREVALENCE = 0.31  # thesis Section 3.1: 4,214 of 13,538 studies
VIEW_COUNTS = (
    (1, 0.28),
    (2, 0.52),
    (3, 0.1),
    (4, 0.06),
    (5, 0.015),
    (6, 0.01),
    (7, 0.01),
    (8, 0.005),
)
# Fractured studies: visible in every view 81%, in half of them 14%, in a third the rest (Sec. 6.3).
VISIBILITY = (("all", 0.81), ("half", 0.14), ("third", 0.05))
FRACTURE_KINDS = (("transverse", 0.4), ("oblique", 0.25), ("buckle", 0.2), ("scaphoid", 0.15))
NON_WRIST_SHARE = 0.07
MISTAGGED_NON_WRIST_SHARE = 0.35

WRIST_TAGS = (
    ("WRIST", 0.3),
    ("Wrist", 0.06),
    ("MUÑECA", 0.16),
    ("MUNECA", 0.07),
    ("muñeca izq", 0.04),
    ("MUÑECA DCHA", 0.03),
    ("CANELL", 0.05),
    ("POIGNET", 0.05),
    ("HANDGELENK", 0.04),
    ("PUNHO", 0.04),
    ("WRSIT", 0.02),
    ("MUÑEKA", 0.02),
    ("MUNYECA", 0.02),
    ("Poignet G", 0.02),
    ("", 0.08),
)
WRIST_DESCRIPTIONS = (
    "RX MUÑECA",
    "RX MUÑECA DERECHA",
    "Wrist 2 views",
    "RX CANELL ESQ",
    "Poignet F+P",
)
NON_WRIST_TAGS = {
    "chest": ("CHEST", "TORAX", "TÓRAX", "THORAX"),
    "pelvis": ("PELVIS", "PELVIS", "BASSIN", "BECKEN"),
    "skull": ("SKULL", "CRANEO", "CRÁNEO", "CRANI"),
}
WRONG_TAGS = ("ARM", "BRAZO", "FOREARM", "ANTEBRAZO")
# The projection world's own frequencies and vocabulary: ten decoy body parts, decoys tagged
# as a wrist, wrists tagged as a limb, more fracture kinds and more hairlines.
PROJECTION_DECOY_TAGS = NON_WRIST_TAGS | {
    "foot": ("FOOT", "PIE", "PIED", "FUSS"),
    "ankle": ("ANKLE", "TOBILLO", "CHEVILLE", "TURMELL"),
    "knee": ("KNEE", "RODILLA", "GENOU", "KNIE"),
    "lower_leg": ("TIBIA", "LEG", "PIERNA", "UNTERSCHENKEL"),
    "elbow": ("ELBOW", "CODO", "COUDE", "COLZE"),
    "shoulder": ("SHOULDER", "HOMBRO", "EPAULE", "SCHULTER"),
    "spine": ("SPINE", "COLUMNA", "L SPINE", "CSPINE"),
}
PROJECTION_WRIST_TAGS = (
    *WRIST_TAGS,
    ("EXTREMITY", 0.05),
    ("UPPER LIMB", 0.03),
    ("UPPER EXTREMITY", 0.02),
    ("ARM", 0.04),
    ("FOREARM", 0.02),
)
PROJECTION_FRACTURE_KINDS = (
    ("transverse", 0.3),
    ("oblique", 0.15),
    ("comminuted", 0.1),
    ("buckle", 0.15),
    ("ulnar_styloid", 0.12),
    ("scaphoid", 0.18),
)
RENDERERS = ("phantom", "projection", "mixed")


@dataclass(frozen=True)
class World:
    """How one renderer's archive is drawn: which decoys, tags, findings and view sampler."""

    name: str
    non_wrist_share: float
    decoys: tuple[str, ...]
    decoy_tags: Mapping[str, tuple[str, ...]]
    wrist_tagged_decoy_share: float
    """Share of decoys whose Body Part Examined says WRIST (0 draws nothing: today's archives)."""
    wrist_tags: tuple[tuple[str, float], ...]
    fracture_kinds: tuple[tuple[str, float], ...]
    subtle_share: float
    implant_share: tuple[float, float]
    """(intact, fractured) studies with an implant."""
    cast_share: tuple[float, float]
    sample_spec: Callable[..., Any]


def _projection_spec(
    rng: np.random.Generator, *, body_part: str, view: str, fracture: Fracture | None, size: str
) -> Any:
    kind = projection_spec.Fracture(fracture.kind, fracture.subtle) if fracture else None
    return projection_spec.random_spec(
        rng, body_part=body_part, view=view, fracture=kind, size=size
    )


WORLDS = {
    "phantom": World(
        "phantom",
        NON_WRIST_SHARE,
        ("chest", "pelvis", "skull"),
        NON_WRIST_TAGS,
        0.0,
        WRIST_TAGS,
        FRACTURE_KINDS,
        0.2,
        (0.03, 0.25),
        (0.04, 0.2),
        random_view_spec,
    ),
    "projection": World(
        "projection",
        0.12,
        tuple(PROJECTION_DECOY_TAGS),
        PROJECTION_DECOY_TAGS,
        0.3,
        PROJECTION_WRIST_TAGS,
        PROJECTION_FRACTURE_KINDS,
        0.3,
        (0.08, 0.15),
        (0.08, 0.15),
        _projection_spec,
    ),
}


def renderer_of(seed: int, index: int, renderer: str) -> str:
    """The renderer of study `index`: `renderer` itself, or for "mixed" an even draw of its own
    (separate from the study's stream, so a study's content does not depend on the mix)."""
    if renderer not in RENDERERS:
        raise ValueError(f"unknown renderer {renderer!r}; expected one of {', '.join(RENDERERS)}")
    if renderer != "mixed":
        return renderer
    coin = np.random.default_rng(np.random.SeedSequence([seed, index, 9090])).random()
    return "phantom" if coin < 0.5 else "projection"


SYNTAX_WEIGHTS = {"explicit_le": 0.5, "implicit_le": 0.1} | {
    name: 0.4 / (len(TRANSFER_SYNTAXES) - 2)
    for name in TRANSFER_SYNTAXES
    if name not in ("explicit_le", "implicit_le")
}
SOP_KINDS = (("CR", 0.45), ("DX_PRESENTATION", 0.37), ("DX_PROCESSING", 0.06), ("SC", 0.12))
SC_KINDS = (("grey8", 0.5), ("grey16", 0.3), ("rgb", 0.2))
PHOTOMETRIC = (("monochrome2", 0.66), ("monochrome1", 0.2), ("inverted", 0.14))
VOI = (("window", 0.45), ("sigmoid", 0.1), ("voi_lut", 0.07), ("none", 0.38))
# Deliberately corrupt instances, placed by study index so every archive of 21 or more studies
# has both kinds: the last view of every 37th study truncated, the first of every 53rd broken.
TRUNCATED_EVERY, BROKEN_HEADER_EVERY = 37, 53
# Body Part Examined is a Code String (upper-case ASCII, 16 chars), yet old systems store free text
# in it. Most studies get the conformant spelling there and the free text in Study Description;
# this share keeps the free text in the tag, as legacy archives do (dciodvfy flags their VR).
LEGACY_TAG_SHARE = 0.05
MANUFACTURERS = ("Agfa", "Carestream Health", "FUJIFILM Corporation", "Philips", "Siemens")
FIRST_NAMES = ("JOSE", "MARIA", "JORDI", "MONTSERRAT", "JEAN", "ANNA", "JOÃO", "ZOË", "LUCÍA")
LAST_NAMES = ("GARCIA", "MUÑOZ", "PUIG", "MARTÍNEZ", "DUBOIS", "MÜLLER", "SILVA", "FERRER")


@dataclass(frozen=True)
class InstancePlan:
    """One instance: its rendering spec and how it is stored."""

    spec: ViewSpec | projection_spec.ProjectionSpec
    sop_instance_uid: str
    series_instance_uid: str
    series_number: int
    instance_number: int
    sop_kind: str
    """CR, DX_PRESENTATION, DX_PROCESSING, SC_GREY8, SC_GREY16 or SC_RGB."""
    photometric: str
    bits_stored: int
    voi: str
    syntax: str
    corrupt: str
    """'' or 'truncated' or 'header'."""


@dataclass(frozen=True)
class StudyPlan:
    """One study: who, what, the label, and its instances."""

    index: int
    patient_id: str
    patient_name: str
    patient_sex: str
    birth_date: str
    study_instance_uid: str
    accession_number: str
    study_date: str
    body_part: str
    body_part_tag: str
    study_description: str
    conformant: bool
    mistagged: bool
    """A non-wrist study whose Body Part Examined names an arm or a wrist."""
    label: int
    laterality: str
    manufacturer: str
    instances: tuple[InstancePlan, ...]
    has_labels: bool
    has_images: bool
    renderer: str = "phantom"


def as_code_string(text: str) -> str:
    """The PS3.5 Code String a conformant system would store: accents folded, upper case,
    only A-Z, 0-9, space and underscore, at most 16 characters."""
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^A-Z0-9_ ]+", " ", folded.upper()).strip()[:16].strip()


def _choice(rng: np.random.Generator, weighted: tuple[tuple[str, float], ...]) -> str:
    names, weights = zip(*weighted, strict=True)
    p = np.asarray(weights, dtype=np.float64)
    return str(names[int(rng.choice(len(names), p=p / p.sum()))])


def _uid(seed: int, *parts: object) -> str:
    """A deterministic UID under the UUID root 2.25 (PS3.5 B.2) from a hash of its identity."""
    digest = hashlib.sha256("/".join(["wristai-synth", str(seed), *map(str, parts)]).encode())
    return f"2.25.{int.from_bytes(digest.digest()[:16], 'big')}"


def plan_study(
    seed: int,
    index: int,
    *,
    size: str,
    n_patients: int,
    syntaxes: tuple[str, ...] = (),
    renderer: str = "phantom",
) -> StudyPlan:
    """The plan of study `index` of the archive generated with `seed` (pure and deterministic).

    `renderer` is "phantom" (today's archives, unchanged), "projection" or "mixed"."""
    world = WORLDS[renderer_of(seed, index, renderer)]
    rng = np.random.default_rng(np.random.SeedSequence([seed, index]))
    # Some patients have two studies (a fracture and its follow-up): the split must be by patient.
    patient = int(rng.integers(0, n_patients))
    prng = np.random.default_rng(np.random.SeedSequence([seed, 10**9 + patient]))
    name = f"{LAST_NAMES[int(prng.integers(len(LAST_NAMES)))]}^"
    name += FIRST_NAMES[int(prng.integers(len(FIRST_NAMES)))]
    birth = date(1940, 1, 1) + timedelta(days=int(prng.integers(0, 365 * 70)))
    study_date = date(2016, 1, 1) + timedelta(days=int(rng.integers(0, 365 * 4)))

    body_part = "wrist"
    if rng.random() < world.non_wrist_share:
        body_part = str(rng.choice(list(world.decoys)))
    wrist_tagged = False
    if body_part == "wrist":
        typed = _choice(rng, world.wrist_tags)
        description = (
            str(rng.choice(WRIST_DESCRIPTIONS)) if typed == "" or rng.random() < 0.5 else ""
        )
    else:
        if world.wrist_tagged_decoy_share > 0:
            wrist_tagged = bool(rng.random() < world.wrist_tagged_decoy_share)
        wrong = rng.random() < MISTAGGED_NON_WRIST_SHARE
        tags = WRONG_TAGS if wrong else world.decoy_tags[body_part]
        typed = _choice(rng, WRIST_TAGS[:-1]) if wrist_tagged else str(rng.choice(tags))
        description = ""
    tag = as_code_string(typed)
    if tag != typed:
        if rng.random() < LEGACY_TAG_SHARE:
            tag = typed
        else:
            description = f"RX {typed}"
    label = int(body_part == "wrist" and rng.random() < FRACTURE_PREVALENCE)
    laterality = str(rng.choice(["L", "R"]))

    n_views = int(_choice(rng, tuple((str(n), p) for n, p in VIEW_COUNTS)))
    if body_part != "wrist":
        n_views = 1 + int(rng.random() < 0.3)
    visible = _visible_views(rng, n_views) if label else [False] * n_views
    fracture = Fracture(
        kind=_choice(rng, world.fracture_kinds), subtle=bool(rng.random() < world.subtle_share)
    )
    implant = bool(rng.random() < world.implant_share[label])
    cast = bool(rng.random() < world.cast_share[label])
    study_uid = _uid(seed, "study", index)
    series_uid = _uid(seed, "series", index)

    instances = []
    for number in range(n_views):
        view = "PA" if number % 2 == 0 else "LAT"
        spec = world.sample_spec(
            rng,
            body_part=body_part,
            view=view,
            fracture=fracture if visible[number] else None,
            size=size,
        )
        spec = replace(spec, implant=implant and body_part == "wrist", cast=cast or spec.cast)
        spec = replace(spec, marker=laterality if spec.marker else None)
        instances.append(
            _instance_plan(
                rng,
                seed,
                index,
                number,
                spec,
                series_uid,
                last=number == n_views - 1,
                syntaxes=syntaxes,
            )
        )
    has_labels, has_images = True, True
    roll = rng.random()
    if roll < 0.01:
        has_images = False  # a label whose images never reached the archive
    elif roll < 0.02:
        has_labels = False  # images nobody labelled
    return StudyPlan(
        index=index,
        patient_id=f"SYN{patient:06d}",
        patient_name=name,
        patient_sex=str(prng.choice(["F", "M"])),
        birth_date=birth.strftime("%Y%m%d"),
        study_instance_uid=study_uid,
        accession_number=f"A{seed % 1000:03d}{index:07d}",
        study_date=study_date.strftime("%Y%m%d"),
        body_part=body_part,
        body_part_tag=tag,
        study_description=description,
        conformant=tag == as_code_string(tag),
        mistagged=body_part != "wrist" and (typed in WRONG_TAGS or wrist_tagged),
        label=label,
        laterality=laterality,
        manufacturer=str(rng.choice(MANUFACTURERS)),
        instances=tuple(instances),
        has_labels=has_labels,
        has_images=has_images,
        renderer=world.name,
    )


def _visible_views(rng: np.random.Generator, n_views: int) -> list[bool]:
    share = _choice(rng, VISIBILITY)
    count = {"all": n_views, "half": max(1, n_views // 2), "third": max(1, n_views // 3)}[share]
    chosen = set(rng.permutation(n_views)[:count].tolist())
    return [i in chosen for i in range(n_views)]


def _instance_plan(
    rng: np.random.Generator,
    seed: int,
    index: int,
    number: int,
    spec: ViewSpec | projection_spec.ProjectionSpec,
    series_uid: str,
    *,
    last: bool,
    syntaxes: tuple[str, ...] = (),
) -> InstancePlan:
    sop_kind = _choice(rng, SOP_KINDS)
    if sop_kind == "SC":
        sop_kind = "SC_" + _choice(rng, SC_KINDS).upper()
    allowed = tuple((k, w) for k, w in SYNTAX_WEIGHTS.items() if not syntaxes or k in syntaxes)
    syntax = _choice(rng, allowed)
    photometric = _choice(rng, PHOTOMETRIC)
    bits = int(rng.choice([10, 12, 14, 16]))
    voi = _choice(rng, VOI)
    if sop_kind == "SC_RGB":
        # Screenshots exported from a viewer: 8-bit colour, displayed as shown, no VOI.
        rgb_ok = ("explicit_le", "implicit_le", "rle", "deflated")
        syntax = syntax if syntax in rgb_ok else "rle"
        photometric, bits, voi = str(rng.choice(["monochrome2", "inverted"])), 8, "none"
    elif sop_kind == "SC_GREY8":
        bits = 8
    if sop_kind == "DX_PRESENTATION" and voi == "none":
        voi = "window"  # a For Presentation image must carry its VOI (PS3.3 C.8.11.3)
    if sop_kind == "DX_PROCESSING":
        voi, photometric = "none", "monochrome2" if photometric == "inverted" else photometric
    bits = min(bits, TRANSFER_SYNTAXES[syntax].max_bits)
    if syntax == "jpeg_baseline":
        bits = 8
    elif syntax == "jpeg_extended":
        bits = 12
    if syntaxes and syntax not in syntaxes:
        syntax = syntaxes[0]
    corrupt = ""
    if index % TRUNCATED_EVERY == 5 and last:
        corrupt = "truncated"
    elif index % BROKEN_HEADER_EVERY == 20 and number == 0:
        corrupt = "header"
    if corrupt and syntax not in ("explicit_le", "implicit_le"):
        syntax = "explicit_le"
    return InstancePlan(
        spec=spec,
        sop_instance_uid=_uid(seed, "instance", index, number),
        series_instance_uid=series_uid,
        series_number=1,
        instance_number=number + 1,
        sop_kind=sop_kind,
        photometric=photometric,
        bits_stored=bits,
        voi=voi,
        syntax=syntax,
        corrupt=corrupt,
    )
