"""A full disk: stores are refused with A700 before it fills, the node stays up and recovers.

Each test mounts its own small tmpfs (the tests run as root), puts the node's whole storage on
it (spool, results, SQLite index, audit trail), and takes most of the space with a filler file
the test owns. Instances are sent with a pynetdicom SCU so that every response status can be
read, and the free space is measured (`shutil.disk_usage`) right after each response. Space
comes back by deleting the filler, never spool files; the node is not restarted.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE

from dicomnode.spool import Spool
from dicomnode.work_queue import WorkQueue
from dicomnode.worker import DISK_FULL_REASON, DiskFull, analyse_next, is_disk_full, requeue
from pipeline.dicom import dimse
from pipeline.inference import ModelBundle
from tests.integration.node_process import MODEL as DEMO_MODEL
from tests.integration.node_process import NodeProcess
from train.phantoms.archive import generate_archive, read_truth

FS_MB = 48
WATERMARK_MB = 8.0
WAIT_S = 150.0
FULL_DISK_DWELL_S = 15.0  # past the 10 s quiet period: the study could be complete


@dataclass(frozen=True)
class Response:
    """One C-STORE: what was sent, the status and the free space right after."""

    study_uid: str
    sop_uid: str
    status: int
    free_bytes: int


@pytest.fixture(scope="module")
def wrist_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The two views (~0.4 MB each) of one small synthetic wrist study."""
    archive = tmp_path_factory.mktemp("archive")
    generate_archive(archive, studies=1, seed=3, size="small", workers=1,
                     syntaxes=("explicit_le",))  # fmt: skip
    return [archive / r["path"] for r in read_truth(archive) if not r["corrupt"]]


@pytest.fixture(scope="module")
def sources(wrist_files: list[Path]) -> list[Dataset]:
    """The views as datasets, copied into the studies sent."""
    return [pydicom.dcmread(path) for path in wrist_files]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A FS_MB tmpfs of this test's own, unmounted afterwards."""
    mount = tmp_path / "fs"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FS_MB}m,mode=0700", "tmpfs",
                    str(mount)], check=True, timeout=30)  # fmt: skip
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], timeout=60).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mount)], timeout=60)


@pytest.fixture
def start_node(tmp_path: Path, small_fs: Path) -> Iterator[Callable[[float], NodeProcess]]:
    """Start the node with its storage on the small file system and the given watermark."""
    nodes: list[NodeProcess] = []

    def start(watermark_mb: float) -> NodeProcess:
        node = NodeProcess(tmp_path, storage={"path": str(small_fs / "node"),
                                              "min_free_mb": watermark_mb})  # fmt: skip
        node.storage = small_fs / "node"  # index_path and audit_path follow
        nodes.append(node)
        return node.start()

    yield start
    for node in nodes:  # before the file system is unmounted
        node.stop()


def fill(mount: Path, leave_bytes: int) -> Path:
    """Write a filler file leaving about `leave_bytes` free on `mount`."""
    filler = mount / "filler"
    size = shutil.disk_usage(mount).free - leave_bytes
    with filler.open("wb") as out:
        chunk = b"\0" * (1 << 20)
        while size > 0:
            size -= out.write(chunk[: min(size, len(chunk))])
    return filler


def send(node: NodeProcess, mount: Path, sources: list[Dataset], *, study_uid: str,
         count: int, stop_after_refusals: int = 3) -> list[Response]:  # fmt: skip
    """Send up to `count` copies of `sources` as one study over one association; stop after
    `stop_after_refusals` refusals in a row."""
    ae = AE(ae_title="FULLDISK")
    for ds in sources:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="WRISTAI")
    assert assoc.is_established, node.log()[-3000:]
    responses: list[Response] = []
    series_uid = generate_uid()
    try:
        for i in range(count):
            ds = sources[i % len(sources)].copy()
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            rsp = assoc.send_c_store(ds)
            assert rsp is not None and "Status" in rsp, "no C-STORE response"
            responses.append(Response(study_uid, str(ds.SOPInstanceUID), int(rsp.Status),
                                      shutil.disk_usage(mount).free))  # fmt: skip
            tail = [r.status for r in responses[-stop_after_refusals:]]
            if len(tail) == stop_after_refusals and dimse.SUCCESS not in tail:
                break
    finally:
        assoc.release()
    return responses


def query(node: NodeProcess, sql: str, params: tuple[object, ...] = ()) -> list[tuple[object, ...]]:
    with closing(sqlite3.connect(node.index_path, timeout=30)) as db:
        return db.execute(sql, params).fetchall()


def wait_for(predicate: Callable[[], object], what: str, node: NodeProcess) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}\n{node.log()[-5000:]}")


def states(node: NodeProcess) -> dict[str, str]:
    return {
        str(uid): str(state) for uid, state in query(node, "SELECT study_uid, state FROM studies")
    }


def assert_node_healthy(node: NodeProcess) -> None:
    """Still the same process, answering C-ECHO, with an intact index."""
    assert node.process is not None and node.process.poll() is None, node.log()[-3000:]
    echo = node.echo()
    assert echo.returncode == 0, echo.stderr
    assert query(node, "PRAGMA integrity_check") == [("ok",)]


def assert_acknowledged_instances_kept(node: NodeProcess, responses: list[Response]) -> None:
    """Every instance answered Success is in the spool, readable, and in the index."""
    for r in responses:
        if r.status != dimse.SUCCESS:
            continue
        path = node.storage / "spool" / "instances" / r.study_uid / f"{r.sop_uid}.dcm"
        assert pydicom.dcmread(path).SOPInstanceUID == r.sop_uid
        assert query(node, "SELECT study_uid FROM instances WHERE sop_uid = ?",
                     (r.sop_uid,)) == [(r.study_uid,)]  # fmt: skip


def recover(node: NodeProcess, mount: Path, filler: Path, sources: list[Dataset]) -> None:
    """Free the space: the next store succeeds, and every study is analysed, none failed."""
    pid = node.process.pid if node.process else None
    filler.unlink()
    after = send(node, mount, sources[:1], study_uid=generate_uid(), count=1)
    assert [r.status for r in after] == [dimse.SUCCESS]
    assert node.process is not None and node.process.pid == pid  # recovered, not restarted
    wait_for(lambda: set(states(node).values()) <= {"done", "out_of_scope"},
             "every study to be analysed", node)  # fmt: skip
    assert "analysis worker stopped" not in node.log()  # no worker crashed on the full disk


@pytest.mark.integration
def test_stores_are_refused_with_a700_above_the_watermark_and_resume_when_space_returns(
    small_fs: Path, start_node: Callable[[float], NodeProcess], sources: list[Dataset]
) -> None:
    watermark = int(WATERMARK_MB * 1e6)
    node = start_node(WATERMARK_MB)
    # Room for about ten instances above the watermark; their results (~0.6 MB per image)
    # then need more than the half watermark the workers may use.
    filler = fill(small_fs, leave_bytes=watermark + 4_500_000)

    responses = send(node, small_fs, sources, study_uid=generate_uid(), count=30)

    statuses = [r.status for r in responses]
    accepted = statuses.count(dimse.SUCCESS)
    refusals = [r for r in responses if r.status != dimse.SUCCESS]
    assert accepted >= 5 and len(refusals) == 3, statuses
    assert {r.status for r in refusals} == {dimse.OUT_OF_RESOURCES}
    # Refused before the disk is full: at each refusal the watermark is (all but) still free.
    assert min(r.free_bytes for r in refusals) >= 0.9 * watermark, refusals
    assert statuses.index(dimse.OUT_OF_RESOURCES) == accepted  # no success after one
    print(f"watermark {watermark} B: {accepted} accepted, then A700 with "
          f"{min(r.free_bytes for r in refusals)} B free at the lowest refusal")  # fmt: skip
    assert_node_healthy(node)
    assert_acknowledged_instances_kept(node, responses)
    # A new association is admitted and refused the same way while the disk stays full.
    again = send(node, small_fs, sources, study_uid=generate_uid(), count=1)
    assert [r.status for r in again] == [dimse.OUT_OF_RESOURCES]

    # The worker's results stop at half the watermark: the study goes back to the queue.
    wait_for(lambda: DISK_FULL_REASON in node.log(), "the worker to find its disk full", node)
    assert query(node, "SELECT state, reason FROM studies WHERE study_uid = ?",
                 (responses[0].study_uid,)) in ([("complete", DISK_FULL_REASON)],
                                                [("analysing", DISK_FULL_REASON)])  # fmt: skip
    free = shutil.disk_usage(small_fs).free
    print(f"after the worker's attempt: {free} B free")
    assert free >= 0.4 * watermark
    assert "failed" not in states(node).values()
    assert_node_healthy(node)

    recover(node, small_fs, filler, sources)
    assert_acknowledged_instances_kept(node, responses)


@pytest.mark.integration
def test_a_disk_that_really_fills_gives_a700_and_the_node_survives(
    small_fs: Path, start_node: Callable[[float], NodeProcess], sources: list[Dataset]
) -> None:
    """No watermark: the spool write or the index write itself meets ENOSPC / SQLITE_FULL."""
    node = start_node(0.0)
    filler = fill(small_fs, leave_bytes=2_500_000)

    responses = send(node, small_fs, sources, study_uid=generate_uid(), count=15)

    statuses = [r.status for r in responses]
    accepted = statuses.count(dimse.SUCCESS)
    assert accepted >= 2 and len(statuses) - accepted == 3, statuses
    assert set(statuses) == {dimse.SUCCESS, dimse.OUT_OF_RESOURCES}, statuses
    lowest = min(r.free_bytes for r in responses if r.status != dimse.SUCCESS)
    print(f"no watermark: {accepted} accepted, then A700 with {lowest} B free")
    assert lowest < 500_000
    assert_node_healthy(node)
    assert_acknowledged_instances_kept(node, responses)

    # Whether the completeness timer can still record the study on the full index decides
    # whether the worker meets the disk (it then pauses); either way nothing crashes or fails.
    wait_for(lambda: "worker ready" in node.log(), "the worker to start", node)
    time.sleep(FULL_DISK_DWELL_S)
    assert "failed" not in states(node).values()
    assert_node_healthy(node)
    assert "analysis worker stopped" not in node.log()
    print(
        "worker on the full disk:",
        [
            line.split(" ERROR ", 1)[-1]
            for line in node.log().splitlines()
            if "dicomnode.worker" in line and "disk full" in line
        ],
    )

    recover(node, small_fs, filler, sources)
    assert_acknowledged_instances_kept(node, responses)


class _FillsUp(Spool):
    """A results spool whose disk is full after `room` more files."""

    def __init__(self, root: Path, room: int) -> None:
        super().__init__(root)
        self.room = room

    def store(self, study_uid: str, sop_uid: str, data: bytes) -> Path:
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= 1
        return super().store(study_uid, sop_uid, data)


class _FullIndexOnce(WorkQueue):
    """An index whose disk is full for the next `full` state changes."""

    full = 0

    def set_state(self, study_uid: str, state: str, **kwargs: Any) -> None:
        if self.full > 0:
            self.full -= 1
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
            raise error
        super().set_state(study_uid, state, **kwargs)


def _received_study(tmp_path: Path, wrist_files: list[Path]) -> tuple[_FullIndexOnce, str]:
    queue = _FullIndexOnce(tmp_path / "index.sqlite")
    spool = Spool(tmp_path / "spool")
    for path in wrist_files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        study_uid = str(ds.StudyInstanceUID)
        stored = spool.store(study_uid, str(ds.SOPInstanceUID), path.read_bytes())
        queue.record_instance(
            sop_uid=str(ds.SOPInstanceUID),
            study_uid=study_uid,
            series_uid=str(ds.SeriesInstanceUID),
            sop_class_uid=str(ds.SOPClassUID),
            path=stored,
            calling_aet="CR",
            association_id="a",
            received_at=time.time(),
            ours=False,
        )
    queue.set_state(study_uid, "complete")
    return queue, study_uid


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.load(DEMO_MODEL)


def test_a_study_whose_results_do_not_fit_goes_back_to_the_queue_without_them(
    tmp_path: Path, wrist_files: list[Path], bundle: ModelBundle
) -> None:
    queue, study_uid = _received_study(tmp_path, wrist_files)
    results = _FillsUp(tmp_path / "results", room=1)  # the SR fits, the next result does not
    folder = results.instances / study_uid

    with pytest.raises(DiskFull) as raised:
        analyse_next(queue, bundle, results, [])

    assert raised.value.stranded is None
    study = queue.study(study_uid)
    assert study is not None and (study.state, study.reason) == ("complete", DISK_FULL_REASON)
    assert list(folder.glob("*.dcm")) == []  # the SR of the attempt was never sent: gone

    results.room = 100  # space is back
    assert analyse_next(queue, bundle, results, []) is True
    assert queue.study(study_uid).state == "done"  # type: ignore[union-attr]
    written = [pydicom.dcmread(p) for p in folder.glob("*.dcm")]
    assert sorted(str(ds.Modality) for ds in written) == ["OT", "OT", "PR", "PR", "SR"]
    sr = next(ds for ds in written if ds.Modality == "SR")
    assert "PredecessorDocumentsSequence" not in sr  # revises nothing that was never sent


def test_a_study_the_full_index_cannot_requeue_is_named_for_the_worker_to_requeue(
    tmp_path: Path, wrist_files: list[Path], bundle: ModelBundle
) -> None:
    queue, study_uid = _received_study(tmp_path, wrist_files)
    queue.full = 1

    with pytest.raises(DiskFull) as raised:
        analyse_next(queue, bundle, _FillsUp(tmp_path / "results", room=0), [])

    assert raised.value.stranded == study_uid
    assert queue.study(study_uid).state == "analysing"  # type: ignore[union-attr]
    requeue(queue, study_uid)  # what the worker loop does once the index takes writes again
    assert queue.study(study_uid).state == "complete"  # type: ignore[union-attr]


def test_disk_full_errors_are_told_apart_from_other_failures() -> None:
    full_index = sqlite3.OperationalError("database or disk is full")
    full_index.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorcode = sqlite3.SQLITE_BUSY  # type: ignore[attr-defined]
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert is_disk_full(full_index)
    assert not is_disk_full(OSError(errno.EIO, "Input/output error"))
    assert not is_disk_full(locked)
    assert not is_disk_full(ValueError("no"))
    assert is_disk_full(DiskFull(full_index, stranded="1.2.3"))
