"""Shared fixtures: one small synthetic archive for the whole session."""

from __future__ import annotations

from pathlib import Path

import pytest

from train.phantoms.archive import generate_archive


@pytest.fixture(scope="session")
def synthetic_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 small studies, seed 11: every SOP class, photometric situation and most syntaxes."""
    out = tmp_path_factory.mktemp("archive")
    generate_archive(out, studies=60, seed=11, size="small", workers=2)
    return out
