"""Delivery of a study's results to every destination: C-STORE or DICOMweb STOW-RS, each due
delivery claimed first (two workers never send the same results at once), retried with the
configured backoff, audited, and followed by a Storage Commitment request where the destination
asks for one (`dicomnode.commitment`). The worker loop (`dicomnode.worker`) calls `deliver_due`.
"""

from __future__ import annotations

import logging
import random
import ssl
import time
from pathlib import Path

from dicomnode.audit import AuditLog
from dicomnode.commitment import request_commitment
from dicomnode.config import Config, Destination
from dicomnode.retry import RetryPolicy
from dicomnode.sender import SendResult, send_files
from dicomnode.work_queue import WITHDRAWN_REASON, Delivery, WorkQueue

log = logging.getLogger("dicomnode.worker")


def retry_policy(config: Config) -> RetryPolicy:
    """The delivery retry policy from the configuration."""
    s = config.sending
    return RetryPolicy(initial_delay_s=s.initial_delay_seconds, max_delay_s=s.max_delay_seconds,
                       give_up_after_s=s.give_up_after_seconds)  # fmt: skip


def destination_key(destination: Destination) -> str:
    """How a destination is named in the queue and in status output: its url for DICOMweb,
    AET@HOST:PORT for DIMSE (the names older databases hold)."""
    if destination.url:
        return destination.url
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def deliver_due(queue: WorkQueue, destinations: dict[str, Destination], config: Config,
                policy: RetryPolicy) -> bool:  # fmt: skip
    """Attempt every delivery due now once; False when none was due. Each is claimed first:
    another worker never sends the same results at the same time."""
    now, worked = time.time(), False
    for study_uid, files in queue.withdraw_stale(now):
        for path in files:
            path.unlink(missing_ok=True)
        log.info("study %s: %s (%d unsent result(s) removed)", study_uid,
                 WITHDRAWN_REASON, len(files))  # fmt: skip
        worked = True
    while (delivery := queue.claim_due(now, config.sending.timeout_seconds)) is not None:
        _deliver(queue, delivery, destinations, config, policy)
        worked = True
    return worked


def _deliver(queue: WorkQueue, delivery: Delivery, destinations: dict[str, Destination],
             config: Config, policy: RetryPolicy) -> None:  # fmt: skip
    destination = destinations.get(delivery.destination)
    if destination is None:  # removed from the configuration since: give up at once
        queue.record_attempt(
            delivery,
            sent=False,
            reason="destination no longer configured",
            now=time.time(),
            policy=policy,
            give_up=True,
        )
        return
    started = time.time()
    tls = None
    if destination.uses_tls:
        from dicomnode.tls import TlsError, client_context

        try:
            tls = client_context(config.tls)
        except TlsError as exc:  # an unreadable certificate fails this attempt, not the worker
            log.error("study %s to %s: %s", delivery.study_uid, delivery.destination, exc)
            queue.record_attempt(delivery, sent=False, reason=str(exc), now=time.time(),
                                 policy=policy, random_unit=random.random())  # fmt: skip
            return
    result = send_results(destination, list(delivery.files), config, tls)
    queue.record_timing(delivery.study_uid, "send", time.time() - started, time.time())
    reasons = sorted({o.reason for o in result.outcomes if not o.sent})
    # Stored, yet delivered only once the PACS commits (a commitment step after the audit line).
    commit = destination.storage_commitment and bool(result.outcomes) and result.all_sent
    if commit:
        status = "committing"
    else:
        status = queue.record_attempt(delivery, sent=result.all_sent, reason="; ".join(reasons),
                                      now=time.time(), policy=policy,
                                      random_unit=random.random())  # fmt: skip
    log.info("study %s to %s: %s%s", delivery.study_uid, delivery.destination, status,
             f" ({'; '.join(reasons)})" if reasons else "")  # fmt: skip
    AuditLog(config.audit_path).record(
        "result-sent" if result.all_sent else "result-failed",
        study_uid=delivery.study_uid,
        destination=delivery.destination,
        tls=tls is not None,
        instances=sum(1 for o in result.outcomes if o.sent),
        outcome=status,
        reason="; ".join(reasons),
    )
    if commit:
        request_commitment(queue, delivery.study_uid, delivery.destination, destination,
                           result.outcomes, config, policy, tls)  # fmt: skip


def send_results(destination: Destination, files: list[Path], config: Config,
                 tls: ssl.SSLContext | None) -> SendResult:  # fmt: skip
    """Deliver `files` by the destination's protocol: STOW-RS to a DICOMweb url, else C-STORE."""
    if destination.url:
        from dicomnode.stow import store_dicomweb  # requests: only in the worker processes

        return store_dicomweb(destination, files, timeout_s=config.sending.timeout_seconds,
                              tls=tls)  # fmt: skip
    return send_files(destination, files, calling_aet=config.node.ae_title,
                      timeout_s=config.sending.timeout_seconds, tls=tls)  # fmt: skip
