"""The study lock (`Index.study_lock`): a store and a purge of the same study exclude each other
across processes (receivers, the retention job), and holding it leaves no descriptor open."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from dicomnode.index import Index

STUDY = "1.2.826.0.1.3680043.8.498.77"


def _hold(path: str, held: multiprocessing.synchronize.Event, seconds: float) -> None:
    index = Index(Path(path))
    with index.study_lock(STUDY):
        held.set()
        time.sleep(seconds)
    index.close()


def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_another_process_holding_the_study_lock_makes_this_one_wait(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    index = Index(path)
    context = multiprocessing.get_context("spawn")
    held = context.Event()
    child = context.Process(target=_hold, args=(str(path), held, 2.0))
    child.start()
    try:
        assert held.wait(60), "the other process never took the lock"
        started = time.monotonic()
        with index.study_lock(STUDY):
            waited = time.monotonic() - started
        assert waited > 1.0, waited  # it waited for the other process to let go
    finally:
        child.join(60)
        index.close()
    with index.study_lock("1.2.3"):  # another study, another stripe: not held by anyone
        pass


def test_holding_the_lock_for_many_studies_keeps_no_descriptor_open(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    with index.study_lock("1.0"):
        pass  # the locks folder exists from here on
    before = _open_descriptors()
    for i in range(600):  # more studies than stripes
        with index.study_lock(f"1.2.{i}"):
            pass
    assert _open_descriptors() == before
    index.close()
