"""STOW-RS user agent: send result files to a DICOMweb destination (PS3.18 10.5).

The DICOMweb twin of `dicomnode.sender`: the same `SendResult`, so retries, leases, the audit
trail and `dicomnode resend` work alike for both kinds of destination. Each study's files go in
one multipart POST to ``{url}/studies`` (more than one past `MAX_REQUEST_BYTES`); the server's
Store Instances Response says per instance whether it was stored (Referenced SOP Sequence,
perhaps with a Warning Reason) or not (Failed SOP Sequence with a Failure Reason). Network and
peer problems never raise: an HTTP error, a refused connection or a timeout marks every file of
the request not sent with a one-sentence reason.
"""

from __future__ import annotations

import logging
import ssl
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from dicomweb_client import DICOMwebClient
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pynetdicom.status import STORAGE_SERVICE_CLASS_STATUS
from requests.adapters import HTTPAdapter

from dicomnode.config import Destination
from dicomnode.credentials import CredentialsError, read_credentials
from dicomnode.sender import SENT_STATUSES, FileOutcome, SendResult
from pipeline.dicom import dimse

LOGGER = logging.getLogger(__name__)
MAX_REQUEST_BYTES = 64 * 2**20
"""A study's files go in one POST up to this many bytes (a larger single file goes alone)."""
DICOM_JSON = "application/dicom+json"


@dataclass(frozen=True)
class _Instance:
    path: Path
    dataset: Dataset
    study_uid: str
    sop_instance_uid: str
    size: int

    def failed(self, reason: str) -> FileOutcome:
        return FileOutcome(self.path, self.sop_instance_uid, None, False, reason)


def store_dicomweb(
    destination: Destination,
    paths: Sequence[Path],
    *,
    timeout_s: float = 30.0,
    tls: ssl.SSLContext | None = None,
) -> SendResult:
    """STOW-RS `paths` to `destination.url`; https with the `tls` context (else the system's
    trust store). Never raises for network or peer faults."""
    read = [_read(Path(p)) for p in paths]
    instances = [r for r in read if isinstance(r, _Instance)]
    results: dict[int, FileOutcome] = {}
    connected = False
    if instances:
        try:
            peer = _connect(destination, timeout_s, tls)
        except (CredentialsError, ValueError) as exc:  # ValueError: a URL the client refuses
            results = {id(i): i.failed(f"not sent: {exc}") for i in instances}
        else:
            for chunk in _chunks(instances):
                outcomes, answered = _post(peer, chunk, destination, timeout_s)
                connected = connected or answered
                results.update((id(i), o) for i, o in zip(chunk, outcomes, strict=True))
    ordered = tuple(results[id(r)] if isinstance(r, _Instance) else r for r in read)
    for o in ordered:
        status = "none" if o.status is None else f"0x{o.status:04X}"
        line = f"STOW-RS {o.sop_instance_uid or o.path.name} to {destination.url}: {status}"
        LOGGER.log(logging.INFO if o.sent else logging.WARNING, "%s %s", line, o.reason)
    return SendResult(destination, ordered, connected)


def outcomes_from_response(
    response: Dataset, sent: Sequence[tuple[Path, str]], *, unlisted: str
) -> list[FileOutcome]:
    """Per-file outcomes from a Store Instances Response for the (path, SOP Instance UID) pairs
    of one request; a file the response does not name is not sent, for reason `unlisted`."""
    stored = {str(i.get("ReferencedSOPInstanceUID", "")): i
              for i in response.get("ReferencedSOPSequence", [])}  # fmt: skip
    failed = {str(i.get("ReferencedSOPInstanceUID", "")): i
              for i in response.get("FailedSOPSequence", [])}  # fmt: skip
    outcomes = []
    for path, uid in sent:
        if uid in failed:
            outcomes.append(_refused(path, uid, failed[uid].get("FailureReason")))
        elif uid in stored:
            outcomes.append(_stored(path, uid, stored[uid].get("WarningReason")))
        else:
            outcomes.append(FileOutcome(path, uid, None, False, unlisted))
    return outcomes


def _refused(path: Path, uid: str, code: Any) -> FileOutcome:
    if code is None:
        return FileOutcome(path, uid, None, False, "DICOMweb server refused it (no reason given)")
    meaning = STORAGE_SERVICE_CLASS_STATUS.get(int(code), ("", "unknown failure reason"))[1]
    reason = f"DICOMweb server refused it: 0x{int(code):04X} {meaning}"
    return FileOutcome(path, uid, int(code), False, reason)


def _stored(path: Path, uid: str, warning: Any) -> FileOutcome:
    if warning is None or int(warning) == dimse.SUCCESS:
        return FileOutcome(path, uid, dimse.SUCCESS, True, "")
    if int(warning) in SENT_STATUSES:
        return FileOutcome.from_status(path, uid, int(warning))
    # A warning code outside the Storage Service Class's: stored all the same (PS3.18 10.5.3).
    return FileOutcome(path, uid, dimse.SUCCESS, True, f"stored with warning 0x{int(warning):04X}")


def _read(path: Path) -> _Instance | FileOutcome:
    """The file's dataset and the UIDs the request and the response need, or why not."""
    try:
        ds = dcmread(path)
        return _Instance(path, ds, str(ds.StudyInstanceUID), str(ds.SOPInstanceUID),
                         path.stat().st_size)  # fmt: skip
    except (OSError, InvalidDicomError, AttributeError, ValueError) as exc:
        return FileOutcome(path, "", None, False, f"file cannot be read as DICOM: {exc}")


def _chunks(instances: Sequence[_Instance]) -> Iterator[list[_Instance]]:
    """One request per study, split past MAX_REQUEST_BYTES; first-seen order."""
    studies: dict[str, list[_Instance]] = {}
    for instance in instances:
        studies.setdefault(instance.study_uid, []).append(instance)
    for members in studies.values():
        chunk: list[_Instance] = []
        for instance in members:
            if chunk and sum(i.size for i in chunk) + instance.size > MAX_REQUEST_BYTES:
                yield chunk
                chunk = []
            chunk.append(instance)
        yield chunk


def _post(peer: _Peer, chunk: list[_Instance], destination: Destination,
          timeout_s: float) -> tuple[list[FileOutcome], bool]:  # fmt: skip
    """POST one chunk; its files' outcomes, and whether the server answered at all."""
    sent = [(i.path, i.sop_instance_uid) for i in chunk]
    # One body, never chunked transfer encoding, which not every server reads.
    peer.client.set_chunk_size(sum(i.size for i in chunk) + 2**20)
    try:
        response = peer.client.store_instances([i.dataset for i in chunk])
    except requests.HTTPError as exc:
        reason = _http_reason(exc.response)
        body = _response_dataset(exc.response)
        if body is None:
            return [i.failed(reason) for i in chunk], True
        return outcomes_from_response(body, sent, unlisted=reason), True
    except requests.RequestException as exc:
        reason = _network_reason(exc, destination, timeout_s)
        return [i.failed(reason) for i in chunk], False
    except (ValueError, KeyError, TypeError) as exc:  # a 2xx answer that is no STOW-RS response
        reason = f"DICOMweb server sent a response that cannot be read ({exc})"
        return [i.failed(reason) for i in chunk], True
    if "ReferencedSOPSequence" not in response and "FailedSOPSequence" not in response:
        # Nothing confirms the storage (a web page, an empty body): not counted as sent.
        answer = _last_answer(peer.answers)
        reason = f"DICOMweb server answered {answer} without a Store Instances Response"
        return [i.failed(reason) for i in chunk], True
    unlisted = "DICOMweb server did not list it in its STOW-RS response"
    return outcomes_from_response(response, sent, unlisted=unlisted), True


def _last_answer(answers: list[requests.Response]) -> str:
    """'HTTP 200 OK (text/html)' for the last of `answers`."""
    if not answers:
        return "an unknown response"
    last = answers[-1]
    media = last.headers.get("Content-Type", "") or "no content type"
    return f"HTTP {last.status_code} {last.reason} ({media})"


def _http_reason(response: requests.Response | None) -> str:
    if response is None:
        return "DICOMweb server answered with an HTTP error"
    reason = f"DICOMweb server answered HTTP {response.status_code} {response.reason}".rstrip()
    if response.status_code in (401, 403):
        return f"{reason}: credentials missing or refused (see the destination's credentials_file)"
    if response.status_code in (404, 405):
        return f"{reason}: is the url the DICOMweb service's base (e.g. .../dicom-web)?"
    return reason


def _response_dataset(response: requests.Response | None) -> Dataset | None:
    """The Store Instances Response an HTTP error may carry (409 Conflict: all failed)."""
    if response is None or not response.content:
        return None
    media = response.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if media not in (DICOM_JSON, "application/json"):
        return None
    try:
        body = response.json()
        return Dataset.from_json(body[0] if isinstance(body, list) and body else body)
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def _network_reason(exc: requests.RequestException, destination: Destination,
                    timeout_s: float) -> str:  # fmt: skip
    """One sentence on why no HTTP answer came: refused, timed out, TLS, unknown host."""
    from dicomnode.tls import describe_failure

    where = urllib.parse.urlsplit(destination.url).netloc
    if isinstance(exc, requests.ConnectTimeout):
        return f"connection to {where} failed: no answer within {timeout_s:g} s"
    if isinstance(exc, requests.ReadTimeout):
        return f"DICOMweb server at {where} did not answer within {timeout_s:g} s"
    cause = _root_cause(exc)
    if isinstance(cause, ssl.SSLEOFError):  # TLS 1.3: a refusal may come as a bare close
        return (f"TLS handshake with {where} failed: the server closed the connection (does it "
                "refuse the client certificate, or its absence?)")  # fmt: skip
    if isinstance(cause, ssl.SSLError):
        return f"TLS handshake with {where} failed: {describe_failure(cause)}"
    if isinstance(cause, OSError):
        return f"connection to {where} failed: {(cause.strerror or str(cause)).lower()}"
    return f"connection to {where} failed: {type(exc).__name__}"


def _root_cause(exc: BaseException) -> BaseException | None:
    """The OS or TLS error under requests' and urllib3's wrappers (TLS first, it says more)."""
    seen: list[BaseException] = []
    pending: list[BaseException] = [exc]
    while pending:
        current = pending.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None),
                  *current.args]  # fmt: skip
        pending += [e for e in linked if isinstance(e, BaseException)]
    tls = [e for e in seen if isinstance(e, ssl.SSLError)]
    if tls:
        return tls[0]
    return next((e for e in seen if isinstance(e, OSError) and e.strerror), None)


class _ContextAdapter(HTTPAdapter):
    """https with the node's TLS context (`dicomnode.tls.client_context`: the [tls] CA bundle
    or the system's trust store, the client certificate, the minimum version) instead of
    requests' own trust in certifi's bundle or REQUESTS_CA_BUNDLE."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__(max_retries=0)

    def build_connection_pool_key_attributes(
        self, request: requests.PreparedRequest, verify: Any, cert: Any = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host, _ = super().build_connection_pool_key_attributes(request, verify, cert)
        return host, {"ssl_context": self._context}

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        """Nothing: the context verifies (requests would add certifi's CAs to it)."""


@dataclass(frozen=True)
class _Peer:
    """A DICOMweb client and the HTTP responses its session received (for reasons)."""

    client: DICOMwebClient
    answers: list[requests.Response]


def _connect(destination: Destination, timeout_s: float,
             tls: ssl.SSLContext | None) -> _Peer:  # fmt: skip
    """A client for `destination`, its credentials read now (a rotated secret needs no restart);
    no proxies or netrc from the environment: the configuration alone decides."""
    session = requests.Session()
    session.trust_env = False
    session.mount("http://", HTTPAdapter(max_retries=0))
    session.mount("https://", _ContextAdapter(tls or ssl.create_default_context()))
    session.headers["Accept"] = DICOM_JSON
    if destination.credentials_file:
        credentials = read_credentials(destination.credentials_file)
        session.auth = credentials.basic
        session.headers.update(credentials.headers())
    client = DICOMwebClient(destination.url.rstrip("/"), session=session, timeout=timeout_s)
    client.set_http_retry_params(retry=False)  # the work queue retries, with its own backoff
    peer = _Peer(client, [])
    session.hooks["response"].append(lambda r, *args, **kwargs: peer.answers.append(r))
    return peer
