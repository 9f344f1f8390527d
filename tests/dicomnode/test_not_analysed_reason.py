"""What a radiologist reads in a "not analysed" SR: the deciding cue and its value, per refusal.

The same pelvis image is sent with four Body Part Examined values; each is refused by another
rule, and the SR's finding says which cue decided and with what value, on one line.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from dicomnode.analysis import analyse_study
from dicomnode.index import InstanceRow
from dicomnode.spool import Spool
from pipeline.inference import ModelBundle
from tests.dicomnode.test_reports import _dciodvfy_errors
from train.phantoms.archive import generate_archive, read_truth

BUNDLE = Path(__file__).resolve().parents[2] / "config" / "models" / "wrist-demo"


@pytest.fixture(scope="module")
def pelvis(tmp_path_factory: pytest.TempPathFactory) -> pydicom.Dataset:
    archive = tmp_path_factory.mktemp("reason-archive")
    generate_archive(archive, studies=16, seed=5, syntaxes=("explicit_le",), workers=1)
    row = next(r for r in read_truth(archive) if r["body_part"] == "pelvis" and not r["corrupt"])
    return pydicom.dcmread(archive / row["path"])


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.load(BUNDLE)


def _finding(source: pydicom.Dataset, tag: str, bundle: ModelBundle, tmp_path: Path) -> str:
    """Send `source` retagged as `tag`; return the "not analysed" SR's finding text."""
    dataset = source.copy()
    dataset.BodyPartExamined = tag
    dataset.StudyDescription = dataset.SeriesDescription = ""  # the tag alone speaks
    dataset.StudyInstanceUID = generate_uid()
    dataset.SOPInstanceUID = generate_uid()
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    path = tmp_path / "instance.dcm"
    dataset.save_as(path, enforce_file_format=True)
    row = InstanceRow(str(dataset.SOPInstanceUID), str(dataset.StudyInstanceUID),
                      str(dataset.SeriesInstanceUID), str(dataset.SOPClassUID), path,
                      "MODALITY", "a1", 0.0, False)  # fmt: skip
    outcome = analyse_study(str(dataset.StudyInstanceUID), [row], bundle,
                            Spool(tmp_path / "results"), report_out_of_scope=True)  # fmt: skip
    assert not outcome.in_scope and len(outcome.files) == 1
    assert _dciodvfy_errors(outcome.files[0]) == []
    sr = pydicom.dcmread(outcome.files[0])
    texts = [str(e.value) for e in sr.iterall() if e.keyword == "TextValue"]
    (finding,) = [t for t in texts if t.startswith("Not analysed")]
    assert "\n" not in finding and str(source.PatientName) not in finding
    return finding


LOOKS = "image looks like a pelvis, not a wrist (view reader: pelvis p="
READER_SAYS = "view reader: wrist probability 0."


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        # The demo bundle carries the view reader: it decides the image check and says what
        # the image looks like; a tag that names another body part refuses before it is asked.
        ("WRIST", (LOOKS, "'WRIST'", READER_SAYS, "below the veto threshold 0.20")),
        ("", (LOOKS, "No tag or description", READER_SAYS, "below 0.50")),
        ("ARM", (LOOKS, "arm term 'ARM'", READER_SAYS, "below 0.50")),
        ("BASSIN", ("matches other term 'BASSIN' (score 100)", "extremity score 0.")),
    ],
)
def test_the_not_analysed_sr_names_the_deciding_cue_and_its_value(
    pelvis: pydicom.Dataset,
    bundle: ModelBundle,
    tmp_path: Path,
    tag: str,
    expected: tuple[str, ...],
) -> None:
    finding = _finding(pelvis, tag, bundle, tmp_path)
    assert finding.startswith("Not analysed: no wrist view to analyse: ")
    for part in expected:
        assert part in finding, finding
