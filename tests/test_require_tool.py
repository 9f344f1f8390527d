"""A missing validator or peer fails the test that needs it, with how to install it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.conftest import require_tool


def test_a_missing_tool_fails_instead_of_skipping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match=r"dciodvfy is missing: run make install"):
        require_tool("dciodvfy")


def test_the_venv_copy_of_a_dcmtk_tool_is_not_taken(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    venv_bin = Path(sys.prefix) / "bin"  # where pynetdicom puts its own storescu
    assert (venv_bin / "storescu").exists()
    monkeypatch.setenv("PATH", f"{venv_bin}:{tmp_path}")
    (tmp_path / "storescu").write_text("#!/bin/sh\n")
    (tmp_path / "storescu").chmod(0o755)
    assert require_tool("storescu") == str(tmp_path / "storescu")
