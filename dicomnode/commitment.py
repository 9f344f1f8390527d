"""Storage Commitment Push Model as SCU (PS3.4 Annex J): a delivery counts once the PACS commits.

After the C-STOREs of a delivery to a destination with `storage_commitment`, the worker records
a new transaction (dicomnode.commitment_queue) and sends an N-ACTION (Action Type 1, Request
Storage Commitment) naming every instance it stored. The PACS answers with an N-EVENT-REPORT
(Event Type 1: all committed; 2: failures exist, with the Failed SOP Sequence), either on the
same association, which the worker keeps open a few seconds for it, or later on a new
association to the node's SCP (as Orthanc does), whose context the node accepts with the roles
reversed (the PACS as SCP; SCP/SCU role selection). Both paths end in `handle_commitment_report`.
Reports are accepted only for transactions the node issued, from the AE title they were sent to;
callers are admitted by the access policy like any other. Transactions that see no report by
`[sending] commitment_timeout_seconds` are retried by the worker loop (`expire_overdue`).
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, evt
from pynetdicom.dimse_primitives import N_EVENT_REPORT
from pynetdicom.events import Event
from pynetdicom.status import GENERAL_STATUS

from dicomnode.audit import AuditLog
from dicomnode.commitment_queue import CommitmentOutcome, CommitmentQueue, Reference
from dicomnode.config import Config, Destination
from dicomnode.retry import RetryPolicy
from dicomnode.sender import FileOutcome
from pipeline.dicom import dimse
from pipeline.dicom.uids import UNCOMPRESSED_LITTLE_ENDIAN

log = logging.getLogger(__name__)

STORAGE_COMMITMENT_PUSH_MODEL = "1.2.840.10008.1.20.1"
STORAGE_COMMITMENT_INSTANCE = "1.2.840.10008.1.20.1.1"
"""The well-known SOP Instance every request and report of the push model is about."""
REQUEST_STORAGE_COMMITMENT = 1
"""N-ACTION Action Type ID (PS3.4 J.3.2)."""
ALL_COMMITTED, FAILURES_EXIST = 1, 2
"""N-EVENT-REPORT Event Type IDs (PS3.4 J.3.3)."""
SAME_ASSOCIATION_WAIT_S = 5.0
"""How long the worker keeps the N-ACTION's association open for a report on it; a report
that arrives meanwhile on a new association ends the wait too."""
POLL_S = 0.05

FAILURE_REASONS = {  # PS3.3 C.14.1.1
    0x0110: "processing failure",
    0x0112: "no such object instance",
    0x0213: "resource limitation",
    0x0122: "referenced SOP class not supported",
    0x0119: "class/instance conflict",
    0x0131: "duplicate transaction UID",
}


def references_of(outcomes: Sequence[FileOutcome]) -> list[Reference]:
    """The SOP class and instance of every file stored (read from the files' headers)."""
    refs = []
    for outcome in outcomes:
        header = dcmread(outcome.path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        refs.append(Reference(str(header.SOPClassUID), outcome.sop_instance_uid))
    return refs


def request_dataset(transaction_uid: str, refs: Sequence[Reference]) -> Dataset:
    """The N-ACTION's Action Information: the Transaction UID and the Referenced SOP Sequence."""
    ds = Dataset()
    ds.TransactionUID = transaction_uid
    ds.ReferencedSOPSequence = [_item(r) for r in refs]
    return ds


def _item(ref: Reference) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ref.sop_class_uid
    item.ReferencedSOPInstanceUID = ref.sop_instance_uid
    return item


def parse_report(info: Dataset) -> tuple[str, list[Reference], list[tuple[Reference, str]]]:
    """(Transaction UID, committed, failed with the reason in words) from the Event Information
    of an N-EVENT-REPORT; ValueError when it has no Transaction UID."""
    uid = str(info.get("TransactionUID", "") or "")
    if not uid:
        raise ValueError("no Transaction UID")
    committed = [_reference(item) for item in info.get("ReferencedSOPSequence", [])]
    failed = []
    for item in info.get("FailedSOPSequence", []):
        code = item.get("FailureReason")
        if code is None:
            reason = "failure (no reason given)"
        else:
            reason = f"0x{int(code):04X} {FAILURE_REASONS.get(int(code), 'failure')}"
        failed.append((_reference(item), reason))
    return uid, committed, failed


def _reference(item: Dataset) -> Reference:
    return Reference(str(item.get("ReferencedSOPClassUID", "")),
                     str(item.get("ReferencedSOPInstanceUID", "")))  # fmt: skip


def destination_ae_title(destination_key: str) -> str:
    """The AE title part of a destination key (``AET@HOST:PORT``)."""
    return destination_key.partition("@")[0]


def handle_commitment_report(event: Event, queue: CommitmentQueue, audit: AuditLog,
                             policy: RetryPolicy) -> tuple[int, None]:  # fmt: skip
    """N-EVENT-REPORT of the Storage Commitment Push Model, on the N-ACTION's association or a
    new one: record the outcome and answer Success; a named failure status for a report that is
    not about a transaction this node issued to the reporting AE (PS3.7 10.1.1.1.8). Never
    raises."""
    assoc = event.assoc
    peer = (assoc.acceptor if assoc.is_requestor else assoc.requestor).ae_title.strip()
    try:
        request = cast(N_EVENT_REPORT, event.request)
        if str(request.AffectedSOPInstanceUID) != STORAGE_COMMITMENT_INSTANCE:
            log.warning("storage commitment report from %s about an unknown SOP instance", peer)
            return dimse.NO_SUCH_SOP_INSTANCE, None
        event_type = int(request.EventTypeID or 0)
        if event_type not in (ALL_COMMITTED, FAILURES_EXIST):
            log.warning("storage commitment report from %s: no event type %d", peer, event_type)
            return dimse.NO_SUCH_EVENT_TYPE, None
        uid, committed, failed = parse_report(event.event_information)
        known = queue.commitment(uid)
        if known is None or destination_ae_title(known.destination) != peer:
            log.warning("storage commitment report from %s for a transaction this node did not "
                        "issue to it: refused", peer)  # fmt: skip
            return dimse.INVALID_ARGUMENT_VALUE, None
        outcome = queue.record_report(uid, committed=committed, failed=failed, reported_by=peer,
                                      now=time.time(), policy=policy,
                                      random_unit=random.random())  # fmt: skip
    except ValueError as exc:  # no Transaction UID, or Event Information that does not decode
        log.warning("storage commitment report from %s unreadable: %s", peer, exc)
        return dimse.INVALID_ARGUMENT_VALUE, None
    except Exception as exc:  # the index failed: the PACS may report again
        log.error("storage commitment report from %s not recorded: %s", peer, type(exc).__name__)
        return dimse.PROCESSING_FAILURE, None
    if outcome is not None:
        _log_and_audit(outcome, audit)
    return dimse.SUCCESS, None


def _log_and_audit(outcome: CommitmentOutcome, audit: AuditLog) -> None:
    c = outcome.commitment
    committed = c.status == "committed"
    log.log(logging.INFO if committed else logging.WARNING,
            "study %s to %s: storage commitment %s %s%s; delivery %s", c.study_uid,
            c.destination, c.transaction_uid, c.status,
            f" ({outcome.reason})" if outcome.reason else "",
            outcome.delivery_status or "unchanged (not waiting on this request)")  # fmt: skip
    audit.record(
        "result-committed" if committed else "commitment-failed",
        study_uid=c.study_uid,
        destination=c.destination,
        transaction_uid=c.transaction_uid,
        instances=len(c.instances),
        not_committed=outcome.not_committed,
        outcome=outcome.delivery_status or "superseded",
        reason=outcome.reason,
    )


def request_commitment(queue: CommitmentQueue, study_uid: str, destination_key: str,
                       destination: Destination, stored: Sequence[FileOutcome], config: Config,
                       policy: RetryPolicy, tls: ssl.SSLContext | None = None) -> str:  # fmt: skip
    """After every file of a delivery was stored: ask the PACS to commit them. Returns the
    delivery's status: committing (a report is still awaited), sent (committed), pending or
    failed (the request failed or the report listed failures: retried, or given up)."""
    audit = AuditLog(config.audit_path)
    refs = references_of(stored)
    uid = generate_uid(prefix=None)  # 2.25.<UUID>: unique without a registered root
    now = time.time()
    queue.await_commitment(
        study_uid,
        destination_key,
        transaction_uid=uid,
        instances=refs,
        now=now,
        deadline=now + config.sending.commitment_timeout_seconds,
    )
    handlers = [(evt.EVT_N_EVENT_REPORT, handle_commitment_report, [queue, audit, policy])]

    def reported() -> bool:
        current = queue.commitment(uid)
        return current is None or current.status != "awaiting"

    failure = send_request(destination, uid, refs, calling_aet=config.node.ae_title,
                           timeout_s=config.sending.timeout_seconds, tls=tls,
                           handlers=handlers, reported=reported,
                           wait_s=min(SAME_ASSOCIATION_WAIT_S,
                                      config.sending.commitment_timeout_seconds))  # fmt: skip
    if failure is not None:
        outcome = queue.fail_commitment(uid, failure, now=time.time(), policy=policy,
                                        random_unit=random.random())  # fmt: skip
        if outcome is None or outcome.commitment.status != "failed":
            return "committing"  # a report came first after all; it decided
        _log_and_audit(outcome, audit)
        return outcome.delivery_status or "committing"
    current = queue.commitment(uid)
    if current is None or current.status == "awaiting":
        log.info("study %s to %s: storage commitment %s requested for %d instance(s); the "
                 "report is awaited until the deadline", study_uid, destination_key, uid,
                 len(refs))  # fmt: skip
        return "committing"
    return "sent" if current.status == "committed" else "pending"


def send_request(destination: Destination, transaction_uid: str, refs: Sequence[Reference], *,
                 calling_aet: str, timeout_s: float, tls: ssl.SSLContext | None,
                 handlers: list[Any], reported: Callable[[], bool],
                 wait_s: float = SAME_ASSOCIATION_WAIT_S) -> str | None:  # fmt: skip
    """Send the N-ACTION, then keep the association open up to `wait_s` for a report on it
    (handled by `handlers`) unless `reported()` says one arrived; None on success, else why the
    request failed, in one sentence. Never raises for network faults."""
    ae = AE(ae_title=calling_aet)
    ae.add_requested_context(STORAGE_COMMITMENT_PUSH_MODEL, list(UNCOMPRESSED_LITTLE_ENDIAN))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    where = f"{destination.ae_title}@{destination.host}:{destination.port}"
    tls_args = None if tls is None else (tls, destination.host)
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title,
                         evt_handlers=handlers, tls_args=tls_args)  # fmt: skip
    if not assoc.is_established:
        if assoc.is_rejected:
            return f"storage commitment request: association rejected by {where}"
        if assoc.rejected_contexts and not assoc.accepted_contexts:
            return f"{where} does not support Storage Commitment Push Model"
        return f"storage commitment request: no association with {where}"
    try:
        try:
            status, _ = assoc.send_n_action(request_dataset(transaction_uid, refs),
                                            REQUEST_STORAGE_COMMITMENT,
                                            STORAGE_COMMITMENT_PUSH_MODEL,
                                            STORAGE_COMMITMENT_INSTANCE)  # fmt: skip
        except (RuntimeError, ValueError) as exc:  # aborted meanwhile, or no accepted context
            return f"storage commitment request to {where} not sent: {exc}"
        if "Status" not in status:
            return f"no N-ACTION response from {where} (timeout or association aborted)"
        code = int(status.Status)
        if code != dimse.SUCCESS:
            meaning = GENERAL_STATUS.get(code, ("", "unknown status"))[1]
            return f"{where} refused the storage commitment request: 0x{code:04X} {meaning}"
        deadline = time.monotonic() + wait_s
        while assoc.is_established and time.monotonic() < deadline and not reported():
            time.sleep(POLL_S)
        return None
    finally:
        if assoc.is_established:
            assoc.release()


def expire_overdue(queue: CommitmentQueue, config: Config, policy: RetryPolicy) -> bool:
    """The worker loop's check: transactions past their deadline with no report are failed
    attempts (retried, or given up); False when none was."""
    outcomes = queue.expire_commitments(time.time(), policy, random.random())
    if outcomes:
        audit = AuditLog(config.audit_path)
        for outcome in outcomes:
            _log_and_audit(outcome, audit)
    return bool(outcomes)
