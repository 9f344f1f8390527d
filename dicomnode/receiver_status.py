"""How many receiver processes the running service has, as `dicomnode status` reads it.

`dicomnode status` is a separate process: it cannot ask the service, so the service writes
this small file (atomically) beside the index whenever a receiver starts, dies or is
restarted. The file is not in the index: it changes with processes, not with studies, and
holds nothing that must survive a restart.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from pipeline.files import atomic_write_text
from pipeline.timestamps import utc_timestamp

FILE_NAME = "receivers.json"


@dataclass(frozen=True)
class ReceiverStatus:
    """The service's receiver processes at `updated` (epoch seconds)."""

    expected: int
    alive: int
    pids: tuple[int, ...]
    restarts: int
    """Receiver processes restarted since the service started."""
    updated: float

    def describe(self) -> str:
        """One line for `dicomnode status`."""
        restarts = f", {self.restarts} restarted" if self.restarts else ""
        return (f"{self.alive} of {self.expected} process(es) alive{restarts} (as of "
                f"{utc_timestamp(self.updated)})")  # fmt: skip


def write_status(storage: Path, status: ReceiverStatus) -> None:
    """Record `status` in the storage folder."""
    atomic_write_text(storage / FILE_NAME, json.dumps(asdict(status)))


def read_status(storage: Path) -> ReceiverStatus | None:
    """The status the service last recorded; None if it never did (or the file is unreadable)."""
    try:
        raw = json.loads((storage / FILE_NAME).read_text(encoding="utf-8"))
        return ReceiverStatus(int(raw["expected"]), int(raw["alive"]),
                              tuple(int(p) for p in raw["pids"]), int(raw["restarts"]),
                              float(raw["updated"]))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return None
