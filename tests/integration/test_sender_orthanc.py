"""`send_files` against a real Orthanc: stores, resends idempotently, fails cleanly."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, AllStoragePresentationContexts, evt

from dicomnode.config import Destination
from dicomnode.sender import send_files
from pipeline.dicom import dimse
from tests.integration.orthanc import OrthancServer, free_port
from train.phantoms.archive import generate_archive, read_truth

pytestmark = pytest.mark.integration

CALLING_AET = "WRISTAI"
UNCOMPRESSED = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]


class StrictOrthanc(OrthancServer):
    """An Orthanc that checks the called AE title and takes uncompressed syntaxes only."""

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            "DicomCheckCalledAet": True,
            "AcceptedTransferSyntaxes": UNCOMPRESSED,
        }


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[dict[str, str]]]:
    """Three readable instances, compressed and uncompressed ones, with their truth rows."""
    out = tmp_path_factory.mktemp("sender-archive")
    generate_archive(out, studies=2, seed=9, size="small", workers=1)
    readable = [row for row in read_truth(out) if row["corrupt"] == ""]
    compressed = [r for r in readable if r["transfer_syntax"] != "explicit_le"]
    plain = [r for r in readable if r["transfer_syntax"] == "explicit_le"]
    rows = (compressed[:2] + plain)[:3]
    assert len(rows) == 3 and len({r["transfer_syntax"] for r in rows}) >= 2
    return [out / r["path"] for r in rows], rows


@pytest.fixture
def strict_orthanc(tmp_path: Path) -> Iterator[StrictOrthanc]:
    server = StrictOrthanc(tmp_path / "strict")
    with server:
        yield server


def _stored_uids(pacs: OrthancServer) -> set[str]:
    return {pacs.get(f"/instances/{i}/simplified-tags")["SOPInstanceUID"] for i in pacs.instances()}


def test_sends_every_file_and_a_resend_is_idempotent(
    orthanc: OrthancServer,
    sample: tuple[list[Path], list[dict[str, str]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="dicomnode.sender")
    files, rows = sample
    destination = Destination(orthanc.aet, "127.0.0.1", orthanc.dicom_port)

    result = send_files(destination, files, calling_aet=CALLING_AET, timeout_s=10)

    assert result.connected and result.all_sent, result.outcomes
    assert [o.status for o in result.outcomes] == [dimse.SUCCESS] * 3
    assert [o.sop_instance_uid for o in result.outcomes] == [r["sop_instance_uid"] for r in rows]
    assert _stored_uids(orthanc) == {r["sop_instance_uid"] for r in rows}
    lines = [r.getMessage() for r in caplog.records if r.name == "dicomnode.sender"]
    assert len(lines) == 3
    for line, row in zip(lines, rows, strict=True):
        assert row["sop_instance_uid"] in line and orthanc.aet in line and "0x0000" in line
        assert row["patient_id"] not in line

    again = send_files(destination, files, calling_aet=CALLING_AET, timeout_s=10)

    assert again.all_sent, again.outcomes
    assert len(orthanc.instances()) == 3
    assert orthanc.study_count() == len({r["study_instance_uid"] for r in rows})


def test_nothing_listening_gives_reasons_not_exceptions(
    sample: tuple[list[Path], list[dict[str, str]]],
) -> None:
    files, _ = sample
    destination = Destination("ORTHANC", "127.0.0.1", free_port())

    result = send_files(destination, files, calling_aet=CALLING_AET, timeout_s=5)

    assert not result.connected and not result.all_sent
    for outcome in result.outcomes:
        assert not outcome.sent and outcome.status is None
        assert "connection refused" in outcome.reason
        assert str(destination.port) in outcome.reason


def test_a_wrong_called_ae_title_is_rejected_by_a_checking_orthanc(
    strict_orthanc: StrictOrthanc, sample: tuple[list[Path], list[dict[str, str]]]
) -> None:
    files, _ = sample
    wrong = Destination("NOT-ORTHANC", "127.0.0.1", strict_orthanc.dicom_port)

    result = send_files(wrong, files, calling_aet=CALLING_AET, timeout_s=10)

    assert not result.connected
    for outcome in result.outcomes:
        assert not outcome.sent and outcome.status is None
        # Orthanc answers A-ASSOCIATE-RJ; under load it has been seen to drop the connection
        # instead. Either way nothing is sent and the reason says what happened.
        if outcome.reason.startswith("association rejected by PACS: "):
            assert "Called AE title not recognised" in outcome.reason
        else:
            assert outcome.reason.startswith("PACS aborted the association"), outcome.reason
    assert strict_orthanc.instances() == []


def test_compressed_files_fall_back_to_uncompressed_syntaxes(
    strict_orthanc: StrictOrthanc, sample: tuple[list[Path], list[dict[str, str]]]
) -> None:
    files, rows = sample
    destination = Destination(strict_orthanc.aet, "127.0.0.1", strict_orthanc.dicom_port)

    result = send_files(destination, files, calling_aet=CALLING_AET, timeout_s=10)

    assert result.connected and result.all_sent, result.outcomes
    assert _stored_uids(strict_orthanc) == {r["sop_instance_uid"] for r in rows}
    for instance in strict_orthanc.instances():
        meta = strict_orthanc.get(f"/instances/{instance}/header?simplify")
        assert meta["TransferSyntaxUID"] in UNCOMPRESSED
    source = pydicom.dcmread(files[0])
    assert source.file_meta.TransferSyntaxUID.is_compressed  # the fallback was exercised


def test_a_failure_status_from_a_real_scp_is_recorded_not_sent(
    sample: tuple[list[Path], list[dict[str, str]]],
) -> None:
    files, _ = sample
    scp = AE(ae_title="FULLPACS")
    scp.supported_contexts = AllStoragePresentationContexts
    port = free_port()
    handlers: list[Any] = [(evt.EVT_C_STORE, lambda event: dimse.OUT_OF_RESOURCES)]
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers)
    assert server is not None
    try:
        result = send_files(
            Destination("FULLPACS", "127.0.0.1", port), files, calling_aet=CALLING_AET, timeout_s=10
        )
    finally:
        server.shutdown()

    assert result.connected and not result.all_sent
    for outcome in result.outcomes:
        assert outcome.status == dimse.OUT_OF_RESOURCES and not outcome.sent
        assert outcome.reason == "peer returned 0xA700 Refused: Out of Resources"
