"""DICOM over TLS (PS3.15 Annex B) against real dcmtk peers on 127.0.0.1.

A throw-away PKI made with the openssl command line: a CA that signs the node's certificate
(127.0.0.1 / localhost) and a client's, and a second, untrusted CA with its own client and
server. The node's SCP runs in-process with TLS; dcmtk's echoscu and storescu call it, and
dcmtk's storescp receives what the node sends.
"""

from __future__ import annotations

import logging
import socket
import ssl
import subprocess
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.audit import read_events
from dicomnode.config import (
    Config,
    ConfigError,
    Destination,
    FieldError,
    TlsSection,
    load_config,
    with_overrides,
)
from dicomnode.delivery import deliver_due, destination_key
from dicomnode.index import Index
from dicomnode.retry import RetryPolicy
from dicomnode.scp import start_server
from dicomnode.sender import send_files
from dicomnode.spool import Spool
from dicomnode.tls import TlsError, client_context, server_context
from dicomnode.work_queue import WorkQueue
from tests.dicom_factory import make_dataset, ramp
from tests.integration.node_process import NodeProcess
from tests.integration.orthanc import free_ports
from train.phantoms.archive import generate_archive, read_truth

TIMEOUT_S = 60
NETWORK_TIMEOUT_S = 2.0  # the node's: how long a silent peer may hold a connection
LEAF = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
SERVER_NAMES = "subjectAltName=IP:127.0.0.1,DNS:localhost\n"


@dataclass(frozen=True)
class Pki:
    """PEM files `<name>.pem` (certificate) and `<name>.key` (unencrypted key) in `root`."""

    root: Path

    def cert(self, name: str) -> str:
        return str(self.root / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.root / f"{name}.key")

    def dcmtk(self, identity: str, trusted_ca: str = "ca") -> list[str]:
        """dcmtk flags: present `identity`'s certificate, verify the peer with `trusted_ca`."""
        return ["+tls", self.key(identity), self.cert(identity), "+cf", self.cert(trusted_ca)]


def _openssl(root: Path, *args: str) -> None:
    result = subprocess.run(["openssl", *args], cwd=root, capture_output=True, text=True,
                            timeout=TIMEOUT_S)  # fmt: skip
    assert result.returncode == 0, result.stderr


def _make_ca(root: Path, name: str) -> None:
    _openssl(root, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", f"{name}.key", "-out", f"{name}.pem", "-subj", f"/CN=Test {name}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip


def _make_leaf(root: Path, name: str, ca: str, extensions: str) -> None:
    (root / f"{name}.ext").write_text(LEAF + extensions)
    _openssl(root, "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}")  # fmt: skip
    _openssl(root, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey",
             f"{ca}.key", "-CAcreateserial", "-days", "2", "-out", f"{name}.pem",
             "-extfile", f"{name}.ext")  # fmt: skip


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """ca signs `node` (server and client: the node presents one certificate in both roles)
    and `client`; rogue_ca, trusted by nobody, signs `rogue_client` and `rogue_server`."""
    root = tmp_path_factory.mktemp("pki")
    for ca in ("ca", "rogue_ca"):
        _make_ca(root, ca)
    _make_leaf(root, "node", "ca", "extendedKeyUsage=serverAuth,clientAuth\n" + SERVER_NAMES)
    _make_leaf(root, "client", "ca", "extendedKeyUsage=clientAuth\n")
    _make_leaf(root, "rogue_client", "rogue_ca", "extendedKeyUsage=clientAuth\n")
    _make_leaf(root, "rogue_server", "rogue_ca", "extendedKeyUsage=serverAuth\n" + SERVER_NAMES)
    return Pki(root)


def _instances(folder: Path, count: int) -> list[Path]:
    """`count` small CR wrist images of one new study."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    paths = []
    for n in range(count):
        ds = make_dataset(ramp(), StudyInstanceUID=study, SeriesInstanceUID=series)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = n + 1
        paths.append(folder / f"{n}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


def _wait_for(condition: Callable[[], Any], timeout_s: float = 15.0) -> Any:
    """`condition()` once truthy (polled), or its last falsy value after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


class TlsNode:
    """The node's SCP in-process, listening with TLS, with its spool and index."""

    def __init__(self, root: Path, pki: Pki, **tls: Any) -> None:
        (self.port,) = free_ports(1)
        section = {
            "enabled": True,
            "certificate": pki.cert("node"),
            "private_key": pki.key("node"),
            "ca_certificates": pki.cert("ca"),
            **tls,
        }
        self.config = with_overrides(
            Config(),
            node={"port": self.port, "network_timeout_seconds": NETWORK_TIMEOUT_S},
            storage={"path": root / "node"},
            tls=section,
        )
        self.spool = Spool(self.config.storage.path)
        self.index = Index(self.config.storage.path / "index.sqlite")
        self.server = start_server(self.config, self.spool, self.index)

    def run(self, tool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
        """A dcmtk SCU (echoscu, storescu) against the node; `args` before host and port."""
        command = [tool, "-aec", "WRISTAI", *map(str, args[:-1] if tool == "storescu" else args)]
        files = [str(args[-1])] if tool == "storescu" else []
        return subprocess.run([*command, "127.0.0.1", str(self.port), *files],
                              capture_output=True, text=True, timeout=TIMEOUT_S)  # fmt: skip

    def echo(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("echoscu", *args)

    def stop(self) -> None:
        self.server.shutdown()
        self.index.close()


@pytest.fixture
def start_node(tmp_path: Path, pki: Pki) -> Iterator[Callable[..., TlsNode]]:
    """Starts TLS nodes (keyword arguments: [tls] keys); stops each after the test."""
    nodes: list[TlsNode] = []

    def start(**tls: Any) -> TlsNode:
        nodes.append(TlsNode(tmp_path / f"n{len(nodes)}", pki, **tls))
        return nodes[-1]

    yield start
    for node in nodes:
        node.stop()


def _handshake(port: int, pki: Pki, *, highest: ssl.TLSVersion) -> str:
    """A Python TLS client offering versions up to `highest`; the negotiated version."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(pki.cert("ca"))
    context.load_cert_chain(pki.cert("client"), pki.key("client"))
    with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: offering them is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS < 1.2 above level 0
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = highest
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as connection,
    ):
        return str(connection.version())


def _refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The node's log lines on refused TLS connections, oldest first."""
    return [r.getMessage() for r in caplog.records if "TLS connection from" in r.getMessage()]


def _accepted(config: Config) -> list[dict[str, Any]]:
    """The audit trail's association-accepted events."""
    return [e for e in read_events(config.audit_path) if e["event"] == "association-accepted"]


@pytest.mark.integration
def test_echoscu_and_storescu_over_tls_store_into_spool_and_index(
    start_node: Callable[..., TlsNode], pki: Pki, tmp_path: Path
) -> None:
    node = start_node()
    # dcmtk's profiles: non-downgrading BCP 195 (its default), BCP 195, extended BCP 195
    for profile in ("+py", "+px", "+pz"):
        echo = node.echo(*pki.dcmtk("client"), profile)
        assert echo.returncode == 0, echo.stdout + echo.stderr
    for retired in ("+pa", "+pn"):  # AES: no forward secrecy; Null: not encrypted at all
        refused = node.echo(*pki.dcmtk("client"), retired)
        assert refused.returncode != 0 and "TLS error" in refused.stderr, retired
    files = _instances(tmp_path / "send", 2)
    stored = node.run("storescu", *pki.dcmtk("client"), "+px", "+sd", tmp_path / "send")
    assert stored.returncode == 0, stored.stdout + stored.stderr
    for path in files:
        sent = pydicom.dcmread(path)
        study, sop = str(sent.StudyInstanceUID), str(sent.SOPInstanceUID)
        assert pydicom.dcmread(node.spool.path(study, sop)) == sent
        (row,) = [i for i in node.index.instances(study) if i.sop_uid == sop]
        assert row.calling_aet == "STORESCU" and row.path == node.spool.path(study, sop)
    assert node.index.counts()["instances"] == 2


@pytest.mark.integration
def test_the_audit_trail_marks_tls_associations(
    start_node: Callable[..., TlsNode], pki: Pki, tmp_path: Path
) -> None:
    node = start_node()
    assert node.echo("-aet", "TLSPEER", *pki.dcmtk("client")).returncode == 0
    plain_config = with_overrides(
        node.config, node={"port": free_ports(1)[0]}, storage={"path": tmp_path / "plain"},
        tls=TlsSection(),
    )  # fmt: skip
    plain_index = Index(tmp_path / "plain" / "index.sqlite")
    plain = start_server(plain_config, Spool(tmp_path / "plain"), plain_index)
    try:
        command = ["echoscu", "-aet", "PLAINPEER", "-aec", "WRISTAI", "127.0.0.1",
                   str(plain_config.node.port)]  # fmt: skip
        assert subprocess.run(command, capture_output=True, timeout=TIMEOUT_S).returncode == 0
    finally:
        plain.shutdown()
        plain_index.close()
    assert node.config.audit_path == node.config.storage.path / "audit.jsonl"
    (tls_event,) = _wait_for(lambda: _accepted(node.config))
    (plain_event,) = _wait_for(lambda: _accepted(plain_config))
    assert tls_event["calling_aet"] == "TLSPEER" and tls_event["tls"] is True
    assert plain_event["calling_aet"] == "PLAINPEER" and plain_event["tls"] is False


@pytest.mark.integration
def test_plain_dicom_to_the_tls_port_fails_and_tls_peers_are_still_served(
    start_node: Callable[..., TlsNode], pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    node = start_node()
    plain = node.echo()
    assert plain.returncode != 0
    assert "Association Request Failed" in plain.stdout + plain.stderr
    assert _wait_for(lambda: _refusals(caplog))[0].endswith("refused: wrong version number")
    assert node.echo("-aet", "TLSPEER", *pki.dcmtk("client")).returncode == 0
    (accepted,) = _wait_for(lambda: _accepted(node.config))  # the plain one never got that far
    assert accepted["calling_aet"] == "TLSPEER"


@pytest.mark.integration
def test_silent_and_stalled_callers_neither_block_the_tls_port_nor_stay(
    start_node: Callable[..., TlsNode], pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    """pynetdicom alone handshakes in its accept loop: one caller that connects and says
    nothing stalls every other caller for good. The node handshakes per connection instead."""
    node = start_node()
    silent = socket.create_connection(("127.0.0.1", node.port), timeout=TIMEOUT_S)
    stalled = socket.create_connection(("127.0.0.1", node.port), timeout=TIMEOUT_S)
    stalled.sendall(bytes.fromhex("160301"))  # the start of a TLS record header, then nothing
    try:
        time.sleep(0.2)  # both are accepted before the TLS peer calls
        echo = node.echo(*pki.dcmtk("client"), "-to", "20")
        assert echo.returncode == 0, echo.stdout + echo.stderr
        # After the network timeout the node drops both (recv: b"" is an orderly close).
        assert silent.recv(1) == b"" and stalled.recv(1) == b""
    finally:
        silent.close()
        stalled.close()
    refusals = _wait_for(lambda: len(_refusals(caplog)) >= 2 and _refusals(caplog))
    assert len(refusals) == 2
    assert all(r.endswith("refused: no TLS handshake within the network timeout") for r in refusals)


@pytest.mark.integration
def test_a_required_client_certificate_must_come_from_the_trusted_ca(
    start_node: Callable[..., TlsNode], pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    optional = start_node()
    assert optional.echo("+tla", "+cf", pki.cert("ca")).returncode == 0  # anonymous: allowed
    required = start_node(require_client_certificate=True)
    anonymous = required.echo("+tla", "+cf", pki.cert("ca"))
    untrusted = required.echo(*pki.dcmtk("rogue_client"))
    assert anonymous.returncode != 0 and untrusted.returncode != 0
    refusals = " | ".join(_wait_for(lambda: len(_refusals(caplog)) >= 2 and _refusals(caplog)))
    assert refusals.count("refused") == 2
    assert "refused: peer did not return a certificate" in refusals  # the anonymous caller
    assert "refused: peer certificate not trusted (unable to get local issuer" in refusals

    def tls_refused() -> list[dict[str, Any]]:
        events = read_events(required.config.audit_path)
        return [e for e in events if e["event"] == "tls-refused"]

    refused = _wait_for(lambda: len(tls_refused()) >= 2 and tls_refused())
    assert len(refused) == 2 and {e["address"] for e in refused} == {"127.0.0.1"}
    assert "did not return a certificate" in refused[0]["reason"] + refused[1]["reason"]
    trusted = required.echo("-aet", "TRUSTED", *pki.dcmtk("client"))
    assert trusted.returncode == 0, trusted.stdout + trusted.stderr
    (accepted,) = _wait_for(lambda: _accepted(required.config))
    assert accepted["calling_aet"] == "TRUSTED"


@pytest.mark.integration
def test_tls_1_1_and_older_are_refused(start_node: Callable[..., TlsNode], pki: Pki) -> None:
    node = start_node()
    assert _handshake(node.port, pki, highest=ssl.TLSVersion.TLSv1_2) == "TLSv1.2"
    with pytest.raises(ssl.SSLError, match="ALERT_PROTOCOL_VERSION"):  # the node's alert
        _handshake(node.port, pki, highest=ssl.TLSVersion.TLSv1_1)


@pytest.mark.integration
def test_minimum_version_1_3_refuses_tls_1_2_clients(
    start_node: Callable[..., TlsNode], pki: Pki
) -> None:
    node = start_node(minimum_version="1.3")
    assert _handshake(node.port, pki, highest=ssl.TLSVersion.TLSv1_3) == "TLSv1.3"
    with pytest.raises(ssl.SSLError, match="ALERT_PROTOCOL_VERSION"):
        _handshake(node.port, pki, highest=ssl.TLSVersion.TLSv1_2)
    # dcmtk's extended BCP 195 profile (+pz) negotiates TLS 1.2 only; BCP 195 (+px) 1.3.
    tls12 = node.echo(*pki.dcmtk("client"), "+pz")
    assert tls12.returncode != 0 and "protocol version" in tls12.stdout + tls12.stderr
    assert node.echo(*pki.dcmtk("client"), "+px").returncode == 0


ISSUER = {"node": "ca", "rogue_server": "rogue_ca"}
CLIENT_OF = {"ca": "client", "rogue_ca": "rogue_client"}


class StoreScp:
    """dcmtk's storescp with TLS on a free port, presenting `identity`, requiring a client
    certificate from the CA `trusts`, writing what it receives to `output`."""

    def __init__(self, root: Path, pki: Pki, identity: str, trusts: str) -> None:
        (self.port,) = free_ports(1)
        self.output = root / f"storescp-{identity}-{trusts}"
        self.output.mkdir(parents=True)
        self.log = root / f"storescp-{identity}-{trusts}.log"
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                ["storescp", "-aet", "STORESCP", *pki.dcmtk(identity, trusts), "+px",
                 "-od", str(self.output), str(self.port)],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        caller = pki.dcmtk(CLIENT_OF[trusts], ISSUER[identity])  # one storescp accepts
        ready = ["echoscu", "-aec", "STORESCP", *caller, "127.0.0.1", str(self.port)]
        if not _wait_for(lambda: subprocess.run(ready, capture_output=True,
                                                timeout=TIMEOUT_S).returncode == 0):  # fmt: skip
            self.stop()
            raise AssertionError(f"storescp did not start:\n{self.log.read_text()}")

    def destination(self) -> Destination:
        return Destination("STORESCP", "127.0.0.1", self.port, tls=True)

    def received(self) -> set[str]:
        return {str(pydicom.dcmread(p).SOPInstanceUID) for p in self.output.iterdir()}

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def storescp(tmp_path: Path, pki: Pki) -> Iterator[Callable[[str, str], StoreScp]]:
    """Starts storescp instances (identity, CA it trusts); stops each after the test."""
    started: list[StoreScp] = []

    def start(identity: str, trusts: str) -> StoreScp:
        started.append(StoreScp(tmp_path, pki, identity, trusts))
        return started[-1]

    yield start
    for scp in started:
        scp.stop()


def _node_tls(pki: Pki) -> TlsSection:
    """The node's [tls] section: its one certificate, the test CA."""
    return TlsSection(certificate=pki.cert("node"), private_key=pki.key("node"),
                      ca_certificates=pki.cert("ca"))  # fmt: skip


@pytest.mark.integration
def test_send_files_over_tls_reaches_storescp(
    storescp: Callable[[str, str], StoreScp], pki: Pki, tmp_path: Path
) -> None:
    scp = storescp("node", "ca")  # a PACS with a certificate from the node's CA
    files = _instances(tmp_path / "results", 3)
    result = send_files(scp.destination(), files, calling_aet="WRISTAI",
                        tls=client_context(_node_tls(pki)))  # fmt: skip
    assert result.connected and result.all_sent, result.outcomes
    assert scp.received() == {str(pydicom.dcmread(f).SOPInstanceUID) for f in files}


@pytest.mark.integration
@pytest.mark.parametrize(
    ("identity", "trusts", "why"),
    [
        ("rogue_server", "ca", "peer certificate not trusted (unable to get local issuer "
         "certificate)"),
        ("node", "rogue_ca", "refused by the peer (unknown ca)"),  # it refuses our certificate
    ],
    ids=["pacs-certificate-untrusted", "node-certificate-refused"],
)  # fmt: skip
def test_send_files_fails_clearly_when_either_side_refuses_the_other(
    storescp: Callable[[str, str], StoreScp],
    pki: Pki,
    tmp_path: Path,
    identity: str,
    trusts: str,
    why: str,
) -> None:
    scp = storescp(identity, trusts)
    files = _instances(tmp_path / "results", 2)
    result = send_files(scp.destination(), files, calling_aet="WRISTAI",
                        tls=client_context(_node_tls(pki)))  # fmt: skip
    assert not result.connected and not result.all_sent
    expected = f"TLS handshake with 127.0.0.1:{scp.port} failed: {why}"
    assert [o.reason for o in result.outcomes] == [expected, expected]
    assert list(scp.output.iterdir()) == []


class TlsNodeProcess(NodeProcess):
    """`dicomnode serve` listening with TLS; its C-ECHO probes (start-up included) use TLS."""

    def __init__(self, tmp_path: Path, pki: Pki, **sections: Any) -> None:
        tls = {"enabled": True, "certificate": pki.cert("node"), "private_key": pki.key("node"),
               "ca_certificates": pki.cert("ca"), "require_client_certificate": True}  # fmt: skip
        super().__init__(tmp_path, tls=tls, **sections)
        self.tls_flags = pki.dcmtk("client")

    def echo(self, calling: str = "ECHOSCU", *tls: str) -> subprocess.CompletedProcess[str]:
        return super().echo(calling, *(tls or self.tls_flags))


@pytest.mark.integration
def test_the_service_receives_and_reports_over_tls(
    storescp: Callable[[str, str], StoreScp], pki: Pki, tmp_path: Path
) -> None:
    """`dicomnode serve` end to end: a study in over TLS, its results out over TLS."""
    pacs = storescp("node", "ca")
    destination = {"ae_title": "STORESCP", "host": "127.0.0.1", "port": pacs.port, "tls": True}
    node = TlsNodeProcess(tmp_path, pki, destinations=[destination]).start()
    try:
        generate_archive(tmp_path / "study", studies=1, seed=5, syntaxes=("explicit_le",))
        rows = [r for r in read_truth(tmp_path / "study") if not r["corrupt"]]
        sent = node.storescu([tmp_path / "study" / r["path"] for r in rows], *pki.dcmtk("client"))
        assert sent.returncode == 0, sent.stdout + sent.stderr

        def delivered() -> list[dict[str, Any]]:
            return [e for e in read_events(node.audit_path) if e["event"] == "result-sent"]

        results, log = _wait_for(delivered, timeout_s=120.0), node.log()
    finally:
        node.stop()
    assert len(results) == 1, log[-3000:]
    assert results[0]["tls"] is True
    assert results[0]["destination"] == f"STORESCP@127.0.0.1:{pacs.port}"
    assert {str(pydicom.dcmread(f).Modality) for f in pacs.output.iterdir()} == {"SR", "OT", "PR"}
    accepted = [e for e in read_events(node.audit_path) if e["event"] == "association-accepted"]
    assert accepted and all(e["tls"] is True for e in accepted)


def test_enabled_without_certificate_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(FieldError, match="needs 'certificate' and 'private_key'"):
        TlsSection(enabled=True)
    path = tmp_path / "node.toml"
    path.write_text('[tls]\nenabled = true\ncertificate = "node.pem"\n')
    with pytest.raises(ConfigError, match=r"'tls\.enabled' = True needs 'certificate'"):
        load_config(path)
    with pytest.raises(FieldError, match="needs 'ca_certificates'"):
        TlsSection(require_client_certificate=True)


def test_unusable_tls_files_raise_tls_error_naming_the_file(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "absent" / "node.pem")
    no_cert = TlsSection(enabled=True, certificate=missing, private_key=pki.key("node"))
    with pytest.raises(TlsError, match=f"TLS certificate '{missing}'.*No such file"):
        server_context(no_cert)
    with pytest.raises(TlsError, match=f"TLS certificate '{missing}'"):
        client_context(no_cert)
    wrong_key = TlsSection(
        enabled=True, certificate=pki.cert("node"), private_key=pki.key("client")
    )
    with pytest.raises(TlsError, match=f"with key '{pki.key('client')}'"):
        server_context(wrong_key)
    no_ca = TlsSection(ca_certificates=str(tmp_path / "ca.pem"))
    with pytest.raises(TlsError, match=f"TLS CA bundle '{tmp_path / 'ca.pem'}'"):
        client_context(no_ca)
    config = with_overrides(Config(), node={"port": free_ports(1)[0]}, tls=no_cert,
                            storage={"path": tmp_path / "node"})  # fmt: skip
    index = Index(tmp_path / "index.sqlite")
    with pytest.raises(TlsError, match=missing):  # at start-up, not at the first caller
        start_server(config, Spool(tmp_path / "spool"), index)
    index.close()


def test_an_unreadable_certificate_fails_the_delivery_not_the_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    missing = str(tmp_path / "node.pem")
    pacs = Destination("PACS", "127.0.0.1", free_ports(1)[0], tls=True)
    config = with_overrides(Config(), storage={"path": tmp_path}, destinations=(pacs,),
                            tls={"certificate": missing, "private_key": missing})  # fmt: skip
    queue = WorkQueue(tmp_path / "index.sqlite")
    queue.record_instance(sop_uid="1.2.1", study_uid="1.2", series_uid="1.2.9",
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.1", path=tmp_path / "x.dcm",
                          calling_aet="MODALITY", association_id="a", received_at=100.0,
                          ours=False)  # fmt: skip
    queue.set_state("1.2", "analysing")
    queue.schedule("1.2", [destination_key(pacs)], [tmp_path / "sr.dcm"], now=time.time())
    policy = RetryPolicy(initial_delay_s=30.0, max_delay_s=60.0, give_up_after_s=3600.0)
    assert deliver_due(queue, {destination_key(pacs): pacs}, config, policy)
    assert queue.backlog() == {destination_key(pacs): 1}
    (retry,) = queue.due(time.time() + 3600.0)
    assert retry.attempts == 1
    assert any(missing in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    queue.close()
