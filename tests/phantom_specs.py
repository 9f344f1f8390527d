"""A plain, fully specified synthetic wrist view for tests to vary with `dataclasses.replace`."""

from __future__ import annotations

import hashlib
from pathlib import Path

from train.phantoms.anatomy import ViewSpec

PLAIN = ViewSpec(
    body_part="wrist",
    view="PA",
    height=512,
    width=384,
    angle_deg=0.0,
    fingers_down=False,
    fracture=None,
    implant=False,
    cast=False,
    marker=None,
    ruler=False,
    frame=None,
    parts=1,
    layout="single",
    specks=0,
    exposure=1.0,
    noise=0.005,
    blur=0.5,
    heel=0.0,
)


def folder_digest(folder: Path) -> str:
    """One hash of every file's relative path and bytes under `folder` (archive equality)."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.relative_to(folder).as_posix().encode())
            h.update(path.read_bytes())
    return h.hexdigest()
