"""The audit trail: one JSON object per line, appended, in the spirit of IHE ATNA.

Events carry AE titles, addresses, study UIDs, destinations and outcomes; never patient names,
IDs or any other dataset value. Several processes (receiver, analysis workers) append to one
file: each event is one ``write`` on an ``O_APPEND`` descriptor, so lines never interleave.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from pipeline.timestamps import utc_timestamp

log = logging.getLogger(__name__)

EVENTS = (
    "association-accepted",
    "association-rejected",
    "tls-refused",
    "study-received",
    "result-sent",
    "result-failed",
    "result-committed",
    "commitment-failed",
    "study-purged",
)


class AuditLog:
    """Appends audit events to `path` (created 0o600)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def record(self, event: str, **fields: Any) -> None:
        """Append one event; a failing disk is logged, never raised into the caller."""
        if event not in EVENTS:
            raise ValueError(f"unknown audit event {event!r}")
        line = {
            "time": utc_timestamp(timespec="milliseconds"),
            "event": event,
            "pid": os.getpid(),
            **fields,
        }
        data = (json.dumps(line, separators=(",", ":"), sort_keys=False) + "\n").encode()
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("audit event %s not written: %s", event, exc.strerror or exc)


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events in `path`, oldest first (for tests and `dicomnode status`)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
