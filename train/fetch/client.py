"""The Query/Retrieve SCU: find each requested study with a Study Root C-FIND, then retrieve it
with a Study Root C-GET over the same association (the instances arrive in `storage`)."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.status import code_to_category

from pipeline.dicom import dimse
from pipeline.dicom.addresses import AeAddress
from pipeline.dicom.uids import (
    RADIOGRAPH_SOP_CLASSES,
    READABLE_TRANSFER_SYNTAXES,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    is_valid_uid,
)
from train.fetch.state import FetchState
from train.fetch.storage import StudySink, handle_store
from train.fetch.studies import (
    FetchError,
    FetchSummary,
    Outcome,
    StudyOutcome,
    StudyRequest,
)

LOGGER = logging.getLogger(__name__)

DEFAULT_CALLING_AET = "WRISTAI-TRAIN"
DEFAULT_TIMEOUT_S = 30.0

_WILDCARDS = ("*", "?", "\\")


def fetch_studies(
    pacs: AeAddress,
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
    state = FetchState.load(out)
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


# -- one request ---------------------------------------------------------------------------


def _fetch_request(
    ae: AE, pacs: AeAddress, request: StudyRequest, out: Path, state: FetchState
) -> list[StudyOutcome]:
    known = _known_studies(request, state)
    if known and all(state.is_complete(uid) for uid in known):
        return [_skipped(request, uid, state) for uid in known]

    sink = StudySink(out)
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
    pacs: AeAddress,
    request: StudyRequest,
    sink: StudySink,
    state: FetchState,
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


def _known_studies(request: StudyRequest, state: FetchState) -> list[str]:
    if request.study_instance_uid:
        return [request.study_instance_uid]
    return state.accession_studies(request.accession_number)


def _skipped(request: StudyRequest, study_uid: str, state: FetchState) -> StudyOutcome:
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
    for sop_class in RADIOGRAPH_SOP_CLASSES:
        for syntax in READABLE_TRANSFER_SYNTAXES:
            ae.add_requested_context(sop_class, syntax)
    return ae


@contextlib.contextmanager
def _association(ae: AE, pacs: AeAddress, sink: StudySink) -> Iterator[Association]:
    connected = threading.Event()

    def on_open(event: Event) -> None:
        connected.set()

    roles = [build_role(sop_class, scp_role=True) for sop_class in RADIOGRAPH_SOP_CLASSES]
    assoc = ae.associate(
        pacs.host,
        pacs.port,
        ae_title=pacs.aet,
        ext_neg=list(roles),
        evt_handlers=[(evt.EVT_C_STORE, handle_store, [sink]), (evt.EVT_CONN_OPEN, on_open)],
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


def _association_failure(assoc: Association, pacs: AeAddress, connected: bool) -> str:
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
        if not is_valid_uid(request.study_instance_uid):
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
        if code in dimse.PENDING_STATUSES:
            if identifier is None:
                continue
            study_uid = str(identifier.get("StudyInstanceUID", "") or "")
            if not is_valid_uid(study_uid):
                raise FetchError(
                    f"{request.label}: the PACS returned an unusable Study Instance UID "
                    f"{study_uid[:80]!r}."
                )
            count = identifier.get("NumberOfStudyRelatedInstances", None)
            found[study_uid] = int(count) if count not in (None, "") else None
        elif code != dimse.SUCCESS:
            raise FetchError(
                f"{request.label}: C-FIND ended with {code_to_category(code).lower()} "
                f"status 0x{code:04X}."
            )
    return list(found.items())


def _get_study(
    assoc: Association,
    sink: StudySink,
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
        if code not in dimse.PENDING_STATUSES:
            final = status
    if final is None:
        raise FetchError(f"{where}: C-GET had no final response.")
    code = int(final.Status)
    failed = int(final.get("NumberOfFailedSuboperations", 0) or 0)
    warned = int(final.get("NumberOfWarningSuboperations", 0) or 0)
    if sink.refused:
        raise FetchError(f"{where}: refused {sink.refused} instance(s) ({sink.reasons[0]}).")
    if code != dimse.SUCCESS or failed or warned:
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
