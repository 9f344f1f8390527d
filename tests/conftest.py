"""Shared fixtures: one small synthetic archive for the whole session; the external tools."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from train.phantoms.archive import generate_archive


@pytest.fixture(scope="session")
def synthetic_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 small studies, seed 11: every SOP class, photometric situation and most syntaxes."""
    out = tmp_path_factory.mktemp("archive")
    generate_archive(out, studies=60, seed=11, size="small", workers=2)
    return out


# The Debian package of each external tool the tests run (`make install` installs them).
TOOL_PACKAGES = {
    "dciodvfy": "dicom3tools",
    "dcmconv": "dcmtk",
    "dsrdump": "dcmtk",
    "echoscu": "dcmtk",
    "storescp": "dcmtk",
    "storescu": "dcmtk",
    "Orthanc": "orthanc",
    "java": "default-jre-headless",
    "chromium": "chromium",
    "dcmqridx": "dcmtk",
    "Xvfb": "xvfb",
    "xdotool": "xdotool",
    "xwd": "x11-apps",
    "xwdtopnm": "netpbm",
}


def require_tool(name: str) -> str:
    """The path of external tool `name`; a missing validator or peer fails the test, it never
    skips it. Resolved outside the venv: pynetdicom installs its own `storescu`/`echoscu` there,
    and the tests mean dcmtk's."""
    venv_bin = str(Path(sys.prefix) / "bin")
    path = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and d != venv_bin
    )
    found = shutil.which(name, path=f"{path}{os.pathsep}/usr/sbin")
    if found is None:
        package = TOOL_PACKAGES.get(name, "its Debian package")
        pytest.fail(f"{name} is missing: run make install (Debian package {package})")
    return found
