"""`dicomnode-train fetch` against a real Orthanc: C-FIND + C-GET, byte-exact, resumable."""

from __future__ import annotations

import argparse
import csv
import logging
from collections import defaultdict
from pathlib import Path

import pydicom
import pytest

from tests.integration.orthanc import OrthancServer, free_port
from train.fetch import (
    DEFAULT_CALLING_AET,
    PacsAddress,
    StudyRequest,
    add_fetch_command,
    fetch_studies,
)
from train.phantoms.archive import generate_archive, read_truth

pytestmark = pytest.mark.integration

UNKNOWN_ACCESSION = "NO-SUCH-ACC"


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("source-archive")
    generate_archive(out, studies=6, seed=3, size="small", workers=1)
    return out


def _readable_instances(archive: Path) -> dict[str, list[dict[str, str]]]:
    """The truth rows of every non-corrupt instance, by Study Instance UID."""
    studies: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in read_truth(archive):
        if not row["corrupt"]:
            studies[row["study_instance_uid"]].append(row)
    return studies


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="dicomnode-train")
    add_fetch_command(parser.add_subparsers(required=True))
    args = parser.parse_args(["fetch", *argv])
    code: int = args.run(args)
    return code


def _write_csv(path: Path, column: str, values: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([column, "label"])
        writer.writerows([value, "0"] for value in values)
    return path


def test_fetch_is_byte_exact_and_resumable(
    orthanc: OrthancServer,
    archive: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="train.fetch")
    orthanc.add_modality(DEFAULT_CALLING_AET, free_port())
    studies = _readable_instances(archive)
    for rows in studies.values():
        for row in rows:
            orthanc.upload(archive / row["path"])
    assert orthanc.study_count() == len(studies)

    # The four studies with the most distinct transfer syntaxes (big endian, deflated, RLE...).
    chosen = sorted(studies, key=lambda s: (-len({r["transfer_syntax"] for r in studies[s]}), s))
    wanted, spare = chosen[:4], chosen[4]
    accessions = [studies[s][0]["accession_number"] for s in wanted]
    requests = _write_csv(
        tmp_path / "accessions.csv", "accession_number", [*accessions, UNKNOWN_ACCESSION]
    )
    out = tmp_path / "fetched"
    pacs = f"{orthanc.aet}@127.0.0.1:{orthanc.dicom_port}"

    assert _run(["--pacs", pacs, "--accessions", str(requests), "--out", str(out)]) == 1
    summary = capsys.readouterr().out.strip()
    n_instances = sum(len(studies[s]) for s in wanted)
    assert summary == (
        f"fetch: 4 studies fetched, 0 skipped, 1 not found, 0 failed; {n_instances} instances"
    )
    assert f"accession {UNKNOWN_ACCESSION}: not found" in caplog.text

    fetched = sorted((out / "dicom").glob("*/*.dcm"))
    assert len(fetched) == n_instances
    for study_uid in wanted:
        for row in studies[study_uid]:
            target = out / "dicom" / study_uid / f"{row['sop_instance_uid']}.dcm"
            original, copy = pydicom.dcmread(archive / row["path"]), pydicom.dcmread(target)
            assert copy.SOPInstanceUID == original.SOPInstanceUID
            assert copy.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID
            assert copy.PixelData == original.PixelData, row["transfer_syntax"]
    assert not list(out.rglob("*.part")), "no temp file left behind"
    patient_ids = {row["patient_id"] for rows in studies.values() for row in rows}
    assert not any(pid in caplog.text for pid in patient_ids)

    # A second run finds everything complete and transfers nothing.
    mtimes = {path: path.stat().st_mtime_ns for path in fetched}
    caplog.clear()
    assert _run(["--pacs", pacs, "--accessions", str(requests), "--out", str(out)]) == 1
    assert capsys.readouterr().out.strip() == (
        "fetch: 0 studies fetched, 4 skipped, 1 not found, 0 failed; 0 instances"
    )
    assert {path: path.stat().st_mtime_ns for path in fetched} == mtimes

    # A study whose C-GET has failed sub-operations (here: its folder cannot be created) is
    # reported failed and not recorded complete; the next run fetches it.
    blocker = out / "dicom" / spare
    blocker.write_bytes(b"")
    failed = fetch_studies(_pacs(orthanc), _requests_by_uid([spare]), out, timeout=10.0)
    assert (failed.failed, failed.fetched, failed.ok) == (1, 0, False)
    assert failed.outcomes[0].message.startswith(f"study {spare}: refused 1 instance(s)")
    blocker.unlink()

    # Programmatic use, by Study Instance UID: only the new study is fetched.
    result = fetch_studies(_pacs(orthanc), _requests_by_uid([wanted[0], spare]), out, timeout=10.0)
    assert (result.fetched, result.skipped, result.not_found, result.failed) == (1, 1, 0, 0)
    assert result.instances == len(studies[spare]) and result.ok
    assert len(list((out / "dicom" / spare).glob("*.dcm"))) == len(studies[spare])


def test_unreachable_pacs_is_one_clear_error_per_study(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    requests = _write_csv(tmp_path / "accessions.csv", "accession_number", ["A1", "A2"])
    port = free_port()
    pacs, out = f"PACS@127.0.0.1:{port}", tmp_path / "out"
    code = _run(
        ["--pacs", pacs, "--accessions", str(requests), "--out", str(out), "--timeout", "5"]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out.strip() == (
        "fetch: 0 studies fetched, 0 skipped, 0 not found, 2 failed; 0 instances"
    )
    for accession in ("A1", "A2"):
        assert f"accession {accession}: PACS PACS@127.0.0.1:{port} is unreachable" in caplog.text
    assert "Traceback" not in captured.err + caplog.text
    assert not (out / "fetch_state.json").exists()


def _pacs(server: OrthancServer) -> PacsAddress:
    return PacsAddress(server.aet, "127.0.0.1", server.dicom_port)


def _requests_by_uid(study_uids: list[str]) -> list[StudyRequest]:
    return [StudyRequest(study_instance_uid=uid) for uid in study_uids]
