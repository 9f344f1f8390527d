"""DICOMweb destinations: configuration, credentials files, STOW-RS responses, network faults.

The HTTP peers here are a tiny local server that answers what a test tells it to; the real
DICOMweb server (Orthanc) is in tests/integration/test_stow_orthanc.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicomnode.config import Config, ConfigError, Destination, TlsSection, load_config
from dicomnode.credentials import CredentialsError, read_credentials
from dicomnode.delivery import destination_key
from dicomnode.preflight import StartupError, check_startup
from dicomnode.stow import outcomes_from_response, store_dicomweb
from dicomnode.tls import client_context, server_context
from pipeline.dicom import dimse
from tests.dicom_factory import make_dataset, ramp
from tests.dicomnode.test_tls import Pki, pki  # noqa: F401 - the PKI fixture
from tests.integration.orthanc import free_port

URL = "https://pacs.example/dicom-web"


def _config(tmp_path: Path, destination: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(f"[[destinations]]\n{destination}\n", encoding="utf-8")
    return path


# -- configuration ---------------------------------------------------------------------------


def test_a_destination_is_either_dimse_or_dicomweb(tmp_path: Path) -> None:
    dimse_config = load_config(_config(tmp_path, 'ae_title = "PACS"\nhost = "pacs"\nport = 104'))
    web_config = load_config(_config(tmp_path, f'url = "{URL}"'))
    (dimse_dest,) = dimse_config.destinations
    (web_dest,) = web_config.destinations
    assert (dimse_dest.url, dimse_dest.uses_tls) == ("", False)
    assert (web_dest.url, web_dest.ae_title, web_dest.port, web_dest.uses_tls) == (URL, "", 0, True)
    # Queue keys: DIMSE ones as older databases hold them, DICOMweb ones by url.
    assert destination_key(dimse_dest) == "PACS@pacs:104"
    assert destination_key(web_dest) == URL
    assert Destination.parse("http://127.0.0.1:8042/dicom-web").uses_tls is False


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("tls = false", "[destinations[0]] lacks the key 'destinations[0].ae_title': a "
         "destination needs ae_title, host and port (DIMSE C-STORE), or url (DICOMweb STOW-RS)"),
        ('ae_title = "PACS"\nhost = "pacs"', "lacks the key 'destinations[0].port'"),
        (f'url = "{URL}"\nae_title = "PACS"', "'destinations[0].ae_title' = 'PACS' cannot be "
         "combined with 'url': a destination is either DIMSE"),
        (f'url = "{URL}"\nport = 104', "'destinations[0].port' = 104 cannot be combined"),
        (f'url = "{URL}"\ntls = true', "'destinations[0].tls' = True applies to DIMSE "
         "destinations only"),
        ('url = "ftp://pacs/dicom-web"', "must be an http:// or https:// URL"),
        ('url = "https://pacs:99999/x"', "is not a valid URL"),
        ('url = "https://pacs/x?y=1"', "without '?' or '#'"),
        ('ae_title = "PACS"\nhost = "pacs"\nport = 104\ncredentials_file = "c.toml"',
         "'destinations[0].credentials_file' = 'c.toml' applies to DICOMweb destinations"),
    ],
)  # fmt: skip
def test_invalid_destinations_are_refused_naming_the_key(
    tmp_path: Path, table: str, message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(_config(tmp_path, table))
    assert message in str(refused.value) and str(tmp_path / "node.toml") in str(refused.value)


def test_a_url_with_credentials_is_refused_without_showing_them(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(_config(tmp_path, 'url = "https://node:s3cret@pacs/dicom-web"'))
    assert "must not hold credentials: name a 'credentials_file'" in str(refused.value)
    assert "s3cret" not in str(refused.value)


def test_start_up_refuses_a_missing_or_broken_credentials_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.toml"
    config = Config(destinations=(Destination(url=URL, credentials_file=str(missing)),))
    with pytest.raises(StartupError) as refused:
        check_startup(config, lambda key: "node.toml", model_apart=False)
    assert str(refused.value) == (
        f"node.toml: 'destinations[0].credentials_file' = '{missing}' cannot be used: "
        f"credentials file '{missing}' does not exist"
    )
    broken = tmp_path / "broken.toml"
    broken.write_text('username = "node"\n', encoding="utf-8")
    config = Config(destinations=(Destination(url=URL, credentials_file=str(broken)),))
    with pytest.raises(StartupError, match="must hold either 'username' and 'password'"):
        check_startup(config, lambda key: "node.toml", model_apart=False)


# -- credentials files -----------------------------------------------------------------------


def test_credentials_files_hold_basic_or_bearer_credentials(tmp_path: Path) -> None:
    basic = tmp_path / "basic.toml"
    basic.write_text('username = "node"\npassword = "s3cret"\n', encoding="utf-8")
    bearer = tmp_path / "bearer.toml"
    bearer.write_text('token = "t0ken"\n', encoding="utf-8")
    read = read_credentials(basic)
    assert (read.basic, read.headers()) == (("node", "s3cret"), {})
    assert "s3cret" not in repr(read)
    token = read_credentials(bearer)
    assert (token.basic, token.headers()) == (None, {"Authorization": "Bearer t0ken"})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('username = "node"\npassword = "p"\ntoken = "t"', "either 'username' and 'password'"),
        ('password = "s3cret"', "either 'username' and 'password'"),
        ('token = ""', "'token' must be a non-empty string"),
        ('token = 5', "'token' must be a non-empty string"),
        ('user = "node"', "unknown key 'user'"),
        ('username = "a:b"\npassword = "p"', "must not contain ':'"),
        ('token = "s3cret', "is not valid TOML"),
    ],
)  # fmt: skip
def test_bad_credentials_files_are_refused_without_showing_secrets(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "credentials.toml"
    path.write_text(text + "\n", encoding="utf-8")
    with pytest.raises(CredentialsError) as refused:
        read_credentials(path)
    assert message in str(refused.value) and str(path) in str(refused.value)
    assert "s3cret" not in str(refused.value)


# -- Store Instances Responses ---------------------------------------------------------------


def _item(uid: str, **attributes: Any) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    item.ReferencedSOPInstanceUID = uid
    for name, value in attributes.items():
        setattr(item, name, value)
    return item


def _response(stored: list[Dataset], failed: list[Dataset]) -> Dataset:
    response = Dataset()
    response.ReferencedSOPSequence = stored
    response.FailedSOPSequence = failed
    return response


def test_each_file_gets_the_outcome_the_response_gives_its_instance() -> None:
    uids = [generate_uid() for _ in range(4)]
    paths = [Path(f"{i}.dcm") for i in range(4)]
    response = _response(
        stored=[_item(uids[0]), _item(uids[1], WarningReason=dimse.WARNING_ELEMENTS_DISCARDED)],
        failed=[_item(uids[2], FailureReason=dimse.OUT_OF_RESOURCES)],
    )
    outcomes = outcomes_from_response(response, list(zip(paths, uids, strict=True)),
                                      unlisted="not listed")  # fmt: skip
    assert [(o.path, o.sop_instance_uid, o.status, o.sent) for o in outcomes] == [
        (paths[0], uids[0], dimse.SUCCESS, True),
        (paths[1], uids[1], dimse.WARNING_ELEMENTS_DISCARDED, True),
        (paths[2], uids[2], dimse.OUT_OF_RESOURCES, False),
        (paths[3], uids[3], None, False),
    ]
    assert outcomes[0].reason == ""
    assert outcomes[1].reason == "stored with warning 0xB006 Element Discarded"
    assert outcomes[2].reason == "DICOMweb server refused it: 0xA700 Refused: Out of Resources"
    assert outcomes[3].reason == "not listed"


def test_a_failed_instance_without_a_reason_and_unknown_codes_still_say_what_happened() -> None:
    uids = [generate_uid() for _ in range(3)]
    response = _response(
        stored=[_item(uids[0], WarningReason=0xB123)],
        failed=[_item(uids[1]), _item(uids[2], FailureReason=0xC123)],
    )
    outcomes = outcomes_from_response(response, [(Path(u), u) for u in uids], unlisted="")
    assert [(o.sent, o.reason) for o in outcomes] == [
        (True, "stored with warning 0xB123"),
        (False, "DICOMweb server refused it (no reason given)"),
        (False, "DICOMweb server refused it: 0xC123 Cannot Understand"),
    ]


# -- against a local HTTP server ---------------------------------------------------------------


class _Peer(ThreadingHTTPServer):
    """Answers every POST with `status`, `content_type` and `body`; keeps what it received."""

    status = 200
    content_type = "application/dicom+json"
    body: bytes = b""
    requests: list[tuple[str, dict[str, str], bytes]]


class _Handler(BaseHTTPRequestHandler):
    server: _Peer

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", 0))
        self.server.requests.append((self.path, dict(self.headers), self.rfile.read(length)))
        self.send_response(self.server.status)
        self.send_header("Content-Type", self.server.content_type)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _serving(tls: ssl.SSLContext | None = None) -> Iterator[_Peer]:
    """A `_Peer` on a free loopback port, https with the server context `tls`."""
    server = _Peer(("127.0.0.1", 0), _Handler)
    server.requests = []
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def peer() -> Iterator[_Peer]:
    with _serving() as server:
        yield server


def _files(tmp_path: Path, count: int, study_uid: str | None = None) -> list[Path]:
    study = study_uid or generate_uid()
    tmp_path.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        ds = make_dataset(ramp(8, 8))
        ds.StudyInstanceUID = study
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = tmp_path / f"{i}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _json_response(stored: list[str], failed: list[tuple[str, int]]) -> bytes:
    response = _response([_item(u) for u in stored],
                         [_item(u, FailureReason=code) for u, code in failed])  # fmt: skip
    return json.dumps(response.to_json_dict()).encode()


def test_a_conflict_response_fails_the_named_file_with_its_reason(
    peer: _Peer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dicomnode.stow")
    files = _files(tmp_path, 2)
    uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in files]
    credentials = tmp_path / "credentials.toml"
    credentials.write_text('token = "t0ken"\n', encoding="utf-8")
    peer.status = 409
    peer.body = _json_response(stored=[uids[0]], failed=[(uids[1], dimse.CANNOT_UNDERSTAND)])
    url = f"http://127.0.0.1:{peer.server_address[1]}/dicom-web/"
    destination = Destination(url=url, credentials_file=str(credentials))

    result = store_dicomweb(destination, [*files, tmp_path / "gone.dcm"], timeout_s=5)

    assert result.connected and not result.all_sent
    assert [(o.sop_instance_uid, o.sent) for o in result.outcomes] == [
        (uids[0], True), (uids[1], False), ("", False)
    ]  # fmt: skip
    assert result.outcomes[1].reason == "DICOMweb server refused it: 0xC000 Cannot Understand"
    assert result.outcomes[2].reason.startswith("file cannot be read as DICOM")
    ((path, headers, body),) = peer.requests  # one POST for the study, to {url}/studies
    assert path == "/dicom-web/studies"
    assert headers["Authorization"] == "Bearer t0ken"
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert all(f.read_bytes()[128:] in body for f in files)
    lines = [r.getMessage() for r in caplog.records if r.name == "dicomnode.stow"]
    assert len(lines) == 3 and all("t0ken" not in line for line in lines)
    assert f"STOW-RS {uids[1]} to {url}: 0xC000 DICOMweb server refused it" in lines[1]


def test_http_errors_without_a_response_fail_every_file_with_the_status(
    peer: _Peer, tmp_path: Path
) -> None:
    files = _files(tmp_path, 2)
    url = f"http://127.0.0.1:{peer.server_address[1]}/dicom-web"
    peer.status, peer.content_type, peer.body = 401, "text/plain", b"who are you?"
    result = store_dicomweb(Destination(url=url), files, timeout_s=5)
    assert result.connected and [o.sent for o in result.outcomes] == [False, False]
    assert {o.reason for o in result.outcomes} == {
        "DICOMweb server answered HTTP 401 Unauthorized: credentials missing or refused (see "
        "the destination's credentials_file)"
    }
    assert "Authorization" not in peer.requests[0][1]
    peer.status, peer.body = 200, b"<html>not DICOM</html>"
    result = store_dicomweb(Destination(url=url), files, timeout_s=5)
    assert [o.sent for o in result.outcomes] == [False, False]
    assert result.outcomes[0].reason == (
        "DICOMweb server answered HTTP 200 OK (text/plain) without a Store Instances Response"
    )


def test_files_of_two_studies_go_in_one_request_each(peer: _Peer, tmp_path: Path) -> None:
    first, second = _files(tmp_path / "a", 2), _files(tmp_path / "b", 1)
    uids = [str(pydicom.dcmread(f).SOPInstanceUID) for f in first + second]
    peer.body = _json_response(stored=uids, failed=[])
    url = f"http://127.0.0.1:{peer.server_address[1]}/dicom-web"
    result = store_dicomweb(Destination(url=url), [first[0], second[0], first[1]], timeout_s=5)
    assert result.all_sent and len(peer.requests) == 2
    assert [o.sop_instance_uid for o in result.outcomes] == [uids[0], uids[2], uids[1]]


def test_a_refused_connection_fails_every_file_with_one_sentence(tmp_path: Path) -> None:
    files = _files(tmp_path, 2)
    port = free_port()
    result = store_dicomweb(Destination(url=f"http://127.0.0.1:{port}/dicom-web"), files,
                            timeout_s=5)  # fmt: skip
    assert not result.connected and not result.all_sent
    assert {o.reason for o in result.outcomes} == {
        f"connection to 127.0.0.1:{port} failed: connection refused"
    }


def test_a_silent_server_times_out_with_a_reason(tmp_path: Path) -> None:
    import socket

    files = _files(tmp_path, 1)
    with socket.socket() as listener:  # accepts (the kernel's backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        result = store_dicomweb(Destination(url=f"http://127.0.0.1:{port}/dicom-web"), files,
                                timeout_s=0.5)  # fmt: skip
    assert not result.connected
    assert result.outcomes[0].reason == (
        f"DICOMweb server at 127.0.0.1:{port} did not answer within 0.5 s"
    )


def test_a_missing_credentials_file_at_delivery_fails_the_files_not_the_worker(
    tmp_path: Path,
) -> None:
    files = _files(tmp_path, 1)
    gone = tmp_path / "gone.toml"
    destination = Destination(url=f"http://127.0.0.1:{free_port()}", credentials_file=str(gone))
    result = store_dicomweb(destination, files, timeout_s=5)
    assert result.outcomes[0].reason == f"not sent: credentials file '{gone}' does not exist"


@pytest.mark.parametrize(
    ("server", "client", "sent"),
    [("node", "node", True), ("rogue_server", "node", False), ("node", None, False)],
)
def test_https_uses_the_tls_sections_ca_bundle_and_client_certificate(
    tmp_path: Path,
    pki: Pki,  # noqa: F811 - the fixture imported above
    server: str,
    client: str | None,
    sent: bool,
) -> None:
    """The server requires a client certificate from the CA; the node trusts `ca` only."""
    files = _files(tmp_path, 1)
    uid = str(pydicom.dcmread(files[0]).SOPInstanceUID)
    server_tls = server_context(TlsSection(
        certificate=pki.cert(server), private_key=pki.key(server),
        ca_certificates=pki.cert("ca"), require_client_certificate=True,
    ))  # fmt: skip
    identity = {} if client is None else {"certificate": pki.cert(client),
                                           "private_key": pki.key(client)}  # fmt: skip
    tls = client_context(TlsSection(ca_certificates=pki.cert("ca"), **identity))
    with _serving(server_tls) as https:
        https.body = _json_response(stored=[uid], failed=[])
        where = f"127.0.0.1:{https.server_address[1]}"
        result = store_dicomweb(Destination(url=f"https://{where}/dicom-web"), files,
                                timeout_s=5, tls=tls)  # fmt: skip
    assert result.all_sent is sent and len(https.requests) == int(sent)
    if server == "rogue_server":
        assert result.outcomes[0].reason == (
            f"TLS handshake with {where} failed: peer certificate not trusted (unable to get "
            "local issuer certificate)"
        )
    elif not sent:
        # TLS 1.3: the server's alert, or (should it close first) the bare close.
        assert result.outcomes[0].reason in (
            f"TLS handshake with {where} failed: refused by the peer (certificate required)",
            f"TLS handshake with {where} failed: the server closed the connection (does it "
            "refuse the client certificate, or its absence?)",
        )
