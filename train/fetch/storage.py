"""The Storage SCP side of a C-GET: each instance the PACS sends is written to the archive."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import cast

from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from pipeline.dicom import dimse
from pipeline.dicom.uids import is_valid_uid
from pipeline.files import atomic_write_bytes
from train.fetch.state import study_folder

LOGGER = logging.getLogger(__name__)


class StudySink:
    """Where the C-STORE sub-operations of the current C-GET are written, and their tally."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._lock = threading.Lock()
        self.begin("")

    def begin(self, study_uid: str) -> None:
        """Start receiving the instances of `study_uid` (the tally starts at zero)."""
        with self._lock:
            self.study_uid = study_uid
            self.written = 0
            self.refused = 0
            self.reasons: list[str] = []

    def refuse(self, reason: str) -> None:
        """Count (and log) an instance that was not written."""
        LOGGER.warning("study %s: instance refused: %s", self.study_uid, reason)
        with self._lock:
            self.refused += 1
            self.reasons.append(reason)

    def count_written(self) -> None:
        """Count an instance written to the archive."""
        with self._lock:
            self.written += 1


def handle_store(event: Event, sink: StudySink) -> int:
    """EVT_C_STORE: write the instance as encoded by the PACS, atomically; never raises."""
    try:
        sop_uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID or "")
        if not is_valid_uid(sop_uid):
            sink.refuse(f"SOP Instance UID {sop_uid[:80]!r} is not a usable UID")
            return dimse.CANNOT_UNDERSTAND
        try:
            study_uid = str(event.dataset.get("StudyInstanceUID", "") or "")
        except Exception as exc:  # a dataset pydicom cannot decode
            sink.refuse(f"instance {sop_uid} cannot be decoded: {exc}")
            return dimse.CANNOT_UNDERSTAND
        if not is_valid_uid(study_uid):
            sink.refuse(f"instance {sop_uid} has an unusable Study Instance UID")
            return dimse.CANNOT_UNDERSTAND
        if study_uid != sink.study_uid:
            sink.refuse(f"instance {sop_uid} belongs to study {study_uid}, not the one requested")
            return dimse.CANNOT_UNDERSTAND
        target = study_folder(sink.out, study_uid) / f"{sop_uid}.dcm"
        atomic_write_bytes(target, event.encoded_dataset())
    except Exception as exc:
        sink.refuse(f"cannot write the instance: {type(exc).__name__}: {exc}")
        return dimse.OUT_OF_RESOURCES
    sink.count_written()
    return dimse.SUCCESS
