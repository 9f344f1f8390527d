"""The Storage SCP against real dcmtk peers on 127.0.0.1: every syntax stored durably and
indexed, foreign SOP classes refused, failures answered with named statuses."""

from __future__ import annotations

import errno
import logging
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pydicom
import pydicom.data
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from dicomnode.association_log import MAX_PROBLEM_LINES, AssociationTally
from dicomnode.config import Config, with_overrides
from dicomnode.identity import MANUFACTURER, SERIES_DESCRIPTION_PREFIX
from dicomnode.index import Index
from dicomnode.scp import handle_store, start_server
from dicomnode.spool import Spool
from pipeline.dicom import dimse
from pipeline.dicom.uids import RADIOGRAPH_SOP_CLASSES as SUPPORTED_SOP_CLASSES
from pipeline.dicom.uids import READABLE_TRANSFER_SYNTAXES as TRANSFER_SYNTAXES
from train.phantoms.archive import generate_archive, read_truth
from train.phantoms.encoding import TRANSFER_SYNTAXES as PHANTOM_SYNTAXES

TIMEOUT_S = 60


@pytest.fixture(scope="module")
def archive_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Readable synthetic instances: the brief's archive plus one study in every syntax."""
    root = tmp_path_factory.mktemp("scp_archive")
    archives = [root / "main"]
    generate_archive(root / "main", studies=4, seed=2, size="small", workers=1)
    for seed, name in enumerate(PHANTOM_SYNTAXES, start=100):  # seeds apart: distinct UIDs
        archives.append(root / name)
        generate_archive(root / name, studies=1, seed=seed, size="small", syntaxes=(name,))
    return [a / r["path"] for a in archives for r in read_truth(a) if r["corrupt"] == ""]


@pytest.fixture(scope="module")
def scu_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A storescu profile proposing each SOP class in each syntax, one context apiece, so
    every file goes as it is on disk (storescu's flags propose one compressed family only)."""
    lines = ["[[TransferSyntaxes]]"]
    for i, syntax in enumerate(TRANSFER_SYNTAXES):
        lines += [f"[TS{i}]", f"TransferSyntax1 = {syntax}"]
    lines += ["[[PresentationContexts]]", "[All]"]
    pairs = [(sop, i) for sop in sorted(SUPPORTED_SOP_CLASSES) for i in range(13)]
    lines += [f"PresentationContext{n} = {sop}\\TS{i}" for n, (sop, i) in enumerate(pairs, 1)]
    lines += ["[[Profiles]]", "[All]", "PresentationContexts = All"]
    path = tmp_path_factory.mktemp("scu") / "storescu.cfg"
    path.write_text("\n".join(lines) + "\n")
    return path


class Node:
    """A running SCP with its spool and index."""

    def __init__(self, tmp_path: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])
        config = with_overrides(
            Config(), node={"port": self.port}, storage={"path": tmp_path / "spool"}
        )
        self.spool = Spool(config.storage.path)
        self.index = Index(config.storage.path / "index.sqlite")
        self.server = start_server(config, self.spool, self.index)

    def storescu(self, *args: str | Path, profile: Path | None = None) -> Any:
        flags = ["-xf", str(profile), "All"] if profile else []
        command = ["storescu", "-v", *flags, "-aec", "WRISTAI", "127.0.0.1", str(self.port)]
        return subprocess.run(
            [*command, *map(str, args)], capture_output=True, text=True, timeout=TIMEOUT_S
        )

    def released(self, study_uid: str) -> float | None:
        deadline = time.monotonic() + 10  # the release handler runs in the server's thread
        while time.monotonic() < deadline:
            study = self.index.study(study_uid)
            if study is not None and study.released_at is not None:
                return study.released_at
            time.sleep(0.05)
        return None


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    running = Node(tmp_path)
    yield running
    running.server.shutdown()
    running.index.close()


def test_every_syntax_is_stored_unchanged_indexed_and_released(
    node: Node, archive_files: list[Path], scu_config: Path
) -> None:
    syntaxes = {str(pydicom.dcmread(f, stop_before_pixels=True).file_meta.TransferSyntaxUID)
                for f in archive_files}  # fmt: skip
    assert syntaxes == {str(s) for s in TRANSFER_SYNTAXES}
    started = time.time()
    result = node.storescu(*archive_files, profile=scu_config)
    assert result.returncode == 0, result.stdout + result.stderr
    studies = set()
    for source in archive_files:
        sent = pydicom.dcmread(source)
        study_uid, sop_uid = str(sent.StudyInstanceUID), str(sent.SOPInstanceUID)
        stored = pydicom.dcmread(node.spool.path(study_uid, sop_uid))
        sent_syntax, stored_syntax = (d.file_meta.TransferSyntaxUID for d in (sent, stored))
        assert stored_syntax == sent_syntax and stored.PixelData == sent.PixelData
        assert stored == sent
        studies.add(study_uid)
        (row,) = [i for i in node.index.instances(study_uid) if i.sop_uid == sop_uid]
        assert row.path == node.spool.path(study_uid, sop_uid) and not row.ours
        assert row.calling_aet == "STORESCU" and row.received_at >= started
    assert node.index.counts()["instances"] == len(archive_files)
    for study_uid in studies:
        released = node.released(study_uid)
        assert released is not None and released >= started
    assert list(node.spool.incoming.iterdir()) == []


def test_foreign_sop_class_is_refused_at_negotiation(node: Node) -> None:
    result = node.storescu(pydicom.data.get_testdata_file("MR_small.dcm"))
    assert result.returncode != 0
    assert "No presentation context" in result.stdout + result.stderr
    assert node.index.counts()["instances"] == 0


def test_echoscu_is_answered(node: Node) -> None:
    result = subprocess.run(
        ["echoscu", "-aec", "WRISTAI", "127.0.0.1", str(node.port)],
        capture_output=True,
        timeout=TIMEOUT_S,
    )
    assert result.returncode == 0


def test_our_own_result_is_stored_but_flagged(
    node: Node, archive_files: list[Path], tmp_path: Path
) -> None:
    ds = pydicom.dcmread(archive_files[0])
    assert node.storescu(archive_files[0]).returncode == 0
    node.index.set_state(str(ds.StudyInstanceUID), "done")
    ds.Manufacturer = MANUFACTURER
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(tmp_path / "ours.dcm")
    assert node.storescu(tmp_path / "ours.dcm").returncode == 0
    assert node.spool.path(ds.StudyInstanceUID, ds.SOPInstanceUID).exists()
    rows = node.index.instances(ds.StudyInstanceUID, include_ours=True)
    assert [r.ours for r in rows if r.sop_uid == ds.SOPInstanceUID] == [True]
    study = node.index.study(ds.StudyInstanceUID)
    assert study is not None and study.state == "done" and not study.needs_revision


def test_full_disk_is_out_of_resources_and_the_node_keeps_serving(
    node: Node, archive_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(self: Spool, study_uid: str, sop_uid: str, data: bytes) -> Path:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Spool, "store", full)
    refused = node.storescu(archive_files[0])
    assert refused.returncode != 0
    assert "Refused: OutOfResources" in refused.stdout + refused.stderr
    assert node.index.counts()["instances"] == 0
    monkeypatch.undo()
    assert node.storescu(archive_files[0]).returncode == 0
    assert node.index.counts()["instances"] == 1


def test_instance_without_study_uid_cannot_be_understood(
    node: Node, archive_files: list[Path], tmp_path: Path
) -> None:
    ds = pydicom.dcmread(archive_files[0])
    del ds.StudyInstanceUID
    ds.save_as(tmp_path / "nostudy.dcm")
    result = node.storescu(tmp_path / "nostudy.dcm")
    assert result.returncode != 0 and "Error: CannotUnderstand" in result.stdout + result.stderr
    assert list(node.spool.instances.iterdir()) == []


# --- the handler alone, with fake events ---------------------------------------------------


def _event(ds: Dataset, *, sop_class: str | None = None) -> Any:
    encoded = encode(ds, False, True)
    request = C_STORE()
    request.AffectedSOPClassUID = UID(sop_class or ds.SOPClassUID)
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    requestor = SimpleNamespace(ae_title="FAKE", address="127.0.0.1")
    return SimpleNamespace(
        context=SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian),
        encoded_dataset=lambda include_meta=True: encoded,
        request=request,
        assoc=SimpleNamespace(name="fake-assoc", requestor=requestor),
    )


def _dataset(archive_files: list[Path]) -> Dataset:
    return pydicom.dcmread(archive_files[0])


class _Exploding:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no {name}")


def test_handler_never_raises(tmp_path: Path) -> None:
    spool, index = Spool(tmp_path), Index(tmp_path / "i.sqlite")
    assert handle_store(_Exploding(), spool, index) == dimse.CANNOT_UNDERSTAND  # type: ignore[arg-type]
    broken = SimpleNamespace(context=_Exploding(), encoded_dataset=_Exploding())
    assert handle_store(broken, spool, index) == dimse.CANNOT_UNDERSTAND  # type: ignore[arg-type]


def test_handler_statuses(
    tmp_path: Path, archive_files: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spool, index = Spool(tmp_path), Index(tmp_path / "i.sqlite")
    ds = _dataset(archive_files)
    mismatch = _event(ds, sop_class="1.2.840.10008.5.1.4.1.1.4")
    assert handle_store(mismatch, spool, index) == dimse.DATA_SET_DOES_NOT_MATCH_SOP_CLASS
    bad = _dataset(archive_files)
    bad.SeriesInstanceUID = "1.2.x"
    assert handle_store(_event(bad), spool, index) == dimse.CANNOT_UNDERSTAND

    def broken_disk(self: Spool, study_uid: str, sop_uid: str, data: bytes) -> Path:
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patch:
        patch.setattr(Spool, "store", broken_disk)
        assert handle_store(_event(ds), spool, index) == dimse.PROCESSING_FAILURE
    index.close()  # an index that fails after the write: not acknowledged
    assert handle_store(_event(ds), spool, index) == dimse.PROCESSING_FAILURE
    fresh = Index(tmp_path / "i2.sqlite")
    assert handle_store(_event(ds), spool, fresh) == dimse.SUCCESS
    assert fresh.counts()["instances"] == 1
    ds.SeriesDescription = f"{SERIES_DESCRIPTION_PREFIX} - heat map"
    ds.SOPInstanceUID = generate_uid()
    assert handle_store(_event(ds), spool, fresh) == dimse.SUCCESS
    rows = fresh.instances(ds.StudyInstanceUID, include_ours=True)
    assert [r.ours for r in rows if r.sop_uid == ds.SOPInstanceUID] == [True]


# --- the log: one summary line per association, bounded whatever the caller proposes --------


def _summaries(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    lines = [r for r in caplog.records if r.name == "dicomnode.scp" and r.levelno >= logging.INFO]
    return [r for r in lines if r.getMessage().startswith("association ")]


def test_an_association_proposing_128_contexts_logs_one_summary_line(
    node: Node, archive_files: list[Path], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="dicomnode")
    study_uid = str(pydicom.dcmread(archive_files[0], stop_before_pixels=True).StudyInstanceUID)
    # dcmtk proposes 128 contexts: the storage SOP classes it knows, in two transfer syntaxes
    result = node.storescu(archive_files[0])
    assert result.returncode == 0, result.stdout + result.stderr
    deadline = time.monotonic() + 10  # the release handler runs in the server's thread
    while not _summaries(caplog) and time.monotonic() < deadline:
        time.sleep(0.05)
    (summary,) = _summaries(caplog)
    assert summary.levelno == logging.INFO
    line = summary.getMessage()
    match = re.fullmatch(
        r"association assoc-\w+ released after [\d.]+ s \(STORESCU at 127\.0\.0\.1\): "
        rf"1 stored in 1 study \({re.escape(study_uid)}\), 0 failed; refused (\d+) of (\d+) "
        r"presentation contexts \(SOP class not served: (\d+)(, .*)?\)",
        line,
    )
    assert match, line
    refused, proposed = int(match[1]), int(match[2])
    assert refused >= 60 and proposed > refused  # storescu's ~90 contexts minus the node's
    node_records = [r for r in caplog.records if r.name.startswith("dicomnode")]
    assert [r for r in node_records if r.levelno >= logging.INFO] == [summary]
    assert len(node_records) <= 5  # accepted, stored (DEBUG), the summary: no line per context
    (accepted,) = [r for r in node_records if " accepted; refused: " in r.getMessage()]
    assert accepted.levelno == logging.DEBUG and "; and " in accepted.getMessage()  # bounded


def test_store_problems_are_logged_at_most_ten_times_per_association() -> None:
    tally = AssociationTally("assoc-1", "CR1", "10.0.0.7", opened=100.0, proposed=3)
    levels = [tally.problem_level(logging.WARNING) for _ in range(25)]
    assert levels == [logging.WARNING] * MAX_PROBLEM_LINES + [logging.DEBUG] * 15
    for status, study in [(dimse.SUCCESS, "1.2.1"), (dimse.SUCCESS, "1.2.1"),
                          (dimse.WARNING_ELEMENTS_DISCARDED, "1.2.2"),
                          (dimse.CANNOT_UNDERSTAND, "(invalid)"),
                          (dimse.OUT_OF_RESOURCES, "1.2.3"),
                          (dimse.CANNOT_UNDERSTAND, "1.2.3")]:  # fmt: skip
        tally.record_store(status, study)
    tally.refused.update({"SOP class not served": 1})
    assert tally.summary(released=False, now=102.5) == (
        "association assoc-1 aborted after 2.5 s (CR1 at 10.0.0.7): 3 stored in 2 studies "
        "(1.2.1, 1.2.2), 3 failed (cannot understand: 2, out of resources: 1); refused 1 of 3 "
        "presentation contexts (SOP class not served: 1)"
    )
    for i in range(7):
        tally.record_store(dimse.SUCCESS, f"1.3.{i}")
    assert "in 9 studies (1.2.1, 1.2.2, 1.3.0, 1.3.1, 1.3.2 and 4 more)" in tally.summary(
        released=True
    )
    echo = AssociationTally("assoc-2", "ECHOSCU", "::1", opened=0.0, echoes=1)
    assert echo.summary(released=True, now=0.0).endswith("(ECHOSCU at ::1): 1 C-ECHO")
