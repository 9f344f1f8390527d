"""The spool: received instances, each durably on disk before the node acknowledges it.

Layout under the root (directories 0o700, files 0o600, since they hold patient data):
- ``incoming/<random>.part``: a file being written; never read, never acknowledged;
- ``instances/<StudyInstanceUID>/<SOPInstanceUID>.dcm``: the DICOM file as received.

A write is temp file -> flush -> fsync -> rename -> fsync of the directory, so after a crash an
instance is either complete under ``instances/`` or absent (at most a stale ``.part`` remains).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
from pathlib import Path

from pipeline.dicom.uids import is_valid_uid
from pipeline.files import fsync_directory

_DIR_MODE = 0o700
_FILE_MODE = 0o600


def _check_uid(value: str, what: str) -> None:
    # The UIDs become path components: only a validated UID may, so '..' or '/' never do.
    if not is_valid_uid(value):
        raise ValueError(f"{what} {value!r} is not a valid DICOM UID")


def _mkdir_private(path: Path) -> bool:
    """Create `path` (0o700) if missing; True if it was created."""
    try:
        path.mkdir(mode=_DIR_MODE)
    except FileExistsError:
        return False
    os.chmod(path, _DIR_MODE)  # mkdir's mode is filtered by the umask
    return True


class Spool:
    """Atomic, durable storage of received instances under one root directory."""

    def __init__(self, root: Path, *, min_free_bytes: int = 0) -> None:
        self.root = root
        self.min_free_bytes = min_free_bytes
        self.incoming = root / "incoming"
        self.instances = root / "instances"
        root.mkdir(parents=True, exist_ok=True)
        for directory in (self.incoming, self.instances):
            if _mkdir_private(directory):
                fsync_directory(root)

    def path(self, study_uid: str, sop_uid: str) -> Path:
        """Where the instance `sop_uid` of `study_uid` lives (ValueError for an invalid UID)."""
        _check_uid(study_uid, "Study Instance UID")
        _check_uid(sop_uid, "SOP Instance UID")
        return self.instances / study_uid / f"{sop_uid}.dcm"

    def store(self, study_uid: str, sop_uid: str, data: bytes) -> Path:
        """Write `data` durably as the instance `sop_uid` of `study_uid`; return its path.

        Replaces an earlier file of the same instance atomically. Raises ValueError for an
        invalid UID and OSError when the disk refuses (ENOSPC, EIO...) or when writing would leave
        less than `min_free_bytes` free (ENOSPC); then nothing is left under ``instances/`` and
        the temp file is removed.
        """
        final = self.path(study_uid, sop_uid)
        if self.min_free_bytes and self.free_bytes() - len(data) < self.min_free_bytes:
            raise OSError(
                errno.ENOSPC, "spool below its free-space watermark (storage.min_free_mb)"
            )
        temp = self.incoming / f"{secrets.token_hex(16)}.part"
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _FILE_MODE)
        try:
            try:
                os.fchmod(fd, _FILE_MODE)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            if _mkdir_private(final.parent):
                fsync_directory(self.instances)
            os.replace(temp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        fsync_directory(final.parent)
        return final

    def discard_partial(self) -> int:
        """Remove temp files a crash left behind; call once at start-up, before serving.

        Never acknowledged, so nothing is lost; not done in ``__init__`` because another
        process (the CLI's status command) may open the spool while the node writes.
        """
        removed = 0
        for part in self.incoming.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
                removed += 1
        return removed

    def free_bytes(self) -> int:
        """Free space on the spool's file system, in bytes."""
        return shutil.disk_usage(self.root).free
