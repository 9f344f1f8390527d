"""Patient pseudonyms and the train/validation/test split, by patient and stratified by label.

Patient IDs never reach the dataset: a keyed pseudonym (HMAC-SHA256 with a secret key kept beside
the dataset, or given by the hospital) replaces them, so the same patient gets the same pseudonym
in every dataset prepared with the same key, and nobody without the key can reverse it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def default_key_file() -> Path:
    """Where the key lives unless the hospital names one: the user's configuration folder, not
    the dataset (a key shipped with the dataset would let anyone test candidate patient IDs)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "wristai" / "pseudonym.key"


def source_ref(key: bytes, relative_path: str) -> str:
    """A keyed digest standing for an archive file, whose path may name the patient."""
    digest = hmac.new(key, b"source:" + relative_path.encode("utf-8"), hashlib.sha256)
    return f"S{digest.hexdigest()[:20]}"


def load_or_create_key(path: Path) -> bytes:
    """The pseudonym key in `path` (hex), created with 256 random bits, mode 0600, if absent."""
    if path.exists():
        text = path.read_text(encoding="ascii").strip()
        try:
            key = bytes.fromhex(text)
        except ValueError as exc:
            raise ValueError(f"{path}: the pseudonym key must be hexadecimal") from exc
        if len(key) < 16:
            raise ValueError(f"{path}: the pseudonym key must be at least 128 bits")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(key.hex() + "\n")
    return key


def pseudonym(key: bytes, patient_id: str) -> str:
    """A stable 16-hex-digit pseudonym for a patient ID."""
    digest = hmac.new(key, patient_id.encode("utf-8"), hashlib.sha256).hexdigest()
    return f"P{digest[:16]}"


def assign_splits(
    patient_labels: Mapping[str, int],
    key: bytes,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> dict[str, str]:
    """Split patients (by pseudonym) into train/val/test, stratified by label.

    Within each label, patients are ordered by a keyed hash and cut at the fractions: exact
    proportions, deterministic for a key, and a grown archive moves few patients across splits
    (new patients interleave by hash; only those near the cut points change side).
    """
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, not {fractions}")
    strata: dict[int, list[str]] = defaultdict(list)
    for patient, label in patient_labels.items():
        strata[label].append(patient)
    result: dict[str, str] = {}
    for patients in strata.values():
        order = sorted(
            patients, key=lambda p: hmac.new(key, b"split:" + p.encode(), "sha256").digest()
        )
        n = len(order)
        n_train = round(n * fractions[0])
        n_val = round(n * (fractions[0] + fractions[1])) - n_train
        for i, patient in enumerate(order):
            result[patient] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return result


def shard_of(study_uid: str, shards: int) -> int:
    """The 0-based shard a study belongs to (stable across runs and machines)."""
    return int.from_bytes(hashlib.sha1(study_uid.encode()).digest()[:8], "big") % shards
