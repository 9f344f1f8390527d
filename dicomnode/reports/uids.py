"""Deterministic UIDs for the objects the node creates, so a resend never makes a duplicate."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

from dicomnode.identity import RESULT_UID_NAMESPACE

_SEPARATOR = "\x1f"  # ASCII unit separator: cannot occur in UIDs or versions, so no ambiguity


def result_uid(
    kind: str,
    study_uid: str,
    model_version: str,
    input_sop_uids: Iterable[str],
    extra: str = "",
) -> str:
    """A "2.25.<int>" UID from the SHA-256 of what the result depends on.

    The same study, model version and input instances always give the same UID; a new model
    version, other input instances or another `kind`/`extra` give a new one. The 128-bit integer
    keeps the UID at most 44 characters (PS3.5 B.2 allows 64).
    """
    parts = [RESULT_UID_NAMESPACE, kind, study_uid, model_version, *sorted(set(input_sop_uids))]
    parts.append(extra)
    digest = hashlib.sha256(_SEPARATOR.join(parts).encode("utf-8")).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"
