"""C-STORE SCU: send result files (SR, Secondary Captures) to a destination PACS.

Network and peer problems never raise: every file gets a `FileOutcome` with the peer's status
or a one-sentence reason, so the caller can decide on retries (see `dicomnode.retry`).
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from pynetdicom import AE, evt
from pynetdicom.association import Association
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS

from dicomnode.config import Destination
from pipeline.dicom import dimse
from pipeline.dicom.uids import UNCOMPRESSED_LITTLE_ENDIAN

LOGGER = logging.getLogger(__name__)
SENT_STATUSES = frozenset({dimse.SUCCESS, *dimse.STORE_WARNINGS})
FALLBACK_SYNTAXES = UNCOMPRESSED_LITTLE_ENDIAN
MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are the odd numbers 1-255


@dataclass(frozen=True)
class FileOutcome:
    """What happened to one file; `sent` is True only for Success or a storage warning."""

    path: Path
    sop_instance_uid: str
    status: int | None
    sent: bool
    reason: str

    def __post_init__(self) -> None:
        if self.sent and self.status not in SENT_STATUSES:
            raise ValueError(f"{self.path}: status {self.status!r} cannot count as sent")

    @classmethod
    def from_status(cls, path: Path, sop_instance_uid: str, status: int) -> FileOutcome:
        """The outcome for a peer's response status, with `sent` and `reason` derived."""
        meaning = STORAGE_SERVICE_CLASS_STATUS.get(status, ("", "Unknown status"))[1]
        described = f"0x{status:04X} {meaning}"
        if status == dimse.SUCCESS:
            reason = ""
        elif status in SENT_STATUSES:
            reason = f"stored with warning {described}"
        else:
            reason = f"peer returned {described}"
        return cls(path, sop_instance_uid, status, status in SENT_STATUSES, reason)


@dataclass(frozen=True)
class SendResult:
    """The outcome of one association with one destination."""

    destination: Destination
    outcomes: tuple[FileOutcome, ...]
    connected: bool

    @property
    def all_sent(self) -> bool:
        """True when every file was stored by the peer."""
        return all(o.sent for o in self.outcomes)


@dataclass(frozen=True)
class _Header:
    path: Path
    sop_class: UID
    sop_instance: str
    syntax: UID

    def failed(self, reason: str) -> FileOutcome:
        return FileOutcome(self.path, self.sop_instance, None, False, reason)


def _read_header(path: Path) -> _Header | FileOutcome:
    """The file's SOP class, instance and transfer syntax, or the outcome saying why not."""
    try:
        ds = dcmread(path, stop_before_pixels=True)
        meta = ds.file_meta
        return _Header(path, UID(ds.SOPClassUID), ds.SOPInstanceUID, meta.TransferSyntaxUID)
    except (OSError, InvalidDicomError, AttributeError, ValueError) as exc:
        return FileOutcome(path, "", None, False, f"file cannot be read as DICOM: {exc}")


def _contexts(headers: Sequence[_Header]) -> list[tuple[UID, tuple[UID, ...]]]:
    """One context per (SOP class, syntax) pair, plus one uncompressed LE fallback per class."""
    wanted: dict[tuple[UID, tuple[UID, ...]], None] = {}
    for h in headers:
        if h.syntax not in FALLBACK_SYNTAXES:
            wanted[(h.sop_class, (h.syntax,))] = None
        wanted[(h.sop_class, FALLBACK_SYNTAXES)] = None
    if len(wanted) > MAX_CONTEXTS:
        raise ValueError(f"{len(wanted)} presentation contexts needed, over {MAX_CONTEXTS}")
    return list(wanted)


def _usable_syntax(assoc: Association, h: _Header) -> UID | None:
    """The accepted syntax to send `h` with: its own, else a convertible uncompressed one."""
    accepted = [
        c.transfer_syntax[0] for c in assoc.accepted_contexts if c.abstract_syntax == h.sop_class
    ]
    if h.syntax in accepted:
        return h.syntax
    # pynetdicom converts explicit <-> implicit LE; compressed data we decompress ourselves.
    if h.syntax.is_little_endian or h.syntax.is_compressed:
        return next((s for s in accepted if s in FALLBACK_SYNTAXES), None)
    return None


def _connect_failure(destination: Destination, timeout_s: float) -> str:
    """Name why TCP failed with one probe connect (pynetdicom only logs the OS error)."""
    where = f"{destination.host}:{destination.port}"
    try:
        with socket.create_connection((destination.host, destination.port), min(timeout_s, 5)):
            return f"connection to {where} failed, though it accepts connections now"
    except OSError as exc:  # refused, timed out, unreachable, unknown host
        return f"connection to {where} failed: {(exc.strerror or str(exc)).lower()}"


def _tls_failure(destination: Destination, timeout_s: float, tls: ssl.SSLContext) -> str | None:
    """Why a TLS connection to `destination` fails, found with one probe connection (pynetdicom
    only logs it); None when the handshake succeeds."""
    from dicomnode.tls import describe_failure

    where = f"{destination.host}:{destination.port}"
    try:
        connection = socket.create_connection((destination.host, destination.port),
                                              min(timeout_s, 5))  # fmt: skip
    except OSError as exc:  # refused, timed out, unreachable, unknown host
        return f"connection to {where} failed: {(exc.strerror or str(exc)).lower()}"
    with connection:
        try:
            secured = tls.wrap_socket(connection, server_hostname=destination.host)
        except OSError as exc:  # refused either way, or no handshake in time
            return f"TLS handshake with {where} failed: {describe_failure(exc)}"
        with secured:
            # TLS 1.3: the server's verdict on our certificate arrives after our side of the
            # handshake is done; a server that accepted it waits for an A-ASSOCIATE-RQ.
            secured.settimeout(1.0)
            try:
                secured.recv(1)
            except ssl.SSLError as exc:
                return f"TLS handshake with {where} failed: {describe_failure(exc)}"
            except OSError:
                pass
    return None


def _association_failure(
    assoc: Association,
    opened: bool,
    destination: Destination,
    timeout_s: float,
    tls: ssl.SSLContext | None = None,
) -> str:
    """One sentence on why no association was established."""
    if tls is not None and not assoc.is_rejected:
        failure = _tls_failure(destination, timeout_s, tls)
        if failure is not None:
            return failure
    if not opened:
        return _connect_failure(destination, timeout_s)
    rsp = assoc.acceptor.primitive
    if assoc.is_rejected and rsp is not None:
        return f"association rejected by PACS: {rsp.reason_str} ({rsp.result_str})"
    if assoc.rejected_contexts and not assoc.accepted_contexts:
        return "association aborted: PACS accepted none of the proposed presentation contexts"
    return f"PACS aborted the association or did not answer within {timeout_s:g} s"


def _send_one(assoc: Association, h: _Header) -> FileOutcome:
    if not assoc.is_established:
        return h.failed("association ended before this file was sent")
    syntax = _usable_syntax(assoc, h)
    if syntax is None:
        return h.failed(
            f"no presentation context accepted for SOP class {h.sop_class.name} "
            f"with transfer syntax {h.syntax.name}"
        )
    try:
        ds: Dataset = dcmread(h.path)
        if h.syntax.is_compressed and syntax != h.syntax:
            # Same instance in another transfer syntax: pydicom would otherwise mint a new UID.
            ds.decompress(generate_instance_uid=False)
        rsp: Dataset = assoc.send_c_store(ds)
    except (OSError, InvalidDicomError, ValueError, NotImplementedError, RuntimeError) as exc:
        # RuntimeError: pynetdicom's answer when the peer aborted between our check and the send.
        return h.failed(f"not sent: {exc}")
    if "Status" not in rsp:
        return h.failed("no C-STORE response from PACS (timeout or association aborted)")
    return FileOutcome.from_status(h.path, h.sop_instance, int(rsp.Status))


def send_files(
    destination: Destination,
    files: Sequence[Path],
    *,
    calling_aet: str,
    timeout_s: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> SendResult:
    """C-STORE `files` to `destination` over one association (over TLS with the `tls` context);
    never raises for network faults."""
    read = [_read_header(Path(p)) for p in files]
    headers = [h for h in read if isinstance(h, _Header)]
    ae = AE(ae_title=calling_aet)
    for sop_class, syntaxes in _contexts(headers):
        ae.add_requested_context(sop_class, list(syntaxes))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = timeout_s
    opened: list[object] = []
    on_open: list[Any] = [(evt.EVT_CONN_OPEN, opened.append)]
    connected, d = False, destination
    if headers:
        tls_args = None if tls is None else (tls, d.host)
        assoc = ae.associate(
            d.host, d.port, ae_title=d.ae_title, evt_handlers=on_open, tls_args=tls_args
        )
        connected = assoc.is_established
        if not connected:
            failure = _association_failure(assoc, bool(opened), destination, timeout_s, tls)
            read = [h.failed(failure) if isinstance(h, _Header) else h for h in read]
        try:
            read = [_send_one(assoc, h) if isinstance(h, _Header) else h for h in read]
        finally:
            if assoc.is_established:
                assoc.release()
    outcomes = tuple(o for o in read if isinstance(o, FileOutcome))
    for o in outcomes:
        status = "none" if o.status is None else f"0x{o.status:04X}"
        line = f"C-STORE {o.sop_instance_uid or o.path.name} to {destination.ae_title}: {status}"
        LOGGER.log(logging.INFO if o.sent else logging.WARNING, "%s %s", line, o.reason)
    return SendResult(destination, outcomes, connected)
