"""Storage commitment: migration 3, the delivery's moves (committing -> sent, retried, failed),
retention never purging a study whose results await commitment, and the SCP's handling of
N-EVENT-REPORTs (role selection, only transactions the node issued, only from allowed callers)."""

from __future__ import annotations

import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role
from pynetdicom.association import Association

from dicomnode import migrations
from dicomnode.audit import read_events
from dicomnode.commitment import (
    STORAGE_COMMITMENT_INSTANCE,
    STORAGE_COMMITMENT_PUSH_MODEL,
    parse_report,
    request_dataset,
)
from dicomnode.commitment_queue import Reference
from dicomnode.completeness import CompletenessParams
from dicomnode.config import (
    AccessSection,
    AllowedCaller,
    Config,
    ConfigError,
    Destination,
    FieldError,
    load_config,
    with_overrides,
)
from dicomnode.health import NodeCollector
from dicomnode.migrations import CURRENT_VERSION, backup_path
from dicomnode.operations import format_status, status
from dicomnode.retention import PURGEABLE_STATES
from dicomnode.retry import RetryPolicy
from dicomnode.scp import start_server
from dicomnode.spool import Spool
from dicomnode.work_queue import WorkQueue
from pipeline.dicom import dimse

POLICY = RetryPolicy(initial_delay_s=30.0, max_delay_s=3600.0, give_up_after_s=600.0,
                     jitter=0.0)  # fmt: skip
PACS = "PACS@127.0.0.1:104"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.22"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
REFS = (Reference(SR_CLASS, "1.2.3.100.1"), Reference(SC_CLASS, "1.2.3.100.2"))


@pytest.fixture
def queue(tmp_path: Path) -> Iterator[WorkQueue]:
    """A queue with study 1.1 analysed and its two results due to PACS."""
    q = WorkQueue(tmp_path / "index.sqlite")
    q.record_instance(sop_uid="1.1.1", study_uid="1.1", series_uid="1.1.9",
                      sop_class_uid="1.2.840.10008.5.1.4.1.1.1", path=tmp_path / "x.dcm",
                      calling_aet="MODALITY", association_id="a1", received_at=100.0,
                      ours=False)  # fmt: skip
    q.promote_complete(1000.0, CompletenessParams(grace_seconds=2.0, quiet_seconds=30.0))
    assert q.claim(now=1000.0) is not None
    q.schedule("1.1", [PACS], [Path("sr.dcm"), Path("sc.dcm")], now=1001.0)
    yield q
    q.close()


def _sent(queue: WorkQueue, uid: str, now: float, deadline: float) -> None:
    """One attempt: claimed, every file stored, commitment requested as `uid`."""
    delivery = queue.claim_due(now, timeout_s=30.0)
    assert delivery is not None and delivery.destination == PACS
    queue.await_commitment("1.1", PACS, transaction_uid=uid, instances=REFS, now=now,
                           deadline=deadline)  # fmt: skip


def _delivery(queue: WorkQueue) -> tuple[str, int, float, str]:
    rows = queue._query("SELECT status, attempts, next_attempt_at, reason FROM deliveries")
    assert len(rows) == 1
    return rows[0][0], rows[0][1], rows[0][2], rows[0][3]


def test_migration_3_on_a_version_2_database(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    migrations.MIGRATIONS[0].apply(db)
    migrations.MIGRATIONS[1].apply(db)
    db.execute("INSERT INTO schema_version VALUES (2)")
    db.execute("INSERT INTO studies VALUES ('1.5', 'sending', 1, 2, 3, 1, 0, 4, '')")
    db.execute("INSERT INTO deliveries VALUES ('1.5', ?, 'sr.dcm', 1, NULL, 5, 'pending', '',"
               " 'done')", (PACS,))  # fmt: skip
    db.execute("COMMIT")
    db.close()

    queue = WorkQueue(path)

    check = sqlite3.connect(path)
    assert check.execute("SELECT version FROM schema_version").fetchall() == [(CURRENT_VERSION,)]
    assert check.execute("SELECT COUNT(*) FROM commitments").fetchone() == (0,)
    backup = sqlite3.connect(backup_path(path, 2))
    assert backup.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
    backup.close()
    check.close()
    assert queue.backlog() == {PACS: 1}  # the deliveries survived as they were
    assert queue.commitment_counts() == {"awaiting": 0, "committed": 0, "failed": 0,
                                         "expired": 0}  # fmt: skip
    queue.close()


def test_a_delivery_ends_only_when_the_pacs_commits(queue: WorkQueue) -> None:
    _sent(queue, "2.25.1", now=1002.0, deadline=1602.0)

    assert _delivery(queue)[:2] == ("committing", 1)
    study = queue.study("1.1")
    assert study is not None and study.state == "sending"
    assert study.state not in PURGEABLE_STATES  # retention keeps its files
    assert queue.purge_candidates(PURGEABLE_STATES, 10**9) == []
    assert queue.claim_due(1700.0, timeout_s=30.0) is None  # never sent again meanwhile
    assert queue.commitment_counts()["awaiting"] == 1

    outcome = queue.record_report("2.25.1", committed=REFS, failed=[], reported_by="PACS",
                                  now=1010.0, policy=POLICY)  # fmt: skip

    assert outcome is not None and outcome.delivery_status == "sent"
    assert outcome.commitment.status == "committed" and outcome.commitment.reported_by == "PACS"
    assert _delivery(queue)[0] == "sent"
    study = queue.study("1.1")
    assert study is not None and study.state == "done" and study.state_changed_at == 1010.0
    assert [s.study_uid for s in queue.purge_candidates(PURGEABLE_STATES, 2000.0)] == ["1.1"]
    assert queue.commitment_counts() == {"awaiting": 0, "committed": 1, "failed": 0,
                                         "expired": 0}  # fmt: skip


def test_a_report_with_failures_is_retried_with_backoff(queue: WorkQueue) -> None:
    _sent(queue, "2.25.1", now=1002.0, deadline=1602.0)

    outcome = queue.record_report("2.25.1", committed=REFS[:1],
                                  failed=[(REFS[1], "0x0112 no such object instance")],
                                  reported_by="PACS", now=1010.0, policy=POLICY)  # fmt: skip

    assert outcome is not None and outcome.delivery_status == "pending"
    assert outcome.not_committed == 1
    assert outcome.commitment.failures == "1.2.3.100.2: 0x0112 no such object instance"
    state, attempts, next_at, reason = _delivery(queue)
    assert (state, attempts, next_at) == ("pending", 1, 1040.0)  # 30 s after the first failure
    assert reason == "PACS did not commit 1 of 2 instance(s): 0x0112 no such object instance"
    assert queue.study("1.1").state == "sending"  # type: ignore[union-attr]
    assert queue.claim_due(1039.0, timeout_s=30.0) is None
    _sent(queue, "2.25.2", now=1040.0, deadline=1640.0)  # resend, then a new N-ACTION
    assert _delivery(queue)[:2] == ("committing", 2)


def test_a_report_that_leaves_instances_out_is_a_failure(queue: WorkQueue) -> None:
    _sent(queue, "2.25.1", now=1002.0, deadline=1602.0)
    outcome = queue.record_report("2.25.1", committed=REFS[:1], failed=[], reported_by="PACS",
                                  now=1010.0, policy=POLICY)  # fmt: skip
    assert outcome is not None and outcome.commitment.status == "failed"
    assert outcome.commitment.failures == "1.2.3.100.2: not in the report"


def test_no_report_by_the_deadline_retries_then_fails_the_study(queue: WorkQueue) -> None:
    _sent(queue, "2.25.1", now=1002.0, deadline=1062.0)
    assert queue.expire_commitments(1061.9, POLICY) == []

    first = queue.expire_commitments(1062.0, POLICY)

    assert [o.delivery_status for o in first] == ["pending"]
    assert first[0].commitment.status == "expired"
    reason = "PACS did not confirm storage of 2 instance(s) within 60 s"
    assert _delivery(queue) == ("pending", 1, 1092.0, reason)
    _sent(queue, "2.25.2", now=1092.0, deadline=1152.0)
    assert [o.delivery_status for o in queue.expire_commitments(1152.0, POLICY)] == ["pending"]
    _sent(queue, "2.25.3", now=1700.0, deadline=1760.0)  # past the give-up horizon (1062 + 600)

    last = queue.expire_commitments(1760.0, POLICY)

    assert [o.delivery_status for o in last] == ["failed"]
    study = queue.study("1.1")
    assert study is not None and study.state == "failed"
    assert study.reason == f"{PACS}: {reason}"
    assert queue.commitment_counts()["expired"] == 3
    assert queue.failure_reasons() == {PACS.split(":")[0]: 1}


def test_a_late_report_on_an_older_transaction_moves_nothing(queue: WorkQueue) -> None:
    _sent(queue, "2.25.1", now=1002.0, deadline=1062.0)
    queue.expire_commitments(1062.0, POLICY)
    _sent(queue, "2.25.2", now=1092.0, deadline=1152.0)

    late = queue.record_report("2.25.1", committed=REFS, failed=[], reported_by="PACS",
                               now=1100.0, policy=POLICY)  # fmt: skip

    assert late is not None and late.delivery_status is None
    assert late.commitment.status == "committed"
    assert _delivery(queue)[0] == "committing"  # still waits for 2.25.2
    assert queue.record_report("2.25.9", committed=REFS, failed=[], reported_by="PACS",
                               now=1100.0, policy=POLICY) is None  # never issued  # fmt: skip


def test_a_refused_request_is_a_failed_attempt(queue: WorkQueue) -> None:
    _sent(queue, "2.25.1", now=1002.0, deadline=1602.0)
    outcome = queue.fail_commitment("2.25.1", "PACS refused", now=1003.0, policy=POLICY)
    assert outcome is not None and outcome.delivery_status == "pending"
    assert _delivery(queue) == ("pending", 1, 1033.0, "PACS refused")


def test_request_and_report_datasets_round_trip() -> None:
    request = request_dataset("2.25.7", REFS)
    assert request.TransactionUID == "2.25.7"
    assert [(i.ReferencedSOPClassUID, i.ReferencedSOPInstanceUID)
            for i in request.ReferencedSOPSequence] == [(SR_CLASS, "1.2.3.100.1"),
                                                         (SC_CLASS, "1.2.3.100.2")]  # fmt: skip
    report = _report("2.25.7", REFS[:1], REFS[1:])
    uid, committed, failed = parse_report(report)
    assert (uid, committed) == ("2.25.7", list(REFS[:1]))
    assert failed == [(REFS[1], "0x0112 no such object instance")]
    with pytest.raises(ValueError, match="no Transaction UID"):
        parse_report(Dataset())


def test_storage_commitment_configuration(tmp_path: Path) -> None:
    assert Config().sending.commitment_timeout_seconds == 600.0
    assert Destination("PACS", "127.0.0.1", 104).storage_commitment is False
    path = tmp_path / "node.toml"
    path.write_text("[sending]\ncommitment_timeout_seconds = 0\n")
    with pytest.raises(ConfigError, match=r"'sending\.commitment_timeout_seconds' = 0"):
        load_config(path)
    path.write_text('[[destinations]]\nurl = "https://pacs.example/dicom-web"\n'
                    "storage_commitment = true\n")  # fmt: skip
    with pytest.raises(ConfigError, match=r"storage_commitment.*DIMSE destinations only"):
        load_config(path)
    with pytest.raises(FieldError):
        Destination(url="https://pacs.example/dicom-web", storage_commitment=True)
    path.write_text('[[destinations]]\nae_title = "PACS"\nhost = "10.0.0.5"\nport = 104\n'
                    "storage_commitment = true\n")  # fmt: skip
    assert load_config(path).destinations[0].storage_commitment is True


def test_status_and_metrics_show_committed_and_awaiting(queue: WorkQueue, tmp_path: Path) -> None:
    _sent(queue, "2.25.1", now=1002.0, deadline=1602.0)
    queue.record_report("2.25.1", committed=REFS, failed=[], reported_by="PACS", now=1010.0,
                        policy=POLICY)  # fmt: skip
    queue.schedule("1.1", [PACS], [Path("sr.dcm")], now=1011.0)  # a revision, sent again
    _sent(queue, "2.25.2", now=1012.0, deadline=1612.0)
    config = with_overrides(Config(), storage={"path": tmp_path})

    report = status(config)

    assert report["commitments"] == {"awaiting": 1, "committed": 1, "failed": 0, "expired": 0}
    assert "storage commitment: awaiting 1, committed 1, failed 0, expired 0" in (
        format_status(report).splitlines())  # fmt: skip
    families = {f.name: f for f in NodeCollector(queue).collect()}
    samples = {s.labels["status"]: s.value for s in families["dicomnode_storage_commitments"]
               .samples}  # fmt: skip
    assert samples == {"awaiting": 1, "committed": 1, "failed": 0, "expired": 0}
    assert "committed" in families["dicomnode_storage_commitments"].documentation


# -- the SCP: reports on a new association ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _report(uid: str, committed: tuple[Reference, ...] | list[Reference],
            failed: tuple[Reference, ...] | list[Reference] = ()) -> Dataset:  # fmt: skip
    ds = Dataset()
    ds.TransactionUID = uid
    if committed:
        ds.ReferencedSOPSequence = [_item(r) for r in committed]
    if failed:
        ds.FailedSOPSequence = [_item(r, 0x0112) for r in failed]
    return ds


def _item(ref: Reference, reason: int | None = None) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    if reason is not None:
        item.FailureReason = reason
    return item


class ReportingPacs:
    """The node's SCP with its queue (a transaction issued to PACS) and a PACS that calls it."""

    def __init__(self, tmp_path: Path, queue: WorkQueue) -> None:
        self.port = _free_port()
        allow = (AllowedCaller("PACS", ("127.0.0.1",)), AllowedCaller("OTHER", ("127.0.0.1",)))
        self.config = with_overrides(Config(), node={"port": self.port},
                                     storage={"path": tmp_path},
                                     access=AccessSection(allow=allow))  # fmt: skip
        self.queue = queue
        self.server = start_server(self.config, Spool(tmp_path / "spool"), queue)

    def associate(self, calling: str = "PACS", *, as_scp: bool = True) -> Association:
        ae = AE(ae_title=calling)
        ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
        roles = [build_role(STORAGE_COMMITMENT_PUSH_MODEL, scp_role=True)] if as_scp else []
        return ae.associate("127.0.0.1", self.port, ae_title="WRISTAI", ext_neg=roles)

    def report(self, uid: str, event_type: int = 1, calling: str = "PACS",
               committed: tuple[Reference, ...] = REFS) -> int:  # fmt: skip
        assoc = self.associate(calling)
        assert assoc.is_established
        try:
            rsp, _ = assoc.send_n_event_report(_report(uid, committed), event_type,
                                               STORAGE_COMMITMENT_PUSH_MODEL,
                                               STORAGE_COMMITMENT_INSTANCE)  # fmt: skip
            return int(rsp.Status)
        finally:
            assoc.release()


@pytest.fixture
def pacs(tmp_path: Path, queue: WorkQueue) -> Iterator[ReportingPacs]:
    peer = ReportingPacs(tmp_path / "node", queue)
    yield peer
    peer.server.shutdown()


def test_the_pacs_reports_as_scp_on_a_new_association(pacs: ReportingPacs) -> None:
    assoc = pacs.associate()
    assert assoc.is_established
    context = assoc.accepted_contexts[0]
    assert (context.as_scp, context.as_scu) == (True, False)  # role selection: the PACS is SCP
    assoc.release()
    _sent(pacs.queue, "2.25.1", now=1002.0, deadline=1602.0)

    assert pacs.report("2.25.1") == dimse.SUCCESS

    assert _delivery(pacs.queue)[0] == "sent"
    assert pacs.queue.study("1.1").state == "done"  # type: ignore[union-attr]
    events = [e for e in read_events(pacs.config.audit_path) if e["event"] == "result-committed"]
    assert len(events) == 1 and events[0]["transaction_uid"] == "2.25.1"
    assert events[0]["outcome"] == "sent" and events[0]["instances"] == 2


def test_the_scp_refuses_reports_it_did_not_ask_for(pacs: ReportingPacs) -> None:
    _sent(pacs.queue, "2.25.1", now=1002.0, deadline=1602.0)

    assert pacs.report("2.25.999") == dimse.INVALID_ARGUMENT_VALUE  # never issued
    assert pacs.report("2.25.1", calling="OTHER") == dimse.INVALID_ARGUMENT_VALUE  # not to it
    assert pacs.report("2.25.1", event_type=5) == dimse.NO_SUCH_EVENT_TYPE

    assert _delivery(pacs.queue)[0] == "committing"
    assert pacs.queue.commitment("2.25.1").status == "awaiting"  # type: ignore[union-attr]
    rejected = pacs.associate("INTRUDER")  # the access policy applies as to any caller
    assert rejected.is_rejected


def test_a_report_with_failures_over_the_scp_retries(pacs: ReportingPacs) -> None:
    _sent(pacs.queue, "2.25.1", now=1002.0, deadline=1602.0)
    assert pacs.report("2.25.1", event_type=2, committed=REFS[:1]) == dimse.SUCCESS
    state, _, _, reason = _delivery(pacs.queue)
    assert state == "pending" and reason.startswith("PACS did not commit 1 of 2 instance(s)")
    events = [e for e in read_events(pacs.config.audit_path) if e["event"] == "commitment-failed"]
    assert len(events) == 1 and events[0]["not_committed"] == 1


def test_another_destination_done_does_not_end_a_study_awaiting_commitment(
    queue: WorkQueue,
) -> None:
    queue.set_state("1.1", "analysing")
    queue.schedule("1.1", [PACS, "ARCHIVE@127.0.0.1:105"], [Path("sr.dcm")], now=1001.0)
    _sent(queue, "2.25.1", now=1002.0, deadline=1602.0)
    archive = queue.claim_due(1002.0, timeout_s=30.0)
    assert archive is not None and archive.destination == "ARCHIVE@127.0.0.1:105"

    assert queue.record_attempt(archive, sent=True, reason="", now=1003.0, policy=POLICY) == "sent"

    assert queue.study("1.1").state == "sending"  # type: ignore[union-attr]
    queue.record_report("2.25.1", committed=REFS, failed=[], reported_by="PACS", now=1004.0,
                        policy=POLICY)  # fmt: skip
    assert queue.study("1.1").state == "done"  # type: ignore[union-attr]
