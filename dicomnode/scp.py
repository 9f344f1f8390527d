"""The node's Storage SCP: accept wrist radiographs, store them durably, index them.

Handlers are thin and never raise: they log one line (study UID, never patient data) and
return a named status from `pipeline.dicom.dimse`. Success means the instance is fsync'd in
the spool and indexed. Each association ends with one INFO line that sums it up (see
`dicomnode.association_log`), however many SOP classes the caller proposed.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from pynetdicom import AE, evt
from pynetdicom.events import Event
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]
from pynetdicom.transport import ThreadedAssociationServer

from dicomnode.access import admit, too_many
from dicomnode.association_log import AssociationLog, AssociationTally, listed, refused_contexts
from dicomnode.audit import AuditLog
from dicomnode.commitment import STORAGE_COMMITMENT_PUSH_MODEL, handle_commitment_report
from dicomnode.commitment_queue import CommitmentQueue
from dicomnode.config import Config
from dicomnode.connections import handle_conn_close, handle_plain_open, handle_tls_open, is_tls
from dicomnode.identity import MANUFACTURER, SERIES_DESCRIPTION_PREFIX
from dicomnode.index import Index
from dicomnode.spool import Spool
from dicomnode.store_checks import (
    Rejected,
    checked_pixels,
    checked_uids,
    known_elsewhere,
    read_header,
    text_value,
)
from pipeline.dicom import dimse
from pipeline.dicom.uids import (
    RADIOGRAPH_SOP_CLASSES,
    READABLE_TRANSFER_SYNTAXES,
    UNCOMPRESSED_LITTLE_ENDIAN,
    is_valid_uid,
)

if TYPE_CHECKING:
    from dicomnode.receivers import ReceiverRole

log = logging.getLogger(__name__)

MAXIMUM_PDU_SIZE = 262_144
"""Largest PDU we accept. storescu sending 40 x 1 MB instances to this SCP (spool fsync included,
4 runs each, median): 16 KiB 0.50 s, 256 KiB 0.37 s, 1 MiB 0.44 s, unlimited (0) 0.39 s.
256 KiB is as fast as any and bounds the memory one PDU may claim."""


def build_ae(config: Config) -> AE:
    """The node's application entity: Verification plus Storage of the radiograph SOP classes
    the pipeline reads, in every transfer syntax it decodes; other SOP classes are refused at
    association negotiation."""
    ae = AE(ae_title=config.node.ae_title)
    ae.add_supported_context(Verification)
    # Storage commitment reports (N-EVENT-REPORT) a PACS sends on a new association: it proposes
    # the SCP role for itself (SCP/SCU role selection, PS3.4 J.3.3); the node takes the SCU role.
    ae.add_supported_context(STORAGE_COMMITMENT_PUSH_MODEL, list(UNCOMPRESSED_LITTLE_ENDIAN),
                             scu_role=False, scp_role=True)  # fmt: skip
    for sop_class in sorted(RADIOGRAPH_SOP_CLASSES):
        ae.add_supported_context(sop_class, list(READABLE_TRANSFER_SYNTAXES))
    ae.maximum_pdu_size = MAXIMUM_PDU_SIZE
    # ACSE, DIMSE and idle-network timeout: a half-dead peer is dropped after this long.
    timeout = config.node.network_timeout_seconds
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    # Connections that never negotiate must not lock callers out: pynetdicom's own limit
    # counts them, so it is set out of reach and `handle_requested` counts established ones.
    ae.maximum_associations = 100_000
    return ae


def start_server(
    config: Config,
    spool: Spool,
    index: Index,
    audit: AuditLog | None = None,
    *,
    block: bool = False,
    receiver: ReceiverRole | None = None,
) -> ThreadedAssociationServer:
    """Listen on config.node.host:port with the storage handlers bound to `spool` and `index`,
    admitting the callers config.access allows (TLS when config.tls.enabled).

    With ``block=False`` returns the running server (stop it with ``shutdown()``). With
    `receiver`, this is one of several receiver processes on the port (dicomnode.receivers).
    """
    if receiver is None:  # one of several receivers: the service closed these before them
        index.close_open_associations(time.time())  # left open by a crash: nobody sends on them
    audit = audit or AuditLog(config.audit_path)
    associations = AssociationLog()
    elsewhere = receiver.established_elsewhere if receiver is not None else None
    handlers: list[Any] = [
        (evt.EVT_REQUESTED, handle_requested, [config, audit, elsewhere]),
        (evt.EVT_C_ECHO, handle_echo, [associations]),
        (evt.EVT_C_STORE, handle_store, [spool, index, associations]),
        (evt.EVT_ACCEPTED, handle_accepted, [index, audit, associations]),
        (evt.EVT_RELEASED, handle_closed, [index, associations]),
        (evt.EVT_ABORTED, handle_closed, [index, associations]),
    ]
    if isinstance(index, CommitmentQueue):  # the service's queue: it holds the transactions
        from dicomnode.delivery import retry_policy

        handlers.append((evt.EVT_N_EVENT_REPORT, handle_commitment_report,
                         [index, audit, retry_policy(config)]))  # fmt: skip
    address = (config.node.host, config.node.port)
    ssl_context = None
    if config.tls.enabled:
        from dicomnode.tls import server_context

        ssl_context = server_context(config.tls)
        # Not pynetdicom's ssl_context: it handshakes in the one accept loop, where a single
        # silent caller would stall every other. handle_tls_open runs per connection.
        timeout_s = config.node.network_timeout_seconds
        handlers.append((evt.EVT_CONN_OPEN, handle_tls_open, [ssl_context, timeout_s, audit]))
    else:
        timeout_s = config.node.network_timeout_seconds
        handlers.append((evt.EVT_CONN_OPEN, handle_plain_open, [timeout_s]))
        handlers.append((evt.EVT_CONN_CLOSE, handle_conn_close))
    server: ThreadedAssociationServer | None
    if receiver is not None:
        handlers += receiver.handlers()
        server = receiver.serve(build_ae(config), address, handlers)
    else:
        server = build_ae(config).start_server(address, block=block, evt_handlers=handlers)
    log.info(
        "listening as %s on %s:%d%s%s",
        config.node.ae_title,
        *address,
        " (TLS)" if ssl_context else "",
        f" (receiver process {os.getpid()})" if receiver is not None else "",
    )
    assert server is not None or block  # pynetdicom returns the server when not blocking
    return server  # type: ignore[return-value]


def association_prefix(pid: int) -> str:
    """How the ids of the associations process `pid` accepted begin."""
    return f"assoc-{pid}_"


def handle_echo(event: Event, associations: AssociationLog | None = None) -> int:
    """C-ECHO: always Success (counted in the association's summary)."""
    tally = _tally(event, associations)
    if tally is not None:
        tally.echoes += 1
    log.debug("C-ECHO from %s", event.assoc.requestor.ae_title)
    return dimse.SUCCESS


def _tally(event: Event, associations: AssociationLog | None) -> AssociationTally | None:
    try:
        return associations.get(event.assoc) if associations is not None else None
    except Exception:  # a handler never raises: without a tally it logs as it would anyway
        return None


def handle_requested(
    event: Event, config: Config, audit: AuditLog, elsewhere: Callable[[], int] | None = None
) -> None:
    """A-ASSOCIATE-RQ: reject callers the allow list refuses, and any beyond the limit
    (`elsewhere` counts the associations the node's other receiver processes hold)."""
    assoc = event.assoc
    try:
        request = cast(A_ASSOCIATE, assoc.requestor.primitive)
        calling = str(request.calling_ae_title).strip()
        called = str(request.called_ae_title).strip()
        address = str(assoc.requestor.address)
        rejection = admit(config.access, config.node.ae_title, calling, called, address)
        if rejection is None:
            established = sum(
                1 for a in assoc.ae.active_associations if a.is_acceptor and a.is_established
            ) + (elsewhere() if elsewhere is not None else 0)
            rejection = too_many(established, config.node.max_associations)
        if rejection is None:
            return
        log.warning(
            "association from %r at %s to %r rejected: %s",
            calling,
            address,
            called,
            rejection.reason,
        )
        audit.record(
            "association-rejected",
            calling_aet=calling,
            called_aet=called,
            address=address,
            reason=rejection.reason,
        )
        assoc.acse.send_reject(rejection.result, rejection.source, rejection.diagnostic)
        assoc.kill()  # as pynetdicom's own rejection: waits until the A-ASSOCIATE-RJ is out
    except Exception as exc:  # a handler must not kill the acceptor thread silently
        log.error("deciding on an association request failed: %s", type(exc).__name__)
        assoc.abort()


def handle_accepted(
    event: Event, index: Index, audit: AuditLog, associations: AssociationLog | None = None
) -> None:
    """Name the association uniquely, record it and start its tally."""
    try:
        assoc = event.assoc
        # pynetdicom names acceptor threads by the second; the index needs a unique id. The
        # process id in it lets the service close what a receiver process that died left open.
        assoc.name = f"{association_prefix(os.getpid())}{uuid.uuid4().hex[:16]}"
        calling, address = assoc.requestor.ae_title, assoc.requestor.address
        refused, classes = refused_contexts(assoc)
        if associations is not None:
            proposed = len(assoc.accepted_contexts) + len(assoc.rejected_contexts)
            tally = AssociationTally(assoc.name, calling.strip(), address, proposed=proposed,
                                     refused=refused)  # fmt: skip
            associations.open(assoc, tally)
        index.association_opened(assoc.name, calling, address, time.time())
        # The summary at release says how many contexts were refused and why; which ones only
        # here, at DEBUG, in one bounded line.
        log.debug("association %s from %s at %s accepted%s", assoc.name, calling, address,
                  f"; refused: {listed(classes)}" if classes else "")  # fmt: skip
        audit.record(
            "association-accepted",
            association=assoc.name,
            calling_aet=calling.strip(),
            called_aet=assoc.acceptor.ae_title.strip(),
            address=address,
            tls=is_tls(assoc),
        )
    except Exception as exc:
        log.error("recording an accepted association failed: %s", type(exc).__name__)


def handle_closed(event: Event, index: Index, associations: AssociationLog | None = None) -> None:
    """Record a released or aborted association (its studies start their grace period) and
    log its one summary line."""
    try:
        released = event.event is evt.EVT_RELEASED
        tally = associations.close(event.assoc) if associations is not None else None
        index.association_closed(event.assoc.name, time.time(), released=released)
        if tally is not None:
            log.info("%s", tally.summary(released=released))
        else:
            log.info("association %s %s", event.assoc.name, "released" if released else "aborted")
    except Exception as exc:
        log.error("recording a closed association failed: %s", type(exc).__name__)


def handle_store(
    event: Event, spool: Spool, index: Index, associations: AssociationLog | None = None
) -> int:
    """C-STORE: write the instance as received to the spool, index it, then answer Success.

    First the header is checked, cheaply and without decoding pixels: parseable and whole
    (`read_header`), UIDs valid and matching the request (`checked_uids`), a pixel
    description that can be true (`checked_pixels`), a SOP Instance UID no other study holds
    (`known_elsewhere`). Never raises; every failure is one log line and a named status (see
    `pipeline.dicom.dimse`); the log quotes validated UIDs only, never a raw value or patient data.
    With `associations`, the outcome counts in the association's summary and its problem lines
    are bounded (see `dicomnode.association_log`).
    """
    tally = _tally(event, associations)
    status, study_uid = _store(event, spool, index, tally)
    if tally is not None:
        tally.record_store(status, study_uid)
    return status


def _store(
    event: Event, spool: Spool, index: Index, tally: AssociationTally | None
) -> tuple[int, str]:
    """`handle_store`'s work: the status and the study UID (as safe to log)."""

    def level(wanted: int) -> int:
        return tally.problem_level(wanted) if tally is not None else wanted

    study_uid = "unknown"
    try:
        header = read_header(event)
        study_uid = text_value(header.dataset, "StudyInstanceUID")
        if not is_valid_uid(study_uid):
            study_uid = "(invalid)"  # an invalid UID may hold anything: never log it
        sop_uid, series_uid, sop_class = checked_uids(event, header.dataset)
        checked_pixels(header, event.context.transfer_syntax)
        known_elsewhere(index, sop_uid, study_uid)
        ours = text_value(header.dataset, "Manufacturer") == MANUFACTURER or text_value(
            header.dataset, "SeriesDescription"
        ).startswith(SERIES_DESCRIPTION_PREFIX)
        with index.study_lock(study_uid):  # a retention purge of the study waits, and vice versa
            path = spool.store(study_uid, sop_uid, event.encoded_dataset())
            duplicate = index.record_instance(
                sop_uid=sop_uid,
                study_uid=study_uid,
                series_uid=series_uid,
                sop_class_uid=sop_class,
                path=path,
                calling_aet=event.assoc.requestor.ae_title,
                association_id=event.assoc.name,
                received_at=time.time(),
                ours=ours,
            )
    except Rejected as exc:
        log.log(level(logging.WARNING), "C-STORE refused, study %s: %s", study_uid, exc)
        return exc.status, study_uid
    except OSError as exc:
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        log.log(level(logging.ERROR), "C-STORE failed, study %s: spool write: %s", study_uid,
                exc.strerror or exc)  # fmt: skip
        return dimse.OUT_OF_RESOURCES if full else dimse.PROCESSING_FAILURE, study_uid
    except sqlite3.OperationalError as exc:
        # The index's disk is full too: as transient as a full spool (the file is not indexed,
        # the caller sends it again later); other database errors are processing failures.
        full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        log.log(level(logging.ERROR), "C-STORE failed, study %s: index write: %s", study_uid, exc)
        return dimse.OUT_OF_RESOURCES if full else dimse.PROCESSING_FAILURE, study_uid
    except Exception as exc:
        # The exception's message may quote dataset values (patient data): log its type only.
        log.log(level(logging.ERROR), "C-STORE failed, study %s: %s", study_uid,
                type(exc).__name__)  # fmt: skip
        log.debug("C-STORE failure detail", exc_info=True)
        return dimse.PROCESSING_FAILURE, study_uid
    log.debug(
        "stored study %s instance %s%s%s",
        study_uid,
        sop_uid,
        " (duplicate)" if duplicate else "",
        " (our own result)" if ours else "",
    )
    return dimse.SUCCESS, study_uid
