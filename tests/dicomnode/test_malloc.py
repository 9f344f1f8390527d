"""The service bounds glibc's malloc arenas however it is started (the unit's setting, applied
in process): in itself with mallopt, in what it spawns through the environment."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dicomnode.malloc import ARENAS, bound_arenas


def test_the_bound_is_applied_here_and_inherited_by_spawned_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert bound_arenas() is True  # glibc, as on every supported system
    assert os.environ["MALLOC_ARENA_MAX"] == str(ARENAS)
    show = "import os; print(os.environ['MALLOC_ARENA_MAX'])"
    child = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True, check=True)
    assert child.stdout.strip() == str(ARENAS)


def test_an_admins_own_value_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert bound_arenas() is True
    assert os.environ["MALLOC_ARENA_MAX"] == "4"
