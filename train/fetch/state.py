"""``ARCHIVE/fetch_state.json``: the completed studies, so a rerun fetches only what is missing."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from pipeline.dicom.uids import is_valid_uid
from pipeline.files import atomic_write_text
from pipeline.timestamps import utc_timestamp

LOGGER = logging.getLogger(__name__)

STATE_FILE = "fetch_state.json"
STATE_VERSION = 1


def study_folder(out: Path, study_uid: str) -> Path:
    """Where the instances of a study live in the archive (`study_uid` must be a valid UID)."""
    return out / "dicom" / study_uid


class FetchState:
    """The completed studies, and the studies of completed accessions, of one archive."""

    def __init__(self, out: Path, data: dict[str, Any]) -> None:
        self.out = out
        self.path = out / STATE_FILE
        self.studies: dict[str, dict[str, Any]] = dict(data.get("studies", {}))
        self.accessions: dict[str, list[str]] = dict(data.get("accessions", {}))

    @classmethod
    def load(cls, out: Path) -> FetchState:
        """The state of archive `out`; empty (fetch everything) when missing or unreadable."""
        path = out / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(out, {})
        except (OSError, ValueError) as exc:
            LOGGER.warning("ignoring unreadable %s (everything will be fetched): %s", path, exc)
            return cls(out, {})
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            LOGGER.warning("ignoring %s of an unknown version (everything will be fetched)", path)
            return cls(out, {})
        return cls(out, data)

    def is_complete(self, study_uid: str) -> bool:
        """Recorded complete, and its files are still there (someone may have removed them)."""
        entry = self.studies.get(study_uid)
        if entry is None or not is_valid_uid(study_uid):
            return False
        folder = study_folder(self.out, study_uid)
        present = sum(1 for _ in folder.glob("*.dcm")) if folder.is_dir() else 0
        return present >= int(entry.get("instances", 0))

    def instances(self, study_uid: str) -> int:
        """How many instances the study had when it was fetched."""
        return int(self.studies.get(study_uid, {}).get("instances", 0))

    def accession_studies(self, accession: str) -> list[str]:
        """The studies a completed accession number was found to hold."""
        return list(self.accessions.get(accession, [])) if accession else []

    def mark_complete(self, study_uid: str, accession: str, instances: int) -> None:
        """Record a study complete (saved at once)."""
        self.studies[study_uid] = {
            "accession_number": accession,
            "instances": instances,
            "completed": utc_timestamp(),
        }
        self._save()

    def mark_accession(self, accession: str, study_uids: list[str]) -> None:
        """Record the studies of a completed accession number (saved at once)."""
        if self.accessions.get(accession) != study_uids:
            self.accessions[accession] = study_uids
            self._save()

    def _save(self) -> None:
        data = {"version": STATE_VERSION, "studies": self.studies, "accessions": self.accessions}
        atomic_write_text(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")
