"""Atomic, durable file writes: a reader (or a crash) sees the old file or the new one, never half.

Every write is temp file in the same folder -> write -> flush -> fsync -> rename over the target
-> fsync of the folder (so the rename itself survives a power cut). On any failure the temp file
is removed and the target is untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

PRIVATE_FILE_MODE = 0o600
"""The default: patient data and anything derived from it is readable by its owner only."""


def fsync_directory(path: Path) -> None:
    """Make the entries of folder `path` (a rename, a removal) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int = PRIVATE_FILE_MODE) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new contents into; it replaces `path` on a clean exit.

    The folder is created if missing. `mode` is the new file's permission bits.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    fsync_directory(path.parent)


def atomic_write_bytes(path: Path, data: bytes, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """Write `data` to `path` atomically and durably (see the module docstring)."""
    with atomic_writer(path, mode=mode) as handle:
        handle.write(data)


def atomic_write_text(path: Path, text: str, *, mode: int = PRIVATE_FILE_MODE) -> None:
    """Write `text` as UTF-8 to `path` atomically and durably."""
    atomic_write_bytes(path, text.encode("utf-8"), mode=mode)
