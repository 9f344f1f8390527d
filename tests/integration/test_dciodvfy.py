"""dciodvfy (dicom3tools) validates one synthetic instance per SOP class and transfer syntax,
and the presentation states the node writes."""

from __future__ import annotations

import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pydicom
import pytest

from dicomnode.reports import build_gsps
from tests.conftest import require_tool
from tests.dicomnode.gsps_study import build_study, marked
from tests.integration.orthanc import OrthancServer
from train.phantoms.archive import read_truth, write_instance_file
from train.phantoms.encoding import TRANSFER_SYNTAXES
from train.phantoms.plan import plan_study

pytestmark = pytest.mark.integration

SOP_KINDS = ("CR", "DX_PRESENTATION", "DX_PROCESSING", "SC_GREY8", "SC_GREY16", "SC_RGB")
RGB_SYNTAXES = ("explicit_le", "implicit_le", "deflated", "rle")


def _dciodvfy(path: Path, tmp: Path) -> list[str]:
    """dciodvfy's error lines. It cannot inflate Deflated files, so those are inflated first
    by dcmtk's dcmconv (a lossless change of encoding only)."""
    target = path
    syntax = pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
    if syntax == TRANSFER_SYNTAXES["deflated"].uid:
        target = tmp / f"inflated-{path.name}"
        dcmconv = require_tool("dcmconv")
        subprocess.run([dcmconv, "+te", str(path), str(target)], check=True, timeout=60)
    result = subprocess.run(
        [require_tool("dciodvfy"), str(target)], capture_output=True, timeout=60
    )
    lines = result.stderr.decode("latin-1").splitlines()
    return [line for line in lines if line.startswith("Error")]


def _coverage_sample(out: Path) -> list[dict[str, str]]:
    """One instance per SOP class x transfer syntax the encoder allows, from a wrist study."""
    plan = next(
        p
        for i in range(200)
        if (p := plan_study(17, i, size="small", n_patients=100)).body_part == "wrist"
        and p.conformant
        and p.has_images
    )
    base = plan.instances[0]
    rng = np.random.default_rng(0)
    rows = []
    for kind in SOP_KINDS:
        for syntax, spec in TRANSFER_SYNTAXES.items():
            if kind == "SC_RGB" and syntax not in RGB_SYNTAXES:
                continue
            bits = 8 if kind in ("SC_GREY8", "SC_RGB") else 12
            bits = {"jpeg_baseline": 8, "jpeg_extended": 12}.get(syntax, min(bits, spec.max_bits))
            voi = "none" if kind in ("DX_PROCESSING", "SC_RGB") else "window"
            instance = replace(
                base,
                sop_kind=kind,
                syntax=syntax,
                bits_stored=bits,
                voi=voi,
                corrupt="",
                sop_instance_uid=f"{base.sop_instance_uid}.{len(rows) + 1}",
            )
            rows.append(write_instance_file(out, plan, instance, rng))
    return rows


def test_every_sop_class_in_every_syntax_passes_dciodvfy(tmp_path: Path) -> None:
    rows = _coverage_sample(tmp_path)
    assert len(rows) == 5 * len(TRANSFER_SYNTAXES) + len(RGB_SYNTAXES)
    failures = {
        f"{row['sop_kind']}/{row['transfer_syntax']}": errors
        for row in rows
        if (errors := _dciodvfy(tmp_path / row["path"], tmp_path))
    }
    assert failures == {}


def test_archive_instances_pass_dciodvfy_except_legacy_tags(
    synthetic_archive: Path, tmp_path: Path
) -> None:
    checked = 0
    for row in read_truth(synthetic_archive):
        if row["corrupt"]:
            continue
        errors = _dciodvfy(synthetic_archive / row["path"], tmp_path)
        if row["conformant"] == "1":
            assert errors == [], row["path"]
        else:
            # Legacy free text in Body Part Examined: the only error dciodvfy may report.
            assert all("Body Part Examined" in e or "invalid data values" in e for e in errors)
        checked += 1
    assert checked > 100


def test_projection_world_instances_pass_dciodvfy(tmp_path: Path) -> None:
    """The second renderer's archive: every decoy body part, oblique views, every SOP kind."""
    from train.phantoms.archive import generate_archive

    generate_archive(
        tmp_path / "p",
        studies=60,
        seed=31,
        renderer="projection",
        workers=2,
        syntaxes=("explicit_le", "rle", "jpegls_lossless", "j2k_lossless"),
    )
    rows = [r for r in read_truth(tmp_path / "p") if not r["corrupt"]]
    assert {r["renderer"] for r in rows} == {"projection"}
    assert len({r["body_part"] for r in rows}) >= 6 and any(r["view"] == "OBL" for r in rows)
    failures = {}
    for row in rows:
        errors = _dciodvfy(tmp_path / "p" / row["path"], tmp_path)
        if row["conformant"] == "1" and errors:
            failures[row["path"]] = errors
        elif row["conformant"] != "1":
            assert all("Body Part Examined" in e or "invalid data values" in e for e in errors)
    assert failures == {}


def test_presentation_states_pass_dciodvfy_and_orthanc_stores_them(
    tmp_path: Path, orthanc: OrthancServer
) -> None:
    """The node's GSPS, with marks (likely; possible, with and without a region) and without, on
    MONOCHROME2 and MONOCHROME1 images: no dciodvfy error, and Orthanc keeps each as a PR."""
    study = build_study(tmp_path / "study")
    cases = [[0.97, 0.4], [0.4], [0.05]]  # per image: its views' probabilities
    for index, probabilities in enumerate(cases):
        number = index + 1
        views, prediction = marked(study, index, probabilities)
        gsps = build_gsps(views, prediction, study.sources[index], study.context,
                          instance_number=number)  # fmt: skip
        path = tmp_path / f"gsps{number}.dcm"
        gsps.save_as(path, enforce_file_format=True)
        assert _dciodvfy(path, tmp_path) == [], (number, probabilities)
        answer = orthanc.upload(path)
        assert answer["Status"] == "Success"
        stored = orthanc.get(f"/instances/{answer['ID']}/simplified-tags")
        assert (stored["Modality"], stored["SOPInstanceUID"]) == ("PR", gsps.SOPInstanceUID)
    for path in study.paths:
        orthanc.upload(path)
    assert orthanc.study_count() == 1  # the presentation states sit in their images' study
