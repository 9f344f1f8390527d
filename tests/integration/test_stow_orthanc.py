"""DICOMweb STOW-RS destinations against a real Orthanc with its DICOMweb plugin.

`store_dicomweb` stores the node's own SR and Secondary Captures (validated by dciodvfy first),
with and without HTTP basic authentication; the whole node delivers a wrist study's results to
a DICOMweb destination, keeping the delivery pending with a reason while the server is down and
delivering once it is back.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest

from dicomnode.analysis import analyse_study
from dicomnode.config import Destination
from dicomnode.index import InstanceRow
from dicomnode.spool import Spool
from dicomnode.stow import store_dicomweb
from pipeline.dicom import dimse
from pipeline.inference import ModelBundle
from tests.conftest import require_tool
from tests.integration.node_process import MODEL, ROOT, NodeProcess
from tests.integration.orthanc import HTTP_TIMEOUT_S, OrthancError, OrthancServer
from train.phantoms.archive import generate_archive, read_truth

pytestmark = pytest.mark.integration

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
NATIVE = ("explicit_le", "implicit_le")  # what storescu proposes by default
USER, PASSWORD = "wristai", "right-password"


def require_dicomweb_plugin() -> Path:
    """Orthanc's DICOMweb plugin; missing, the test fails (never skips) saying how to install."""
    require_tool("Orthanc")
    if not DICOMWEB_PLUGIN.is_file():
        pytest.fail(
            f"{DICOMWEB_PLUGIN} is missing: run make install (Debian package orthanc-dicomweb)"
        )
    return DICOMWEB_PLUGIN


class DicomWebOrthanc(OrthancServer):
    """An Orthanc serving DICOMweb at `dicomweb_url`; with `users`, HTTP basic auth only."""

    def __init__(self, workdir: Path, *, users: dict[str, str] | None = None) -> None:
        super().__init__(workdir)
        self.users = users or {}
        self.dicomweb_url = f"{self.url}/dicom-web"

    def config(self) -> dict[str, Any]:
        config = {
            **super().config(),
            "Plugins": [str(require_dicomweb_plugin())],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        }
        if self.users:
            config |= {"AuthenticationEnabled": True, "RegisteredUsers": self.users}
        return config

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = ""
    ) -> Any:
        """The base class's REST call, as the first registered user when there are users."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        if self.users:
            user, password = next(iter(self.users.items()))
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            raise OrthancError(f"{method} {path} -> HTTP {exc.code}") from exc
        return json.loads(payload) if payload.strip() else None


@pytest.fixture
def web_orthanc(tmp_path: Path) -> Iterator[DicomWebOrthanc]:
    with DicomWebOrthanc(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture(scope="module")
def wrist_study(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The uncompressed, readable instances of a synthetic wrist study."""
    archive = tmp_path_factory.mktemp("stow-archive")
    generate_archive(archive, studies=12, seed=5, size="small", workers=1)
    studies: dict[str, list[Path]] = {}
    for row in read_truth(archive):
        if not row["corrupt"] and row["transfer_syntax"] in NATIVE and row["body_part"] == "wrist":
            studies.setdefault(row["study_instance_uid"], []).append(archive / row["path"])
    return max(studies.values(), key=len)


@pytest.fixture(scope="module")
def results(wrist_study: list[Path], tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The SR, Secondary Captures and GSPS the node writes for the wrist study, each passing
    dciodvfy."""
    spool = Spool(tmp_path_factory.mktemp("stow-results"))
    instances = []
    for path in wrist_study:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        instances.append(InstanceRow(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID),
                                     str(ds.SeriesInstanceUID), str(ds.SOPClassUID), path,
                                     "STORESCU", "1", 0.0, False))  # fmt: skip
    outcome = analyse_study(instances[0].study_uid, instances, ModelBundle.load(MODEL), spool)
    assert outcome.in_scope and len(outcome.files) >= 2, outcome.reason
    for path in outcome.files:
        assert _dciodvfy_errors(path) == [], path
    return list(outcome.files)


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run([require_tool("dciodvfy"), str(path)], capture_output=True,
                            timeout=120, check=False)  # fmt: skip
    text = (result.stderr + result.stdout).decode("latin-1")
    return [line for line in text.splitlines() if line.startswith("Error")]


def _stored(pacs: OrthancServer) -> dict[str, str]:
    """SOP Instance UID -> modality of every instance Orthanc holds."""
    tags = [pacs.get(f"/instances/{i}/simplified-tags") for i in pacs.instances()]
    return {t["SOPInstanceUID"]: t["Modality"] for t in tags}


def _uids(files: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]


def test_the_nodes_sr_and_secondary_captures_are_stored_and_a_resend_is_idempotent(
    web_orthanc: DicomWebOrthanc, results: list[Path]
) -> None:
    destination = Destination(url=web_orthanc.dicomweb_url)

    result = store_dicomweb(destination, results, timeout_s=30)

    assert result.connected and result.all_sent, result.outcomes
    assert [o.status for o in result.outcomes] == [dimse.SUCCESS] * len(results)
    assert [o.sop_instance_uid for o in result.outcomes] == _uids(results)
    stored = _stored(web_orthanc)
    assert set(stored) == set(_uids(results))
    assert {"SR", "OT"} <= set(stored.values())  # and GSPS (PR) marks
    again = store_dicomweb(destination, results, timeout_s=30)
    assert again.all_sent and len(web_orthanc.instances()) == len(results)


def test_basic_auth_stores_with_the_right_credentials_and_names_the_wrong_ones(
    tmp_path: Path, results: list[Path]
) -> None:
    right, wrong = tmp_path / "right.toml", tmp_path / "wrong.toml"
    right.write_text(f'username = "{USER}"\npassword = "{PASSWORD}"\n', encoding="utf-8")
    wrong.write_text(f'username = "{USER}"\npassword = "wrong-password"\n', encoding="utf-8")
    with DicomWebOrthanc(tmp_path / "orthanc", users={USER: PASSWORD}) as pacs:
        for credentials in (str(wrong), ""):
            refused = store_dicomweb(Destination(url=pacs.dicomweb_url,
                                                 credentials_file=credentials),
                                     results, timeout_s=30)  # fmt: skip
            assert refused.connected and not any(o.sent for o in refused.outcomes)
            assert {o.reason for o in refused.outcomes} == {
                "DICOMweb server answered HTTP 401 Unauthorized: credentials missing or refused "
                "(see the destination's credentials_file)"
            }
        assert pacs.instances() == []
        accepted = store_dicomweb(Destination(url=pacs.dicomweb_url,
                                              credentials_file=str(right)),
                                  results, timeout_s=30)  # fmt: skip
        assert accepted.all_sent, accepted.outcomes
        assert set(_stored(pacs)) == set(_uids(results))


def _deliveries(storage: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(storage / "index.sqlite") as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT destination, status, attempts, reason, next_attempt_at "
                          "FROM deliveries").fetchall()  # fmt: skip
    return [dict(r) for r in rows]


def _wait_for(condition: Callable[[], Any], timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    return condition()


def test_the_node_delivers_to_a_dicomweb_destination_after_it_comes_back(
    tmp_path: Path, wrist_study: list[Path]
) -> None:
    require_dicomweb_plugin()  # before the node starts: the server is only started later
    pacs = DicomWebOrthanc(tmp_path / "orthanc")  # ports chosen, not started yet: down
    url = pacs.dicomweb_url
    sending = {"initial_delay_seconds": 1.0, "max_delay_seconds": 2.0}
    node = NodeProcess(tmp_path, destinations=[{"url": url}], sending=sending)
    node.start()
    study_uid = str(pydicom.dcmread(wrist_study[0], stop_before_pixels=True).StudyInstanceUID)
    try:
        sent = node.storescu(wrist_study)
        assert sent.returncode == 0, sent.stderr

        def retried() -> list[dict[str, Any]]:
            rows = _deliveries(node.storage)
            return [r for r in rows if r["attempts"] >= 2]

        rows = _wait_for(retried, 120)
        assert rows, node.log()[-3000:]
        (pending,) = rows
        port = url.split(":")[2].split("/")[0]
        assert pending["destination"] == url and pending["status"] == "pending"
        assert pending["reason"] == f"connection to 127.0.0.1:{port} failed: connection refused"
        assert pending["next_attempt_at"] > time.time() - 5
        status = subprocess.run([sys.executable, "-m", "dicomnode.cli", "status", "--config",
                                 str(node.config)], capture_output=True, text=True, cwd=ROOT,
                                timeout=120)  # fmt: skip
        assert f"backlog: {url} 1" in status.stdout, status.stdout + status.stderr

        with pacs:

            def done() -> bool:
                rows = _deliveries(node.storage)
                return bool(rows) and rows[0]["status"] != "pending"

            assert _wait_for(done, 60), (node.log()[-3000:], _deliveries(node.storage))
            stored = _stored(pacs)
        with sqlite3.connect(node.storage / "index.sqlite") as db:
            (state,) = db.execute("SELECT state FROM studies WHERE study_uid = ?",
                                  (study_uid,)).fetchone()  # fmt: skip
        assert state == "done"
        assert "SR" in stored.values() and "OT" in stored.values()
    finally:
        assert node.stop() == 0
    events = [json.loads(line) for line in (node.storage / "audit.jsonl").read_text().splitlines()]
    failed = [e for e in events if e["event"] == "result-failed"]
    delivered = [e for e in events if e["event"] == "result-sent"]
    assert failed and all(e["destination"] == url and "refused" in e["reason"] for e in failed)
    assert [(e["destination"], e["study_uid"]) for e in delivered] == [(url, study_uid)]
    assert delivered[0]["instances"] == len(stored)
