"""The shared DICOM knowledge: UIDs, AE addresses, DIMSE statuses, atomic writes, timestamps."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime
from pathlib import Path

import pydicom.uid
import pytest
from pynetdicom.status import code_to_category

from pipeline.dicom import dimse
from pipeline.dicom.addresses import AeAddress, is_valid_ae_title
from pipeline.dicom.uids import (
    RADIOGRAPH_SOP_CLASSES,
    READABLE_TRANSFER_SYNTAXES,
    SR_SOP_CLASSES,
    STUDY_ROOT_FIND,
    STUDY_ROOT_GET,
    is_valid_uid,
)
from pipeline.files import atomic_write_bytes, atomic_write_text, atomic_writer
from pipeline.timestamps import utc_timestamp

# -- UIDs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uid",
    ["0", "1.2.0", "1.2.840.10008.5.1.4.1.1.1", "2.25.0", "1.0.10.100", "1." + "2" * 62],
)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "1.2.03",  # a leading zero in a component
        "01.2",
        "1.2.00",
        "1..2",
        ".1.2",
        "1.2.",
        "1.2.3\n",  # `$` in a regex would let this through
        " 1.2.3",
        "1.2.3a",
        "1/2",
        "..",
        "1.2.３",  # a full-width digit: str.isdigit says yes, DICOM says no
        "1." + "2" * 63,  # 65 characters
    ],
)
def test_invalid_uids(uid: str) -> None:
    assert not is_valid_uid(uid)


def test_uid_length_limit_is_64_characters() -> None:
    assert is_valid_uid("1." + "2" * 62) and len("1." + "2" * 62) == 64
    assert not is_valid_uid("1." + "2" * 63)


@pytest.mark.parametrize("value", [None, 1.2, b"1.2", ["1.2"]])
def test_non_strings_are_not_uids(value: object) -> None:
    assert not is_valid_uid(value)


def test_named_uids_are_the_standard_ones() -> None:
    assert set(RADIOGRAPH_SOP_CLASSES) == {
        pydicom.uid.ComputedRadiographyImageStorage,
        pydicom.uid.DigitalXRayImageStorageForPresentation,
        pydicom.uid.DigitalXRayImageStorageForProcessing,
        pydicom.uid.SecondaryCaptureImageStorage,
    }
    assert {
        pydicom.uid.ComprehensiveSRStorage,
        pydicom.uid.Comprehensive3DSRStorage,
    } == SR_SOP_CLASSES
    assert STUDY_ROOT_FIND.name == "Study Root Query/Retrieve Information Model - FIND"
    assert STUDY_ROOT_GET.name == "Study Root Query/Retrieve Information Model - GET"
    assert len(set(READABLE_TRANSFER_SYNTAXES)) == len(READABLE_TRANSFER_SYNTAXES) == 13
    assert all(s.is_transfer_syntax for s in READABLE_TRANSFER_SYNTAXES)
    every = [*RADIOGRAPH_SOP_CLASSES, *SR_SOP_CLASSES, STUDY_ROOT_FIND, STUDY_ROOT_GET]
    assert all(is_valid_uid(u) for u in [*every, *READABLE_TRANSFER_SYNTAXES])


# -- DIMSE statuses ------------------------------------------------------------------------


def test_dimse_statuses_fall_in_the_categories_pynetdicom_knows() -> None:
    assert code_to_category(dimse.SUCCESS) == "Success"
    for code in dimse.STORE_WARNINGS:
        assert code_to_category(code) == "Warning"
    for code in dimse.PENDING_STATUSES:
        assert code_to_category(code) == "Pending"
    for code in (
        dimse.OUT_OF_RESOURCES,
        dimse.DATA_SET_DOES_NOT_MATCH_SOP_CLASS,
        dimse.CANNOT_UNDERSTAND,
        dimse.PROCESSING_FAILURE,
    ):
        assert code_to_category(code) == "Failure"


# -- AE titles and addresses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PACS@127.0.0.1:104", AeAddress("PACS", "127.0.0.1", 104)),
        ("PACS@pacs.example.org:11112", AeAddress("PACS", "pacs.example.org", 11112)),
        ("PACS@[::1]:4242", AeAddress("PACS", "::1", 4242)),
        ("PACS@[fe80::1]:1", AeAddress("PACS", "fe80::1", 1)),
        ("MY PACS@h:65535", AeAddress("MY PACS", "h", 65535)),  # spaces are legal inside
        ("A@B@h:104", AeAddress("A@B", "h", 104)),  # "@" may be in a title, never in a host
        ("  PACS@h:104\n", AeAddress("PACS", "h", 104)),
    ],
)
def test_ae_address_parses(text: str, expected: AeAddress) -> None:
    assert AeAddress.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("PACS@host", "not of the form"),  # missing port
        ("PACS@host:", "port ''"),
        ("PACS@:104", "not of the form"),
        ("pacs:104", "not of the form"),  # no AE title
        ("@h:104", "AE title ''"),
        ("   @h:104", "AE title"),
        ("ABCDEFGHIJKLMNOPQ@h:104", "AE title 'ABCDEFGHIJKLMNOPQ'"),  # 17 characters
        ("BAD\\AE@h:104", "AE title"),
        ("PACS@h:0", "port '0'"),
        ("PACS@h:65536", "port '65536'"),
        ("PACS@h:x", "port 'x'"),
        ("PACS@h:-1", "port '-1'"),
        ("PACS@h:１０４", "port"),  # full-width digits
        ("PACS@::1:104", "in brackets"),  # IPv6 without brackets is ambiguous
        ("PACS@[::1:104", "not an IPv6 address"),
        ("PACS@[pacs]:104", "not an IPv6 address"),
        ("PACS@pa cs:104", "white space"),
    ],
)
def test_ae_address_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        AeAddress.parse(text)


def test_ae_address_prints_as_it_parses() -> None:
    for text in ("PACS@10.0.0.5:104", "PACS@[::1]:104", "X@pacs.local:11112"):
        assert str(AeAddress.parse(text)) == text


@pytest.mark.parametrize("title", ["A", "WRISTAI", "ABCDEFGHIJKLMNOP", " PACS ", "A-B_C.D@E"])
def test_valid_ae_titles(title: str) -> None:
    assert is_valid_ae_title(title)


@pytest.mark.parametrize("title", ["", "    ", "ABCDEFGHIJKLMNOPQ", "A\\B", "A\nB", "PACS\n", "Ä"])
def test_invalid_ae_titles(title: str) -> None:
    assert not is_valid_ae_title(title)


# -- atomic writes -------------------------------------------------------------------------


def test_atomic_write_replaces_the_file_privately(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "dir" / "state.json"
    atomic_write_text(target, "first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert os.listdir(target.parent) == ["state.json"]
    atomic_write_text(target, "third", mode=0o644)
    assert stat.S_IMODE(target.stat().st_mode) == 0o644


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "weights.pt"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk on fire"), atomic_writer(target) as handle:
        handle.write(b"half of the new")
        raise RuntimeError("disk on fire")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["weights.pt"]


def test_a_failed_first_write_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "new.csv"
    with pytest.raises(KeyboardInterrupt), atomic_writer(target):
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []


def test_atomic_write_fsyncs_the_file_and_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def spy(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy)
    target = tmp_path / "a.png"
    atomic_write_bytes(target, b"png")
    assert len(synced) == 2
    assert Path(synced[0]).parent == tmp_path and Path(synced[0]).name.endswith(".part")
    assert synced[1] == str(tmp_path)  # after the rename: the rename itself is durable


# -- timestamps ----------------------------------------------------------------------------


def test_utc_timestamp_is_iso_8601_utc_with_a_zone() -> None:
    assert utc_timestamp(0) == "1970-01-01T00:00:00Z"
    assert utc_timestamp(1_700_000_000.123456) == "2023-11-14T22:13:20Z"
    with_ms = utc_timestamp(1_700_000_000.123456, timespec="milliseconds")
    assert with_ms == "2023-11-14T22:13:20.123Z" and len(with_ms) == 24
    parsed = datetime.fromisoformat(utc_timestamp(1_700_000_000))
    assert parsed.tzinfo is not None and parsed.utcoffset() == UTC.utcoffset(None)
    assert parsed.timestamp() == 1_700_000_000


def test_utc_timestamp_ignores_the_local_time_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert utc_timestamp(0) == "1970-01-01T00:00:00Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_utc_timestamp_defaults_to_now() -> None:
    now = datetime.fromisoformat(utc_timestamp()).timestamp()
    assert abs(now - datetime.now(UTC).timestamp()) < 5
