"""The spool writes atomically and refuses unsafe UIDs; the index keeps studies right (WAL)."""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

import pytest

from dicomnode import spool as spool_module
from dicomnode.index import STUDY_STATES, Index
from dicomnode.spool import Spool

STUDY = "1.2.826.0.1.3680043.8.498.1"
SOP = "1.2.826.0.1.3680043.8.498.1.1"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_writes_final_file_private_and_leaves_no_part(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    path = spool.store(STUDY, SOP, b"first")
    assert path == tmp_path / "spool" / "instances" / STUDY / f"{SOP}.dcm"
    assert path == spool.path(STUDY, SOP)
    assert path.read_bytes() == b"first"
    assert list(spool.incoming.iterdir()) == []
    assert _mode(path) == 0o600
    for directory in (spool.incoming, spool.instances, path.parent):
        assert _mode(directory) == 0o700


def test_store_replaces_the_same_instance(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.store(STUDY, SOP, b"first")
    path = spool.store(STUDY, SOP, b"second, longer")
    assert path.read_bytes() == b"second, longer"
    assert [p.name for p in path.parent.iterdir()] == [f"{SOP}.dcm"]


def test_failure_inside_the_write_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path)
    spool.store(STUDY, SOP, b"acknowledged")

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(spool_module.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        spool.store(STUDY, SOP, b"half-written replacement")
    with pytest.raises(OSError):
        spool.store(STUDY, SOP + ".2", b"new")
    monkeypatch.undo()
    assert spool.path(STUDY, SOP).read_bytes() == b"acknowledged"  # old version intact
    assert not spool.path(STUDY, SOP + ".2").exists()
    assert list(spool.incoming.iterdir()) == []


def test_discard_partial_removes_crash_leftovers(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    (spool.incoming / "abc.part").write_bytes(b"x")
    assert spool.discard_partial() == 1
    assert list(spool.incoming.iterdir()) == []


@pytest.mark.parametrize(
    "uid",
    ["../x", "1.2/3", "1.2.", ".1.2", "a.b", "1..2", "1.02", "1.2\\3", "1" * 65, "", "1.2 "],
)
def test_malicious_or_malformed_uids_are_refused(tmp_path: Path, uid: str) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(ValueError):
        spool.store(uid, SOP, b"x")
    with pytest.raises(ValueError):
        spool.store(STUDY, uid, b"x")
    assert list(spool.instances.iterdir()) == []
    assert list(spool.incoming.iterdir()) == []


def test_valid_edge_uids_are_accepted(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    assert spool.store("1.0.2", "1." + "2" * 62, b"x").exists()  # 64 chars, a "0" component


def test_free_bytes_is_positive(tmp_path: Path) -> None:
    assert Spool(tmp_path).free_bytes() > 0


# --- index ---------------------------------------------------------------------------------


def _record(index: Index, sop: str, *, study: str = STUDY, assoc: str = "a1", at: float = 100.0,
            ours: bool = False) -> bool:  # fmt: skip
    return index.record_instance(
        sop_uid=sop,
        study_uid=study,
        series_uid=study + ".9",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
        path=Path(f"/spool/{sop}.dcm"),
        calling_aet="MODALITY",
        association_id=assoc,
        received_at=at,
        ours=ours,
    )


def test_index_is_wal_and_survives_reopening(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    index.association_opened("a1", "MODALITY", "127.0.0.1", 99.0)
    assert _record(index, SOP) is False
    index.close()
    with sqlite3.connect(tmp_path / "index.sqlite") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reopened = Index(tmp_path / "index.sqlite")
    study = reopened.study(STUDY)
    assert study is not None and study.state == "receiving" and study.n_instances == 1
    assert [i.sop_uid for i in reopened.instances(STUDY)] == [SOP]
    assert reopened.instances(STUDY)[0].path == Path(f"/spool/{SOP}.dcm")


def test_duplicates_are_detected_and_counted_once(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    assert _record(index, SOP, at=100.0) is False
    assert _record(index, SOP + ".2", at=101.0) is False
    assert _record(index, SOP, at=102.0) is True
    study = index.study(STUDY)
    assert study is not None
    assert (study.n_instances, study.first_received, study.last_received) == (2, 100.0, 102.0)
    assert index.counts()["receiving"] == 1 and index.counts()["instances"] == 2


def test_states_and_revision_after_done(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    _record(index, SOP)
    for state in ("complete", "analysing", "sending", "done"):
        index.set_state(STUDY, state, reason=f"to {state}", at=200.0)
    study = index.study(STUDY)
    assert study is not None and (study.state, study.reason) == ("done", "to done")
    assert not study.needs_revision and study.state_changed_at == 200.0
    assert [s.study_uid for s in index.studies_in_state("done", "failed")] == [STUDY]
    _record(index, SOP + ".2", at=300.0)
    study = index.study(STUDY)
    assert study is not None and study.state == "receiving" and study.needs_revision
    assert study.state_changed_at == 300.0 and study.n_instances == 2
    with pytest.raises(ValueError):
        index.set_state(STUDY, "lost")
    with pytest.raises(KeyError):
        index.set_state("9.9", "done")


@pytest.mark.parametrize("resent", [False, True], ids=["another instance", "the same re-sent"])
def test_an_arrival_reopens_an_out_of_scope_study(tmp_path: Path, resent: bool) -> None:
    # The wrist view after the hand view, or the hand view re-sent with a corrected Body Part
    # Examined under its SOP Instance UID: the earlier verdict no longer covers the study.
    index = Index(tmp_path / "index.sqlite")
    _record(index, SOP, at=100.0)
    index.set_state(STUDY, "out_of_scope", reason="no wrist view to analyse", at=200.0)
    assert _record(index, SOP if resent else SOP + ".2", at=300.0) is resent
    study = index.study(STUDY)
    assert study is not None and (study.state, study.needs_revision) == ("receiving", True)
    assert (study.state_changed_at, study.last_received) == (300.0, 300.0)
    assert study.reason == "instance received after out_of_scope"
    assert study.n_instances == (1 if resent else 2)
    assert set(index.counts()) >= set(STUDY_STATES)


@pytest.mark.parametrize("state", STUDY_STATES)
def test_which_states_an_arrival_reopens(tmp_path: Path, state: str) -> None:
    index = Index(tmp_path / "index.sqlite")
    _record(index, SOP, at=100.0)
    index.set_state(STUDY, state, reason="before", at=200.0)
    _record(index, SOP + ".2", at=300.0)
    study = index.study(STUDY)
    assert study is not None
    ended = state in ("done", "failed", "out_of_scope")
    assert study.state == ("receiving" if ended else state)
    assert study.state_changed_at == (300.0 if ended else 200.0)
    # Analysis began on fewer instances: its results must be revised (see WorkQueue.schedule).
    assert study.needs_revision == (state != "receiving")


def test_our_own_results_do_not_touch_the_study(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    _record(index, SOP, at=100.0)
    index.set_state(STUDY, "done")
    index.association_opened("a2", "PACS", "10.0.0.1", 400.0)
    _record(index, SOP + ".99", assoc="a2", at=400.0, ours=True)
    index.association_closed("a2", 401.0, released=True)
    study = index.study(STUDY)
    assert study is not None and study.state == "done" and not study.needs_revision
    assert (study.n_instances, study.last_received) == (1, 100.0)
    assert [i.sop_uid for i in index.instances(STUDY)] == [SOP]
    ours = [i for i in index.instances(STUDY, include_ours=True) if i.ours]
    assert [i.sop_uid for i in ours] == [SOP + ".99"]
    assert _record(index, SOP + ".98", study="7.7", ours=True) is False
    assert index.study("7.7") is None  # only our results: nothing to analyse


def test_release_marks_only_the_studies_that_association_touched(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    other = "1.2.826.0.1.3680043.8.498.2"
    index.association_opened("a1", "MODALITY", "127.0.0.1", 1.0)
    index.association_opened("a2", "PACS", "127.0.0.2", 1.0)
    _record(index, SOP, assoc="a1")
    _record(index, "5.5.1", study=other, assoc="a2")
    index.association_closed("a1", 500.0, released=True)
    mine, theirs = index.study(STUDY), index.study(other)
    assert mine is not None and mine.released_at == 500.0
    assert theirs is not None and theirs.released_at is None
    # A study still receiving on another open association is not released by the first close.
    index.association_opened("a3", "MODALITY", "127.0.0.1", 501.0)
    _record(index, "5.5.2", study=other, assoc="a3")
    index.association_closed("a3", 502.0, released=True)
    theirs = index.study(other)
    assert theirs is not None and theirs.released_at is None
    index.association_closed("a2", 503.0, released=False)
    theirs = index.study(other)
    assert theirs is not None and theirs.released_at == 503.0
    # A new instance reopens the grace period.
    index.association_opened("a4", "MODALITY", "127.0.0.1", 600.0)
    _record(index, SOP + ".3", assoc="a4", at=600.0)
    mine = index.study(STUDY)
    assert mine is not None and mine.released_at is None


def test_associations_left_open_by_a_crash_are_closed_on_restart(tmp_path: Path) -> None:
    index = Index(tmp_path / "index.sqlite")
    index.association_opened("a1", "MODALITY", "127.0.0.1", 1.0)
    _record(index, SOP, assoc="a1")
    index.close()
    restarted = Index(tmp_path / "index.sqlite")
    assert restarted.close_open_associations(900.0) == 1
    study = restarted.study(STUDY)
    assert study is not None and study.released_at == 900.0


def test_index_file_is_usable_by_two_objects_at_once(tmp_path: Path) -> None:
    writer, reader = Index(tmp_path / "i.sqlite"), Index(tmp_path / "i.sqlite")
    _record(writer, SOP)
    assert reader.study(STUDY) is not None
    assert os.path.exists(tmp_path / "i.sqlite-wal")
