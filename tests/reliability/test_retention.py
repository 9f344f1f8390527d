"""Retention: delivered studies' files are purged a configurable age after delivery, never before.

Unit level on a real `WorkQueue` and real spool folders in tmp_path, the clock injected; then
once through the node process (`NodeProcess`) with a real Orthanc as the PACS, the retention
job on apscheduler every second and an age of 1.8 s.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from dicomnode.audit import AuditLog, read_events
from dicomnode.index import StudyRow
from dicomnode.retention import PURGEABLE_STATES, purge_delivered, study_folders
from dicomnode.spool import Spool
from dicomnode.work_queue import WorkQueue
from tests.integration.node_process import NodeProcess
from tests.integration.orthanc import OrthancServer, orthanc_available
from train.phantoms.archive import generate_archive, read_truth

DAY = 86400.0
AGE = 30 * DAY
NOW = 2_000_000_000.0
STATES_NEVER_PURGED = ("receiving", "complete", "analysing", "sending", "failed")


class Node:
    """A storage root as the service lays it out: spool, results, index, audit trail."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool = Spool(root / "spool")
        self.results = Spool(root / "results")
        self.queue = WorkQueue(root / "index.sqlite")
        self.audit = AuditLog(root / "audit.jsonl")
        self._serial = 0

    def receive(self, study_uid: str, n: int = 2, *, at: float = NOW - 2 * AGE) -> list[str]:
        """Store and index `n` instances of the study, as the receiver does."""
        sops = []
        for _ in range(n):
            self._serial += 1
            sop = f"{study_uid}.{self._serial}"
            path = self.spool.store(study_uid, sop, b"DICM" * (100 + self._serial))
            self.queue.record_instance(
                sop_uid=sop,
                study_uid=study_uid,
                series_uid=f"{study_uid}.0",
                sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                path=path,
                calling_aet="MODALITY",
                association_id="assoc-1",
                received_at=at,
                ours=False,
            )
            sops.append(sop)
        return sops

    def study(self, study_uid: str, state: str, *, at: float, results: int = 2) -> None:
        """A study with received instances and results, in `state` since `at`."""
        self.receive(study_uid)
        for i in range(results):
            self.results.store(study_uid, f"2.25.{self._serial}{i}", b"result" * 300)
        self.queue.set_state(study_uid, state, reason="test", at=at)

    def purge(self, *, now: float = NOW, age: float = AGE) -> list[str]:
        """Purge; the UIDs of the studies purged."""
        report = purge_delivered(self.queue, self.root, older_than_s=age, now=now,
                                 audit=self.audit)  # fmt: skip
        assert report.errors == ()
        return [p.study_uid for p in report.purged]

    def files(self, study_uid: str) -> list[Path]:
        """The study's files on disk: received instances and results."""
        return [p for folder in study_folders(self.root, study_uid) if folder.exists()
                for p in sorted(folder.iterdir())]  # fmt: skip

    def purge_events(self) -> list[dict[str, object]]:
        return [e for e in read_events(self.audit.path) if e["event"] == "study-purged"]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path / "node")


def test_delivered_studies_older_than_the_age_are_purged_with_one_audit_event_each(
    node: Node,
) -> None:
    node.study("1.2.1", "done", at=NOW - AGE - 1)
    node.study("1.2.2", "out_of_scope", at=NOW - 3 * AGE, results=0)
    sizes = {uid: sum(p.stat().st_size for p in node.files(uid)) for uid in ("1.2.1", "1.2.2")}
    counts = {uid: len(node.files(uid)) for uid in ("1.2.1", "1.2.2")}

    report = purge_delivered(node.queue, node.root, older_than_s=AGE, now=NOW, audit=node.audit)

    assert sorted(p.study_uid for p in report.purged) == ["1.2.1", "1.2.2"]
    assert report.bytes_removed == sum(sizes.values())
    for uid in ("1.2.1", "1.2.2"):
        assert node.files(uid) == []
        assert not any(folder.exists() for folder in study_folders(node.root, uid))
        assert node.queue.instances(uid, include_ours=True) == []
    # The study rows stay in their final state, for status; counters record the purge.
    assert node.queue.study("1.2.1").state == "done"  # type: ignore[union-attr]
    assert node.queue.study("1.2.2").state == "out_of_scope"  # type: ignore[union-attr]
    assert node.queue.counts()["instances"] == 0
    assert node.queue.received_bytes() == 0
    assert node.queue.purge_totals() == {"studies": 2, "instances": 4, "results": 2,
                                         "bytes": sum(sizes.values())}  # fmt: skip
    events = {e["study_uid"]: e for e in node.purge_events()}
    assert set(events) == {"1.2.1", "1.2.2"}
    assert events["1.2.1"]["state"] == "done"
    assert (events["1.2.1"]["instances"], events["1.2.1"]["results"]) == (2, 2)
    assert (events["1.2.2"]["instances"], events["1.2.2"]["results"]) == (2, 0)
    assert [events[uid]["bytes"] for uid in ("1.2.1", "1.2.2")] == [sizes["1.2.1"],
                                                                   sizes["1.2.2"]]  # fmt: skip
    assert counts == {"1.2.1": 4, "1.2.2": 2}
    # Audit events name the study, never patient data.
    assert set(events["1.2.1"]) == {"time", "event", "pid", "study_uid", "state", "instances",
                                    "results", "bytes"}  # fmt: skip


def test_studies_not_delivered_are_kept_however_old(node: Node) -> None:
    assert set(PURGEABLE_STATES).isdisjoint(STATES_NEVER_PURGED)
    for n, state in enumerate(STATES_NEVER_PURGED):
        node.study(f"1.3.{n}", state, at=NOW - 100 * 365 * DAY)
    before = {f"1.3.{n}": node.files(f"1.3.{n}") for n in range(len(STATES_NEVER_PURGED))}

    assert node.purge() == []

    for uid, files in before.items():
        assert node.files(uid) == files and len(files) == 4
        assert len(node.queue.instances(uid)) == 2
    assert node.purge_events() == []
    assert node.queue.purge_totals()["studies"] == 0


def test_a_delivered_study_younger_than_the_age_is_kept(node: Node) -> None:
    node.study("1.4.1", "done", at=NOW - AGE + 60)
    node.study("1.4.2", "out_of_scope", at=NOW - AGE)  # exactly the age: not older

    assert node.purge() == []
    assert len(node.files("1.4.1")) == 4 and len(node.files("1.4.2")) == 4

    assert node.purge(now=NOW + 61) == ["1.4.2", "1.4.1"]  # oldest delivery first
    assert node.files("1.4.1") == [] and node.files("1.4.2") == []


def test_a_sending_study_is_kept_until_its_delivery_then_purged_after_the_age(
    node: Node,
) -> None:
    """The real path: results scheduled for a PACS that is down, delivered later."""
    from dicomnode.retry import RetryPolicy

    node.receive("1.5.1")
    node.queue.set_state("1.5.1", "complete", at=NOW - 3 * AGE)
    assert node.queue.claim(now=NOW - 3 * AGE) is not None
    result = node.results.store("1.5.1", "2.25.51", b"sr" * 100)
    node.queue.schedule("1.5.1", ["PACS@127.0.0.1:104"], [result], NOW - 3 * AGE)
    policy = RetryPolicy(initial_delay_s=60, max_delay_s=3600, give_up_after_s=100 * DAY)
    delivery = node.queue.due(NOW)[0]
    node.queue.record_attempt(delivery, sent=False, reason="connection refused",
                              now=NOW - 2 * AGE, policy=policy)  # fmt: skip
    assert node.queue.study("1.5.1").state == "sending"  # type: ignore[union-attr]

    assert node.purge() == []
    assert len(node.files("1.5.1")) == 3

    delivered = NOW - 10.0
    node.queue.record_attempt(node.queue.due(NOW)[0], sent=True, reason="", now=delivered,
                              policy=policy)  # fmt: skip
    assert node.queue.study("1.5.1").state == "done"  # type: ignore[union-attr]
    assert node.purge() == []  # delivered 10 s ago: the age counts from delivery
    assert node.purge(now=delivered + AGE + 1) == ["1.5.1"]
    assert node.files("1.5.1") == []


def test_each_delivery_is_purged_once_and_a_reopened_study_starts_afresh(node: Node) -> None:
    node.study("1.6.1", "done", at=NOW - 2 * AGE)
    assert node.purge() == ["1.6.1"]
    assert node.purge(now=NOW + DAY) == []  # nothing twice

    # A new instance after the purge reopens the study with only what was received since.
    (new_sop,) = node.receive("1.6.1", n=1, at=NOW + DAY)
    study = node.queue.study("1.6.1")
    assert study is not None
    assert (study.state, study.n_instances) == ("receiving", 1)
    assert [i.sop_uid for i in node.queue.instances("1.6.1")] == [new_sop]
    assert node.purge(now=NOW + 3 * AGE) == []  # receiving: kept

    node.queue.set_state("1.6.1", "done", at=NOW + 2 * DAY)
    assert node.purge(now=NOW + 2 * DAY + AGE + 1) == ["1.6.1"]
    assert node.files("1.6.1") == []
    assert node.queue.purge_totals()["studies"] == 2
    assert [e["instances"] for e in node.purge_events()] == [2, 1]


class _InstanceArrivesDuringPurge(WorkQueue):
    """An instance of a listed study is indexed between the listing and its purge."""

    def __init__(self, path: Path, arrive: Callable[[], None]) -> None:
        super().__init__(path)
        self.arrive = arrive

    def purge_candidates(self, states: tuple[str, ...], changed_before: float) -> list[StudyRow]:
        candidates = super().purge_candidates(states, changed_before)
        self.arrive()
        return candidates


@pytest.mark.parametrize("state", ["done", "out_of_scope"])
def test_a_study_reopened_between_listing_and_purge_is_kept(node: Node, state: str) -> None:
    # Out of scope too: the instance that arrived may be the wrist view the study lacked.
    node.study("1.7.1", state, at=NOW - 2 * AGE)
    node.queue.close()
    arrived: list[str] = []
    node.queue = _InstanceArrivesDuringPurge(
        node.root / "index.sqlite", lambda: arrived.extend(node.receive("1.7.1", n=1, at=NOW))
    )

    assert node.purge() == []

    assert len(arrived) == 1
    assert len(node.files("1.7.1")) == 5  # 2 + 1 received, 2 results: nothing removed
    assert node.queue.study("1.7.1").state == "receiving"  # type: ignore[union-attr]
    assert len(node.queue.instances("1.7.1")) == 3


def test_a_purge_interrupted_after_removing_files_is_completed_next_run(node: Node) -> None:
    """Files go first, the index after: a crash in between leaves a study the next run ends."""
    node.study("1.8.1", "done", at=NOW - 2 * AGE)
    for folder in study_folders(node.root, "1.8.1"):
        for path in folder.iterdir():
            path.unlink()
        folder.rmdir()

    assert node.purge() == ["1.8.1"]
    assert node.queue.instances("1.8.1") == []
    assert [(e["instances"], e["results"], e["bytes"]) for e in node.purge_events()] == [(0, 0, 0)]


def _table_rows(node: Node) -> dict[str, int]:
    db = sqlite3.connect(node.root / "index.sqlite")
    try:
        return {table: db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                for table in ("studies", "deliveries", "association_studies", "associations",
                              "purged")}  # fmt: skip
    finally:
        db.close()


def test_the_index_forgets_studies_purged_long_ago_and_keeps_the_totals(node: Node) -> None:
    node.queue.association_opened("assoc-1", "MODALITY", "127.0.0.1", NOW - 3 * AGE)
    node.study("1.9.1", "done", at=NOW - 2 * AGE)  # purged at NOW, then forgotten
    node.queue.schedule("1.9.1", [], [], now=NOW - 2 * AGE)  # no-op on a done study
    node.study("1.9.2", "done", at=NOW - 2 * AGE)  # purged, then sent again: remembered
    node.study("1.9.3", "sending", at=NOW - 2 * AGE)  # never purged: remembered
    node.queue.association_closed("assoc-1", NOW - 2 * AGE, released=True)
    assert sorted(node.purge()) == ["1.9.1", "1.9.2"]
    totals = node.queue.purge_totals()
    node.receive("1.9.2", n=1, at=NOW + DAY)

    assert node.queue.forget_purged(NOW - 1) == 0  # purged too recently
    assert node.queue.forget_purged(NOW + 1) == 1
    assert node.queue.study("1.9.1") is None
    assert node.queue.study("1.9.2").state == "receiving"  # type: ignore[union-attr]
    assert node.queue.study("1.9.3").state == "sending"  # type: ignore[union-attr]
    assert node.queue.purge_totals() == totals
    # The association still names studies the index holds, so it stays too.
    assert _table_rows(node) == {"studies": 2, "deliveries": 0, "association_studies": 2,
                                 "associations": 1, "purged": 1}  # fmt: skip
    assert node.queue.counts()["done"] == 0 and node.queue.counts()["receiving"] == 1
    assert node.queue.forget_purged(NOW + 1) == 0  # nothing twice


def test_the_size_of_the_index_stays_bounded_when_studies_keep_coming(node: Node) -> None:
    """A year of a study an hour through receive, delivery, purge and forgetting: the row counts
    stop growing once the first studies are forgotten (30 days purge + 10 days forget)."""
    forget = 10 * DAY
    sizes = []
    for hour in range(24 * 120):
        now = NOW + hour * 3600.0
        uid = f"1.10.{hour}"
        node.queue.association_opened(f"a{hour}", "MODALITY", "127.0.0.1", now)
        node.queue.record_instance(sop_uid=f"{uid}.1", study_uid=uid, series_uid=f"{uid}.0",
                                   sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                                   path=node.root / "x.dcm", calling_aet="MODALITY",
                                   association_id=f"a{hour}", received_at=now,
                                   ours=False)  # fmt: skip
        node.queue.association_closed(f"a{hour}", now + 1, released=True)
        node.queue.set_state(uid, "done", at=now + 2)
        if hour % 24 == 0:
            purge_delivered(node.queue, node.root, older_than_s=AGE, now=now)
            node.queue.forget_purged(now - forget)
            sizes.append(sum(_table_rows(node).values()))
    rows_per_study = 4  # its row, its purge, its association and the link between them
    settled = sizes[len(sizes) // 2 :]
    assert max(settled) - min(settled) <= 24 * rows_per_study, settled  # flat, give or take a day
    assert max(settled) <= 24 * (30 + 10 + 1) * rows_per_study  # what retention keeps
    assert sizes[-1] < sizes[0] + 24 * 120 * rows_per_study / 2  # far below a year's worth


def test_a_zero_or_negative_age_is_refused(node: Node) -> None:
    with pytest.raises(ValueError, match="positive"):
        purge_delivered(node.queue, node.root, older_than_s=0, now=NOW)


# -- through the node process -----------------------------------------------------------------

PURGE_AFTER_HOURS = 0.0005  # 1.8 s
WAIT_S = 120.0


def _wait_for(predicate: Callable[[], object], what: str, node: NodeProcess,
              timeout: float = WAIT_S) -> None:  # fmt: skip
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}\n{node.log()[-4000:]}")


def _state(node: NodeProcess, study_uid: str) -> str | None:
    with closing(sqlite3.connect(node.index_path, timeout=30)) as db:
        row = db.execute("SELECT state FROM studies WHERE study_uid = ?", (study_uid,)).fetchone()
    return None if row is None else str(row[0])


def _purged(node: NodeProcess) -> set[str]:
    return {str(e["study_uid"]) for e in read_events(node.audit_path)
            if e["event"] == "study-purged"}  # fmt: skip


@pytest.mark.integration
def test_the_node_purges_delivered_studies_on_schedule_and_keeps_undelivered_ones(
    tmp_path: Path,
) -> None:
    if not orthanc_available():
        pytest.fail("Orthanc is not installed: `make install` installs it (Debian package orthanc)")
    archive = tmp_path / "archive"
    generate_archive(archive, studies=2, seed=5, size="small", workers=1,
                     syntaxes=("explicit_le",))  # fmt: skip
    studies: dict[str, list[Path]] = {}
    for row in read_truth(archive):
        if not row["corrupt"]:
            studies.setdefault(row["study_instance_uid"], []).append(archive / row["path"])
    (first, first_files), (second, second_files) = sorted(studies.items())
    pacs = OrthancServer(tmp_path / "orthanc").start()
    node = NodeProcess(
        tmp_path,
        destinations=[{"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}],
        retention={"purge_after_hours": PURGE_AFTER_HOURS, "check_interval_seconds": 1.0},
    )
    try:
        node.start()
        sent = node.storescu(first_files)
        assert sent.returncode == 0, sent.stderr
        _wait_for(lambda: first in _purged(node), "the first study to be delivered and purged",
                  node)  # fmt: skip
        assert _state(node, first) == "done"
        assert pacs.study_count() == 1  # delivered before purged
        spool_folder, results_folder = study_folders(node.storage, first)
        assert not spool_folder.exists() and not results_folder.exists()
        event = next(e for e in read_events(node.audit_path)
                     if e["event"] == "study-purged" and e["study_uid"] == first)  # fmt: skip
        assert event["instances"] == len(first_files)
        assert event["results"] >= 2  # the SR and at least one Secondary Capture
        assert event["bytes"] > 0

        pacs.stop()  # the PACS goes down: the second study's results cannot be delivered
        sent = node.storescu(second_files)
        assert sent.returncode == 0, sent.stderr
        _wait_for(lambda: _state(node, second) == "sending", "the second study to be sending",
                  node)  # fmt: skip
        # Several retention runs, each finding the study older than the age: it stays.
        time.sleep(5 * PURGE_AFTER_HOURS * 3600)
        assert _state(node, second) == "sending"
        assert second not in _purged(node)
        spool_folder, results_folder = study_folders(node.storage, second)
        assert len(list(spool_folder.glob("*.dcm"))) == len(second_files)
        assert len(list(results_folder.glob("*.dcm"))) >= 2
    finally:
        node.stop()
        pacs.stop()
