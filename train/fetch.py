"""`dicomnode-train fetch`: pull the archived studies to train on from a PACS (C-FIND + C-GET).

Each study is found by accession number (or Study Instance UID) with a Study Root C-FIND, then
retrieved with a Study Root C-GET over the same association; every instance is written
atomically to ``ARCHIVE/dicom/<StudyInstanceUID>/<SOPInstanceUID>.dcm`` exactly as the PACS
encoded it. ``ARCHIVE/fetch_state.json`` records the completed studies, so a rerun fetches only
what is missing.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import enum
import json
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from pydicom import uid as uids
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.status import code_to_category
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

LOGGER = logging.getLogger(__name__)

DEFAULT_CALLING_AET = "WRISTAI-TRAIN"
DEFAULT_TIMEOUT_S = 30.0
STATE_FILE = "fetch_state.json"
STATE_VERSION = 1

# DIMSE status codes (PS3.4 C.4.1.1.4, C.4.3.1.4, B.2.3); the one place they are spelt in hex.
SUCCESS = 0x0000
PENDING = 0xFF00
PENDING_WITH_WARNINGS = 0xFF01
STORE_OUT_OF_RESOURCES = 0xA700
STORE_CANNOT_UNDERSTAND = 0xC000
PENDING_STATUSES = frozenset({PENDING, PENDING_WITH_WARNINGS})

# pynetdicom.sop_class builds these at import time, invisible to a type checker (PS3.4 C.6.2).
STUDY_ROOT_FIND = uids.UID("1.2.840.10008.5.1.4.1.2.2.1")
STUDY_ROOT_GET = uids.UID("1.2.840.10008.5.1.4.1.2.2.3")

STORAGE_SOP_CLASSES: tuple[uids.UID, ...] = (
    uids.ComputedRadiographyImageStorage,
    uids.DigitalXRayImageStorageForPresentation,
    uids.DigitalXRayImageStorageForProcessing,
    uids.SecondaryCaptureImageStorage,
)
ACCEPTED_TRANSFER_SYNTAXES: tuple[uids.UID, ...] = (
    uids.ExplicitVRLittleEndian,
    uids.ImplicitVRLittleEndian,
    uids.ExplicitVRBigEndian,
    uids.DeflatedExplicitVRLittleEndian,
    uids.JPEGBaseline8Bit,
    uids.JPEGExtended12Bit,
    uids.JPEGLossless,
    uids.JPEGLosslessSV1,
    uids.JPEGLSLossless,
    uids.JPEGLSNearLossless,
    uids.JPEG2000Lossless,
    uids.JPEG2000,
    uids.RLELossless,
)

_UID_PATTERN = re.compile(r"[0-9]+(\.[0-9]+)*")
_MAX_UID_LENGTH = 64
_AET_PATTERN = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")  # printable ASCII without backslash
_WILDCARDS = ("*", "?", "\\")


class Outcome(enum.StrEnum):
    """What happened to one study."""

    FETCHED = "fetched"
    SKIPPED = "skipped"
    NOT_FOUND = "not found"
    FAILED = "failed"


@dataclass(frozen=True)
class PacsAddress:
    """A remote Application Entity: AE title, host and port."""

    aet: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> PacsAddress:
        """Parse ``AET@HOST:PORT``; ValueError with a specific message otherwise."""
        aet, at, rest = text.partition("@")
        host, colon, port_text = rest.rpartition(":")
        if not at or not colon or not host:
            raise ValueError(f"PACS address {text!r} is not of the form AET@HOST:PORT")
        if not _AET_PATTERN.fullmatch(aet) or not aet.strip():
            raise ValueError(f"PACS AE title {aet!r} must be 1-16 printable ASCII characters")
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"PACS port {port_text!r} is not a number from 1 to 65535")
        return cls(aet=aet, host=host.strip("[]"), port=int(port_text))

    def __str__(self) -> str:
        return f"{self.aet}@{self.host}:{self.port}"


@dataclass(frozen=True)
class StudyRequest:
    """One line of the accessions list: an accession number, a Study Instance UID, or both."""

    accession_number: str = ""
    study_instance_uid: str = ""

    @property
    def label(self) -> str:
        """How logs name this request (never a patient identifier)."""
        if self.accession_number:
            return f"accession {self.accession_number}"
        return f"study {self.study_instance_uid}"


@dataclass(frozen=True)
class StudyOutcome:
    """The result for one study (or for a request that found no study)."""

    request: StudyRequest
    study_instance_uid: str
    outcome: Outcome
    instances: int = 0
    message: str = ""


@dataclass(frozen=True)
class FetchSummary:
    """Counts over a fetch run, with every study's outcome."""

    fetched: int
    skipped: int
    not_found: int
    failed: int
    instances: int
    outcomes: tuple[StudyOutcome, ...] = field(default=(), repr=False)

    @classmethod
    def of(cls, outcomes: Sequence[StudyOutcome]) -> FetchSummary:
        """Summarise a list of outcomes."""

        def count(kind: Outcome) -> int:
            return sum(1 for o in outcomes if o.outcome is kind)

        return cls(
            fetched=count(Outcome.FETCHED),
            skipped=count(Outcome.SKIPPED),
            not_found=count(Outcome.NOT_FOUND),
            failed=count(Outcome.FAILED),
            instances=sum(o.instances for o in outcomes if o.outcome is Outcome.FETCHED),
            outcomes=tuple(outcomes),
        )

    @property
    def ok(self) -> bool:
        """Whether every requested study was found and is now complete in the archive."""
        return self.failed == 0 and self.not_found == 0

    def line(self) -> str:
        """The one-line summary the command prints."""
        return (
            f"fetch: {self.fetched} studies fetched, {self.skipped} skipped, "
            f"{self.not_found} not found, {self.failed} failed; {self.instances} instances"
        )


class FetchError(Exception):
    """A study could not be fetched; the message is one sentence for the log."""


def is_safe_uid(value: str) -> bool:
    """Whether `value` is a UID that is safe as a file name: digits and dots, <= 64 chars."""
    return len(value) <= _MAX_UID_LENGTH and _UID_PATTERN.fullmatch(value) is not None


def read_requests(path: Path) -> list[StudyRequest]:
    """The study requests of a CSV with an `accession_number` and/or `study_instance_uid`
    column, in file order, without duplicates."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        columns = set(reader.fieldnames or ())
        if not columns & {"accession_number", "study_instance_uid"}:
            raise ValueError(
                f"{path} has no 'accession_number' or 'study_instance_uid' column "
                f"(columns: {', '.join(sorted(columns)) or 'none'})"
            )
        requests: dict[StudyRequest, None] = {}
        for row in reader:
            request = StudyRequest(
                accession_number=(row.get("accession_number") or "").strip(),
                study_instance_uid=(row.get("study_instance_uid") or "").strip(),
            )
            if request.accession_number or request.study_instance_uid:
                requests[request] = None
    return list(requests)


def fetch_studies(
    pacs: PacsAddress,
    accessions: Iterable[str | StudyRequest],
    out: Path,
    *,
    calling_aet: str = DEFAULT_CALLING_AET,
    timeout: float = DEFAULT_TIMEOUT_S,
    progress: Callable[[int], None] | None = None,
) -> FetchSummary:
    """Fetch every requested study from `pacs` into `out`; strings are accession numbers.

    Studies already complete in `out` are skipped; a failure is logged and the rest go on.
    """
    requests = [StudyRequest(accession_number=a) if isinstance(a, str) else a for a in accessions]
    state = _FetchState.load(out)
    ae = _build_ae(calling_aet, timeout)
    outcomes: list[StudyOutcome] = []
    for request in requests:
        try:
            outcomes.extend(_fetch_request(ae, pacs, request, out, state))
        except Exception as exc:  # one bad study must not stop the job
            LOGGER.debug("unexpected error on %s", request.label, exc_info=True)
            message = f"{request.label}: unexpected {type(exc).__name__}: {exc}."
            LOGGER.error(message)
            outcomes.append(
                StudyOutcome(request, request.study_instance_uid, Outcome.FAILED, 0, message)
            )
        if progress is not None:
            progress(1)
    return FetchSummary.of(outcomes)


def add_fetch_command(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register `fetch` on a `dicomnode-train` sub-command parser."""
    parser = commands.add_parser(
        "fetch",
        help="pull the studies to train on from a PACS (C-FIND + C-GET)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--pacs", type=_pacs_argument, required=True, metavar="AET@HOST:PORT", help="the PACS"
    )
    parser.add_argument(
        "--accessions",
        type=Path,
        required=True,
        metavar="CSV",
        help="CSV with an accession_number and/or study_instance_uid column",
    )
    parser.add_argument("--out", type=Path, required=True, metavar="ARCHIVE", help="archive")
    parser.add_argument(
        "--calling-aet",
        type=_aet_argument,
        default=DEFAULT_CALLING_AET,
        help=f"our AE title ({DEFAULT_CALLING_AET})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        metavar="S",
        help=f"network and DIMSE timeout in seconds ({DEFAULT_TIMEOUT_S:g})",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log the DICOM exchange")
    parser.set_defaults(run=run_fetch)


def run_fetch(args: argparse.Namespace) -> int:
    """Run `dicomnode-train fetch`: 0 when every requested study is in the archive, else 1."""
    verbose = bool(getattr(args, "verbose", False))
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        requests = read_requests(args.accessions)
    except (OSError, ValueError, csv.Error) as exc:
        LOGGER.error("cannot read the accessions list: %s", exc)
        return 1
    with (
        _pynetdicom_log_level(logging.WARNING if verbose else logging.CRITICAL),
        logging_redirect_tqdm(),
        tqdm(total=len(requests), unit="study", desc="fetch", disable=None) as bar,
    ):
        summary = fetch_studies(
            args.pacs,
            requests,
            args.out,
            calling_aet=args.calling_aet,
            timeout=args.timeout,
            progress=bar.update,
        )
    print(summary.line())
    return 0 if summary.ok else 1


# -- one request ---------------------------------------------------------------------------


def _fetch_request(
    ae: AE, pacs: PacsAddress, request: StudyRequest, out: Path, state: _FetchState
) -> list[StudyOutcome]:
    known = _known_studies(request, state)
    if known and all(state.is_complete(uid) for uid in known):
        return [_skipped(request, uid, state) for uid in known]

    sink = _StudySink(out)
    try:
        with _association(ae, pacs, sink) as assoc:
            outcomes = _find_and_get(assoc, pacs, request, sink, state)
    except _AssociationFailed as exc:
        return [_failed(request, request.study_instance_uid, f"{request.label}: {exc}")]
    if request.accession_number and all(
        o.outcome in (Outcome.FETCHED, Outcome.SKIPPED) for o in outcomes
    ):
        state.mark_accession(request.accession_number, [o.study_instance_uid for o in outcomes])
    return outcomes


def _find_and_get(
    assoc: Association,
    pacs: PacsAddress,
    request: StudyRequest,
    sink: _StudySink,
    state: _FetchState,
) -> list[StudyOutcome]:
    try:
        study_uids = _find_studies(assoc, request)
    except FetchError as exc:
        return [_failed(request, request.study_instance_uid, str(exc))]
    if not study_uids:
        message = f"{request.label}: not found on PACS {pacs}."
        LOGGER.warning(message)
        return [StudyOutcome(request, request.study_instance_uid, Outcome.NOT_FOUND, 0, message)]
    outcomes: list[StudyOutcome] = []
    for study_uid, expected in study_uids:
        if state.is_complete(study_uid):
            outcomes.append(_skipped(request, study_uid, state))
            continue
        try:
            instances = _get_study(assoc, sink, request, study_uid, expected)
        except FetchError as exc:
            outcomes.append(_failed(request, study_uid, str(exc)))
            continue
        state.mark_complete(study_uid, request.accession_number, instances)
        LOGGER.info("%s: study %s fetched, %d instances", request.label, study_uid, instances)
        outcomes.append(StudyOutcome(request, study_uid, Outcome.FETCHED, instances))
    return outcomes


def _known_studies(request: StudyRequest, state: _FetchState) -> list[str]:
    if request.study_instance_uid:
        return [request.study_instance_uid]
    return state.accession_studies(request.accession_number)


def _skipped(request: StudyRequest, study_uid: str, state: _FetchState) -> StudyOutcome:
    return StudyOutcome(request, study_uid, Outcome.SKIPPED, state.instances(study_uid))


def _failed(request: StudyRequest, study_uid: str, message: str) -> StudyOutcome:
    LOGGER.error(message)
    return StudyOutcome(request, study_uid, Outcome.FAILED, 0, message)


# -- DICOM network -------------------------------------------------------------------------


def _build_ae(calling_aet: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_aet)
    for timer in ("acse_timeout", "dimse_timeout", "network_timeout", "connection_timeout"):
        setattr(ae, timer, timeout)
    ae.add_requested_context(STUDY_ROOT_FIND)
    ae.add_requested_context(STUDY_ROOT_GET)
    # One context per (SOP class, transfer syntax): the PACS accepts one syntax per context,
    # so a single context listing all syntaxes would make it transcode the pixel data.
    for sop_class in STORAGE_SOP_CLASSES:
        for syntax in ACCEPTED_TRANSFER_SYNTAXES:
            ae.add_requested_context(sop_class, syntax)
    return ae


@contextlib.contextmanager
def _association(ae: AE, pacs: PacsAddress, sink: _StudySink) -> Iterator[Association]:
    connected = threading.Event()

    def on_open(event: Event) -> None:
        connected.set()

    roles = [build_role(sop_class, scp_role=True) for sop_class in STORAGE_SOP_CLASSES]
    assoc = ae.associate(
        pacs.host,
        pacs.port,
        ae_title=pacs.aet,
        ext_neg=list(roles),
        evt_handlers=[(evt.EVT_C_STORE, _handle_store, [sink]), (evt.EVT_CONN_OPEN, on_open)],
    )
    if not assoc.is_established:
        raise _AssociationFailed(_association_failure(assoc, pacs, connected.is_set()))
    try:
        yield assoc
    finally:
        if assoc.is_established:
            assoc.release()


class _AssociationFailed(FetchError):
    pass


def _association_failure(assoc: Association, pacs: PacsAddress, connected: bool) -> str:
    if assoc.is_rejected and assoc.acceptor.primitive is not None:
        answer = assoc.acceptor.primitive
        return (
            f"PACS {pacs} rejected the association "
            f"({answer.result_str}, {answer.source_str}: {answer.reason_str})."
        )
    if not connected:
        return (
            f"PACS {pacs} is unreachable: nothing accepted a connection on {pacs.host}:{pacs.port}."
        )
    return f"PACS {pacs} aborted or did not answer the association request."


def _find_studies(assoc: Association, request: StudyRequest) -> list[tuple[str, int | None]]:
    """The (Study Instance UID, number of instances if the PACS says) matching a request."""
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    if request.study_instance_uid:
        if not is_safe_uid(request.study_instance_uid):
            raise FetchError(f"{request.label}: not a valid Study Instance UID.")
        query.StudyInstanceUID = request.study_instance_uid
        query.AccessionNumber = ""
    else:
        if any(w in request.accession_number for w in _WILDCARDS):
            # C-FIND would treat them as wildcards and match other patients' studies.
            raise FetchError(f"{request.label}: contains a wildcard character, refused.")
        query.AccessionNumber = request.accession_number
        query.StudyInstanceUID = ""
    query.NumberOfStudyRelatedInstances = ""

    found: dict[str, int | None] = {}
    for status, identifier in assoc.send_c_find(query, STUDY_ROOT_FIND):
        code = _status_code(status)
        if code is None:
            raise FetchError(f"{request.label}: the PACS did not answer the C-FIND in time.")
        if code in PENDING_STATUSES:
            if identifier is None:
                continue
            study_uid = str(identifier.get("StudyInstanceUID", "") or "")
            if not is_safe_uid(study_uid):
                raise FetchError(
                    f"{request.label}: the PACS returned an unusable Study Instance UID "
                    f"{study_uid[:80]!r}."
                )
            count = identifier.get("NumberOfStudyRelatedInstances", None)
            found[study_uid] = int(count) if count not in (None, "") else None
        elif code != SUCCESS:
            raise FetchError(
                f"{request.label}: C-FIND ended with {code_to_category(code).lower()} "
                f"status 0x{code:04X}."
            )
    return list(found.items())


def _get_study(
    assoc: Association,
    sink: _StudySink,
    request: StudyRequest,
    study_uid: str,
    expected: int | None,
) -> int:
    """C-GET one study; the number of instances written. FetchError unless it is complete."""
    where = _where(request, study_uid)
    if not assoc.is_established:
        raise FetchError(f"{where}: the association was lost.")
    sink.begin(study_uid)
    query = Dataset()
    query.QueryRetrieveLevel = "STUDY"
    query.StudyInstanceUID = study_uid
    final: Dataset | None = None
    for status, _identifier in assoc.send_c_get(query, STUDY_ROOT_GET):
        code = _status_code(status)
        if code is None:
            raise FetchError(f"{where}: the PACS did not answer the C-GET in time.")
        if code not in PENDING_STATUSES:
            final = status
    if final is None:
        raise FetchError(f"{where}: C-GET had no final response.")
    code = int(final.Status)
    failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
    warned = int(final.get("NumberOfWarningSuboperations", 0) or 0)
    if sink.refused:
        raise FetchError(f"{where}: refused {sink.refused} instance(s) ({sink.reasons[0]}).")
    if code != SUCCESS or failed or warned:
        category = code_to_category(code).lower()
        raise FetchError(
            f"{where}: C-GET ended with {category} status 0x{code:04X} "
            f"({failed} failed, {warned} warning sub-operations)."
        )
    if sink.written == 0:
        raise FetchError(f"{where}: the PACS sent no instances.")
    if expected is not None and sink.written < expected:
        raise FetchError(f"{where}: received {sink.written} of {expected} instances.")
    return sink.written


def _where(request: StudyRequest, study_uid: str) -> str:
    if request.study_instance_uid == study_uid:
        return request.label
    return f"{request.label}: study {study_uid}"


def _status_code(status: Dataset) -> int | None:
    """The status code of a response; None when the exchange timed out or was aborted."""
    return int(status.Status) if "Status" in status else None


class _StudySink:
    """Where the C-STORE sub-operations of the current C-GET are written, and their tally."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._lock = threading.Lock()
        self.begin("")

    def begin(self, study_uid: str) -> None:
        with self._lock:
            self.study_uid = study_uid
            self.written = 0
            self.refused = 0
            self.reasons: list[str] = []

    def refuse(self, reason: str) -> None:
        LOGGER.warning("study %s: instance refused: %s", self.study_uid, reason)
        with self._lock:
            self.refused += 1
            self.reasons.append(reason)

    def count_written(self) -> None:
        with self._lock:
            self.written += 1


def _handle_store(event: Event, sink: _StudySink) -> int:
    """EVT_C_STORE: write the instance as encoded by the PACS; never raises."""
    try:
        sop_uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID or "")
        if not is_safe_uid(sop_uid):
            sink.refuse(f"SOP Instance UID {sop_uid[:80]!r} is not a usable UID")
            return STORE_CANNOT_UNDERSTAND
        try:
            study_uid = str(event.dataset.get("StudyInstanceUID", "") or "")
        except Exception as exc:  # a dataset pydicom cannot decode
            sink.refuse(f"instance {sop_uid} cannot be decoded: {exc}")
            return STORE_CANNOT_UNDERSTAND
        if not is_safe_uid(study_uid):
            sink.refuse(f"instance {sop_uid} has an unusable Study Instance UID")
            return STORE_CANNOT_UNDERSTAND
        if study_uid != sink.study_uid:
            sink.refuse(f"instance {sop_uid} belongs to study {study_uid}, not the one requested")
            return STORE_CANNOT_UNDERSTAND
        target = sink.out / "dicom" / study_uid / f"{sop_uid}.dcm"
        _write_atomically(target, event.encoded_dataset())
    except Exception as exc:
        sink.refuse(f"cannot write the instance: {type(exc).__name__}: {exc}")
        return STORE_OUT_OF_RESOURCES
    sink.count_written()
    return SUCCESS


# -- archive and state ---------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class _FetchState:
    """`fetch_state.json`: the completed studies, and the studies of completed accessions."""

    def __init__(self, out: Path, data: dict[str, Any]) -> None:
        self.out = out
        self.path = out / STATE_FILE
        self.studies: dict[str, dict[str, Any]] = dict(data.get("studies", {}))
        self.accessions: dict[str, list[str]] = dict(data.get("accessions", {}))

    @classmethod
    def load(cls, out: Path) -> _FetchState:
        path = out / STATE_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls(out, {})
        except (OSError, ValueError) as exc:
            LOGGER.warning("ignoring unreadable %s (everything will be fetched): %s", path, exc)
            return cls(out, {})
        if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
            LOGGER.warning("ignoring %s of an unknown version (everything will be fetched)", path)
            return cls(out, {})
        return cls(out, data)

    def is_complete(self, study_uid: str) -> bool:
        """Recorded complete, and its files are still there (someone may have removed them)."""
        entry = self.studies.get(study_uid)
        if entry is None or not is_safe_uid(study_uid):
            return False
        folder = self.out / "dicom" / study_uid
        present = sum(1 for _ in folder.glob("*.dcm")) if folder.is_dir() else 0
        return present >= int(entry.get("instances", 0))

    def instances(self, study_uid: str) -> int:
        return int(self.studies.get(study_uid, {}).get("instances", 0))

    def accession_studies(self, accession: str) -> list[str]:
        return list(self.accessions.get(accession, [])) if accession else []

    def mark_complete(self, study_uid: str, accession: str, instances: int) -> None:
        self.studies[study_uid] = {
            "accession_number": accession,
            "instances": instances,
            "completed": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self._save()

    def mark_accession(self, accession: str, study_uids: list[str]) -> None:
        if self.accessions.get(accession) != study_uids:
            self.accessions[accession] = study_uids
            self._save()

    def _save(self) -> None:
        data = {"version": STATE_VERSION, "studies": self.studies, "accessions": self.accessions}
        _write_atomically(self.path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


# -- command line --------------------------------------------------------------------------


def _pacs_argument(text: str) -> PacsAddress:
    try:
        return PacsAddress.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _aet_argument(text: str) -> str:
    if not _AET_PATTERN.fullmatch(text) or not text.strip():
        raise argparse.ArgumentTypeError(
            f"AE title {text!r} must be 1-16 printable ASCII characters"
        )
    return text


@contextlib.contextmanager
def _pynetdicom_log_level(level: int) -> Iterator[None]:
    # pynetdicom logs every failed connection itself; the command reports one sentence instead.
    logger = logging.getLogger("pynetdicom")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)
