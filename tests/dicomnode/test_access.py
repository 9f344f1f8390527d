"""Who gets in: the calling AE allow list bound to addresses, the called AE title, the limit on
established associations; each refusal an A-ASSOCIATE-RJ with its reason, a log line and an
audit event. Real peers on loopback: pynetdicom requestors bound to 127.0.0.x and dcmtk."""

from __future__ import annotations

import logging
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pynetdicom import AE, Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.access import admit, too_many
from dicomnode.audit import read_events
from dicomnode.config import AccessSection, AllowedCaller, Config, ConfigError, with_overrides
from dicomnode.index import Index
from dicomnode.scp import start_server
from dicomnode.spool import Spool


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Scp:
    """An in-process SCP with the given access section."""

    def __init__(self, tmp_path: Path, access: AccessSection, max_associations: int) -> None:
        self.port = _free_port()
        self.config = with_overrides(
            Config(),
            node={"port": self.port, "max_associations": max_associations},
            storage={"path": tmp_path / "node"},
            access={"allow": access.allow,
                    "require_called_ae_title": access.require_called_ae_title},
        )  # fmt: skip
        self.index = Index(tmp_path / "node" / "index.sqlite")
        self.server = start_server(self.config, Spool(tmp_path / "node" / "spool"), self.index)

    def associate(self, calling: str, *, source: str = "127.0.0.1",
                  called: str = "WRISTAI") -> Association:  # fmt: skip
        ae = AE(ae_title=calling)
        ae.add_requested_context(Verification)
        ae.acse_timeout = ae.network_timeout = 10
        return ae.associate("127.0.0.1", self.port, ae_title=called,
                            bind_address=(source, 0))  # fmt: skip

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in read_events(self.config.audit_path) if e["event"] == kind]


ALLOW = AccessSection(
    allow=(
        AllowedCaller("MODALITY", ("127.0.0.2",)),
        AllowedCaller("PACS", ("127.0.0.0/30",)),
        AllowedCaller("ROAMING", ()),
    )
)


@pytest.fixture
def scp(tmp_path: Path) -> Iterator[Scp]:
    running = Scp(tmp_path, ALLOW, max_associations=2)
    yield running
    running.server.shutdown()
    running.index.close()


def _rejection(assoc: Association) -> tuple[int, int, int]:
    assert assoc.is_rejected, "the association should have been rejected"
    rsp = assoc.acceptor.primitive
    assert rsp is not None
    return int(rsp.result), int(rsp.result_source), int(rsp.diagnostic)


def test_allowed_callers_from_their_addresses_are_accepted(scp: Scp) -> None:
    for calling, source in [("MODALITY", "127.0.0.2"), ("PACS", "127.0.0.3"),
                            ("ROAMING", "127.0.0.5")]:  # fmt: skip
        assoc = scp.associate(calling, source=source)
        assert assoc.is_established, calling
        assert assoc.send_c_echo().Status == 0x0000
        assoc.release()
    accepted = scp.events("association-accepted")
    assert [(e["calling_aet"], e["address"]) for e in accepted] == [
        ("MODALITY", "127.0.0.2"), ("PACS", "127.0.0.3"), ("ROAMING", "127.0.0.5")]  # fmt: skip


@pytest.mark.parametrize(
    ("calling", "source", "called", "expected", "reason"),
    [
        ("STRANGER", "127.0.0.2", "WRISTAI", (1, 1, 3), "calling AE title not allowed"),
        ("MODALITY", "127.0.0.1", "WRISTAI", (1, 1, 3), "not allowed from this address"),
        ("PACS", "127.0.0.4", "WRISTAI", (1, 1, 3), "not allowed from this address"),
        ("MODALITY", "127.0.0.2", "OTHERNODE", (1, 1, 7), "called AE title not this node's"),
    ],
)
def test_refused_callers_get_an_associate_rj_with_the_reason(
    scp: Scp, caplog: pytest.LogCaptureFixture, calling: str, source: str, called: str,
    expected: tuple[int, int, int], reason: str,
) -> None:  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="dicomnode.scp"):
        assoc = scp.associate(calling, source=source, called=called)
    assert _rejection(assoc) == expected
    line = next(r.getMessage() for r in caplog.records if "rejected" in r.getMessage())
    assert calling in line and source in line and reason in line
    (event,) = scp.events("association-rejected")
    assert event["calling_aet"] == calling and event["address"] == source
    assert event["called_aet"] == called and reason in event["reason"]
    assert scp.events("association-accepted") == []
    # Refusing one caller changes nothing for the others.
    good = scp.associate("MODALITY", source="127.0.0.2")
    assert good.is_established
    good.release()


def test_beyond_the_limit_an_association_is_rejected_transiently(scp: Scp) -> None:
    held = [scp.associate("ROAMING") for _ in range(2)]
    assert all(a.is_established for a in held)
    assert _rejection(scp.associate("ROAMING")) == (2, 3, 2)  # transient, local limit exceeded
    held.pop().release()
    again = scp.associate("ROAMING")
    assert again.is_established
    for assoc in [*held, again]:
        assoc.release()


def test_default_configuration_admits_loopback_only() -> None:
    access = Config().access
    assert admit(access, "WRISTAI", "ANYONE", "WRISTAI", "127.0.0.1") is None
    assert admit(access, "WRISTAI", "ANYONE", "WRISTAI", "::1") is None
    assert admit(access, "WRISTAI", "ANYONE", "WRISTAI", "::ffff:127.0.0.1") is None
    refused = admit(access, "WRISTAI", "ANYONE", "WRISTAI", "10.1.2.3")
    assert refused is not None and refused.diagnostic == 0x03


def test_called_ae_check_can_be_turned_off() -> None:
    access = AccessSection(require_called_ae_title=False)
    assert admit(access, "WRISTAI", "X", "SOMETHING", "127.0.0.1") is None
    assert admit(AccessSection(), "WRISTAI", "X", "SOMETHING", "127.0.0.1") is not None


def test_limit_counts_established_associations() -> None:
    assert too_many(31, 32) is None
    limit = too_many(32, 32)
    assert limit is not None and (limit.result, limit.source, limit.diagnostic) == (2, 3, 2)


def test_allow_flag_parses_and_refuses_bad_addresses() -> None:
    assert AllowedCaller.parse("CT1@10.0.0.0/8") == AllowedCaller("CT1", ("10.0.0.0/8",))
    assert AllowedCaller.parse("CT1") == AllowedCaller("CT1", ())
    with pytest.raises(ConfigError, match="not an IP address"):
        AllowedCaller.parse("CT1@hospital.example")
    with pytest.raises(ConfigError, match="1-16 printable"):
        AllowedCaller.parse("A_TITLE_FAR_TOO_LONG@127.0.0.1")


def test_serve_allow_flag_replaces_the_list_end_to_end(tmp_path: Path) -> None:
    from tests.integration.node_process import NodeProcess

    node = NodeProcess(tmp_path).start("--allow", "ECHOSCU@127.0.0.1")
    try:
        assert node.echo("ECHOSCU").returncode == 0
        refused = node.echo("INTRUDER")
        assert refused.returncode != 0
        assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
    finally:
        node.stop()
    assert "'INTRUDER' at 127.0.0.1 to 'WRISTAI' rejected" in node.log()
    events = read_events(node.audit_path)
    accepted = {e["calling_aet"] for e in events if e["event"] == "association-accepted"}
    rejected = [e["calling_aet"] for e in events if e["event"] == "association-rejected"]
    assert accepted == {"ECHOSCU"} and rejected == ["INTRUDER"]
    # Everything the node wrote is the service user's alone (umask 077, spool 0o700/0o600).
    loose = [p for p in node.storage.rglob("*") if p.stat().st_mode & 0o077]
    assert loose == []


def test_check_config_shows_the_allow_list(capsys: pytest.CaptureFixture[str]) -> None:
    from dicomnode.cli import main

    assert main(["check-config", "--allow", "CR1@10.2.0.0/16", "--allow", "PACS"]) == 0
    out = capsys.readouterr().out
    assert "AllowedCaller(ae_title='CR1', addresses=('10.2.0.0/16',))" in out
    assert "AllowedCaller(ae_title='PACS', addresses=())" in out


def test_echoscu_from_an_unlisted_aet_is_refused_by_the_in_process_scp(scp: Scp) -> None:
    command = ["echoscu", "-aet", "STRANGER", "-aec", "WRISTAI", "127.0.0.1", str(scp.port)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
