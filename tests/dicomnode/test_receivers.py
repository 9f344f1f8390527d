"""Several receiver processes on one port (`[node] receivers`): concurrent dcmtk senders all
succeed, every instance lands once in the spool and the index, the load spreads over the
processes, a killed receiver comes back while the port keeps answering, strangers stay out, the
association limit holds node-wide, and no receiver outlives the service."""

from __future__ import annotations

import ctypes
import json
import multiprocessing
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from dicomnode.audit import read_events
from dicomnode.cli import main
from dicomnode.config import Config, with_overrides
from dicomnode.index import Index
from dicomnode.receiver_status import read_status
from dicomnode.receivers import ReceiverPool, ReceiverRole, ReceiverStartError
from dicomnode.scp import handle_store
from dicomnode.spool import Spool
from dicomnode.work_queue import WorkQueue
from dicomnode.worker import database
from pipeline.dicom import dimse
from tests.conftest import require_tool
from tests.dicom_factory import make_dataset, ramp
from tests.dicomnode.test_tls import Pki, pki  # noqa: F401 - the session's certificates
from tests.integration.node_process import NodeProcess
from tests.integration.orthanc import free_port

RECEIVERS = 3
SENDERS = 8
PER_SENDER = 5


def _small_cr(folder: Path, sender: int, count: int) -> list[Path]:
    """`count` small CR instances of one study per sender, each with its own SOP UID."""
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    files = []
    for n in range(count):
        ds = make_dataset(ramp(), StudyInstanceUID=study, SeriesInstanceUID=series)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / f"s{sender}-{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    return files


def _healthz(node: NodeProcess) -> dict[str, object]:
    url = f"http://127.0.0.1:{node.http_port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return dict(json.load(answer))
    except urllib.error.HTTPError as error:  # 503: unhealthy, the body says why
        return dict(json.load(error))
    except urllib.error.URLError:  # not up yet
        return {}


def _started(node: NodeProcess) -> NodeProcess:
    """`node` once every receiver listens: the service starts /healthz only then (C-ECHO
    answers as soon as the first one does)."""
    _wait(lambda: "receivers" in _healthz(node), timeout=60)
    return node


def _receiver_pids(node: NodeProcess) -> set[int]:
    assert node.process is not None
    listed = subprocess.run(["pgrep", "-P", str(node.process.pid)], capture_output=True,
                            text=True).stdout.split()  # fmt: skip
    # The node's children are its receivers, its analysis worker and multiprocessing's
    # resource tracker; the receivers are the ones that say so in the log.
    return {int(p) for p in listed if f"(receiver process {p})" in node.log()}


def _wait(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.2)
    raise AssertionError("condition not met in time")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (not yet reaped by its dead parent's reaper) counts as gone.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")


@pytest.mark.integration
def test_receivers_share_the_port_and_survive_a_killed_sibling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    require_tool("storescu")
    require_tool("echoscu")
    node = NodeProcess(tmp_path, node={"receivers": RECEIVERS, "max_associations": SENDERS})
    _started(node.start("--allow", "STORESCU@127.0.0.1", "--allow", "ECHOSCU@127.0.0.1"))
    try:
        pids = _receiver_pids(node)
        assert len(pids) == RECEIVERS, node.log()[-3000:]
        batches = [_small_cr(tmp_path / "in", s, PER_SENDER) for s in range(SENDERS)]
        with ThreadPoolExecutor(SENDERS) as pool:
            results = list(pool.map(node.storescu, batches))
        assert [r.returncode for r in results] == [0] * SENDERS, results[0].stderr

        sent = {f.name for batch in batches for f in batch}
        index = Index(node.index_path)
        try:
            rows = index._query("SELECT sop_uid, path FROM instances")
        finally:
            index.close()
        assert len(rows) == len(sent)
        spooled = sorted((node.storage / "spool" / "instances").glob("*/*.dcm"))
        assert len(spooled) == len(sent) == len({p.name for p in spooled})
        assert sorted(Path(path) for _, path in rows) == spooled
        assert list((node.storage / "spool" / "incoming").iterdir()) == []

        # The load spread: the associations were accepted by more than one receiver process.
        accepted = [e for e in read_events(node.audit_path) if e["event"] == "association-accepted"]
        assert len(accepted) == SENDERS + 1  # the start-up C-ECHO too
        assert {e["pid"] for e in accepted} <= pids
        assert len({e["pid"] for e in accepted}) > 1
        assert node.log().count("released after") >= SENDERS  # one summary line each

        # A stranger is refused by whichever receiver takes its connection.
        for _ in range(2 * RECEIVERS):
            refused = node.echo("INTRUDER")
            assert refused.returncode != 0
            assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr
        rejected = [e for e in read_events(node.audit_path) if e["event"] == "association-rejected"]
        assert len(rejected) == 2 * RECEIVERS

        # max_associations is node-wide: with the limit held, every receiver refuses.
        ae = AE(ae_title="ECHOSCU")
        ae.add_requested_context(Verification)
        held = [ae.associate("127.0.0.1", node.port, ae_title="WRISTAI") for _ in range(SENDERS)]
        try:
            assert all(a.is_established for a in held)
            for _ in range(2 * RECEIVERS):
                refused = node.echo()
                assert refused.returncode != 0
                assert "Local Limit Exceeded" in refused.stdout + refused.stderr
        finally:
            for assoc in held:
                assoc.release()

        health = _healthz(node)
        assert (health["receivers"], health["expected_receivers"]) == (RECEIVERS, RECEIVERS)
        assert main(["status", "--config", str(node.config)]) == 0
        assert f"receivers: {RECEIVERS} of {RECEIVERS} process(es) alive" in capsys.readouterr().out

        # kill -9 one receiver: the port keeps answering, the service restarts it.
        victim = sorted(pids)[0]
        os.kill(victim, signal.SIGKILL)
        # Once it is gone (a connection queued on it as it died is reset: nothing was acked),
        # its siblings take every caller, before and while it is restarted.
        _wait(lambda: _gone(victim), timeout=10)
        for _ in range(2 * RECEIVERS):
            answered = node.echo()
            if answered.returncode != 0:  # reset in the restart's instant: a caller retries once
                answered = node.echo()
            assert answered.returncode == 0, answered.stderr + node.log()[-2000:]
        _wait(lambda: len(_receiver_pids(node) - {victim}) == RECEIVERS)
        assert f"receiver process {victim} was killed by signal SIGKILL" in node.log()
        _wait(lambda: _healthz(node).get("receivers") == RECEIVERS)
        pids = _receiver_pids(node)
    finally:
        node.kill9()  # the service dies: its receivers must not live on with the port
    _wait(lambda: all(_gone(pid) for pid in pids), timeout=10)
    assert node.echo().returncode != 0


@pytest.mark.integration
def test_pool_restarts_a_dead_receiver_and_stops_them_all(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    require_tool("echoscu")
    port = free_port()
    config = with_overrides(Config(), node={"port": port, "receivers": 2},
                            storage={"path": tmp_path})  # fmt: skip
    queue = WorkQueue(database(config))
    pool = ReceiverPool(config, queue)
    echo = ["echoscu", "-aec", "WRISTAI", "127.0.0.1", str(port)]
    try:
        pool.start()
        first = set(pool.pids())
        assert pool.alive() == 2 and len(first) == 2
        assert subprocess.run(echo, capture_output=True).returncode == 0
        victim = min(first)
        os.kill(victim, signal.SIGKILL)

        def restarted() -> bool:
            pool.supervise()  # the service's timer
            return pool.alive() == 2 and victim not in pool.pids()

        _wait(restarted)
        assert f"receiver process {victim} was killed by signal SIGKILL" in caplog.text
        recorded = read_status(tmp_path)
        assert recorded is not None and (recorded.alive, recorded.restarts) == (2, 1)
        _wait(lambda: subprocess.run(echo, capture_output=True).returncode == 0)
        survivors = set(pool.pids())
    finally:
        pool.shutdown()
        queue.close()
    assert all(_gone(pid) for pid in survivors)
    assert subprocess.run(echo, capture_output=True).returncode != 0
    recorded = read_status(tmp_path)
    assert recorded is not None and (recorded.alive, recorded.pids) == (0, ())


def test_pool_refuses_a_port_another_program_holds(tmp_path: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        config = with_overrides(Config(), node={"port": port, "receivers": 2},
                                storage={"path": tmp_path})  # fmt: skip
        with pytest.raises(ReceiverStartError, match=f"'node.port' {port} on 127.0.0.1"):
            ReceiverPool(config, Index(tmp_path / "index.sqlite")).start()


def test_status_names_the_receivers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from dicomnode.receiver_status import ReceiverStatus, write_status

    write_status(tmp_path, ReceiverStatus(4, 3, (11, 12, 13), 2, 1_700_000_000.0))
    assert main(["status", "--storage", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "receivers: 3 of 4 process(es) alive, 2 restarted (as of 2023-11-14T22:13:20" in out


def _store_event(ds: Dataset) -> Any:
    """What pynetdicom hands the C-STORE handler, for `ds` sent over one association."""
    request = C_STORE()
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    encoded = encode(ds, False, True)
    return SimpleNamespace(
        context=SimpleNamespace(transfer_syntax=ExplicitVRLittleEndian),
        encoded_dataset=lambda include_meta=True: encoded,
        request=request,
        assoc=SimpleNamespace(name="assoc-1_x", requestor=SimpleNamespace(ae_title="CR1",
                                                                         address="127.0.0.1")),
    )  # fmt: skip


def test_a_locked_index_answers_a_failure_not_success(tmp_path: Path) -> None:
    spool, index = Spool(tmp_path / "spool"), Index(tmp_path / "index.sqlite")
    index._db.execute("PRAGMA busy_timeout = 200")  # the service waits 30 s; a test need not
    sibling = sqlite3.connect(tmp_path / "index.sqlite", isolation_level=None)
    sibling.execute("BEGIN IMMEDIATE")  # another receiver holds the write lock too long
    ds = make_dataset(ramp(), StudyInstanceUID=generate_uid(), SeriesInstanceUID=generate_uid())
    try:
        assert handle_store(_store_event(ds), spool, index) == dimse.PROCESSING_FAILURE
        sibling.execute("ROLLBACK")
        assert handle_store(_store_event(ds), spool, index) == dimse.SUCCESS
        assert index.instance(ds.SOPInstanceUID) is not None
    finally:
        sibling.close()
        index.close()


def test_role_counts_only_its_siblings() -> None:
    counts = multiprocessing.get_context("spawn").RawArray(ctypes.c_int, 3)
    counts[0], counts[2] = 4, 5
    role = ReceiverRole(counts, 1)
    assert role.established_elsewhere() == 9
    counts[1] = 7  # its own associations are counted by pynetdicom, not here
    assert role.established_elsewhere() == 9


def _write_instances(path: Path, writer: int, count: int) -> None:
    index = Index(path)
    try:
        for n in range(count):
            sop = f"1.2.3.{writer}.{n}"
            index.record_instance(sop_uid=sop, study_uid=f"1.2.3.{writer}", series_uid="1.2.3.9",
                                  sop_class_uid="1.2.840.10008.5.1.4.1.1.1", path=path,
                                  calling_aet="W", association_id=f"a{writer}",
                                  received_at=time.time(), ours=False)  # fmt: skip
    finally:
        index.close()


def test_eight_writer_processes_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "index.sqlite"
    Index(path).close()  # made and migrated once, as the service does before its receivers
    context = multiprocessing.get_context("fork")  # the writers need no fresh interpreter
    writers = [context.Process(target=_write_instances, args=(path, w, 15)) for w in range(8)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(120)
    assert [p.exitcode for p in writers] == [0] * 8
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT COUNT(*) FROM instances").fetchone() == (120,)


def test_healthz_is_unhealthy_while_a_receiver_is_missing(tmp_path: Path) -> None:
    from dicomnode.health import health
    from dicomnode.supervision import AnalysisHealth

    queue = WorkQueue(tmp_path / "index.sqlite")
    try:
        missing = health(queue, 1, 1, AnalysisHealth(), receivers=(2, 3))
        whole = health(queue, 1, 1, AnalysisHealth(), receivers=(3, 3))
    finally:
        queue.close()
    assert missing["ok"] is False and missing["reason"] == "2 of 3 receiver processes running"
    assert whole["ok"] is True and (whole["receivers"], whole["expected_receivers"]) == (3, 3)


@pytest.mark.integration
def test_every_receiver_speaks_tls_and_refuses_strangers(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    require_tool("echoscu")
    certificates: Pki = request.getfixturevalue("pki")  # test_tls's session certificates
    port = free_port()
    tls = {"enabled": True, "certificate": certificates.cert("node"),
           "private_key": certificates.key("node"), "ca_certificates": certificates.cert("ca"),
           "require_client_certificate": True}  # fmt: skip
    config = with_overrides(Config(), node={"port": port, "receivers": 2},
                            storage={"path": tmp_path}, tls=tls)  # fmt: skip
    queue = WorkQueue(database(config))
    pool = ReceiverPool(config, queue)

    def echo(*flags: str) -> int:
        command = ["echoscu", "-aec", "WRISTAI", *flags, "127.0.0.1", str(port)]
        return subprocess.run(command, capture_output=True, timeout=60).returncode

    def accepted_by() -> set[int]:
        return {e["pid"] for e in read_events(config.audit_path)
                if e["event"] == "association-accepted"}  # fmt: skip

    try:
        pool.start()
        for _ in range(30):  # until both receivers took a caller (spread by the kernel's hash)
            assert echo(*certificates.dcmtk("client")) == 0
            if len(accepted_by()) == 2:
                break
        assert accepted_by() == set(pool.pids())
        assert all(e["tls"] for e in read_events(config.audit_path)
                   if e["event"] == "association-accepted")  # fmt: skip
        for _ in range(4):
            assert echo(*certificates.dcmtk("rogue_client")) != 0
            assert echo() != 0  # no TLS at all
        refused = [e for e in read_events(config.audit_path) if e["event"] == "tls-refused"]
        assert len(refused) == 8
    finally:
        pool.shutdown()
        queue.close()
