"""Timestamps the product writes (logs, audit, status, bundles, state files): one format.

ISO 8601 in UTC with the zone written as "Z", e.g. ``2026-11-26T16:25:47Z`` or, with
milliseconds, ``2026-11-26T16:25:47.123Z``: unambiguous across time zones and DST changes,
sortable as text, and read back by `datetime.fromisoformat`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Literal


def utc_timestamp(
    epoch: float | None = None, *, timespec: Literal["seconds", "milliseconds"] = "seconds"
) -> str:
    """`epoch` (seconds since 1970, default now) as ISO 8601 UTC with a "Z" zone designator."""
    moment = datetime.fromtimestamp(time.time() if epoch is None else epoch, UTC)
    return moment.isoformat(timespec=timespec).replace("+00:00", "Z")
