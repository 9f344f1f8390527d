"""Log set-up: one line per event, as text or JSON. Callers log study UIDs, never patient data."""

from __future__ import annotations

import json
import logging
import sys

from dicomnode.config import LoggingSection
from pipeline.timestamps import utc_timestamp


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": utc_timestamp(record.created, timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure_logging(section: LoggingSection) -> None:
    """Send log records to stderr (journald picks them up under systemd)."""
    handler = logging.StreamHandler(sys.stderr)
    if section.format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(section.level)
    # pynetdicom narrates every PDU, apscheduler every timer tick, highdicom every copied
    # module at INFO: their warnings only.
    for chatty in ("pynetdicom", "apscheduler", "highdicom"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
