"""Fault tests: the node killed with -9 mid-push, mid-analysis and mid-send, and a PACS outage.

Each test runs the real service (`NodeProcess`) against a real peer: Orthanc, or an in-process
C-STORE SCP that can stall on demand. What they prove:

- an instance answered Success is durable (spool file and index row) even if the node dies the
  next moment, and after a restart every study is analysed and reported once;
- work caught by the crash (analysis, a half-done delivery) resumes after the restart, and the
  deterministic result UIDs make the repeated analysis and the resend idempotent;
- while the destination is down results queue with growing pauses, nothing is reported sent,
  and everything arrives once it is back.
"""

from __future__ import annotations

import calendar
import itertools
import re
import sqlite3
import subprocess
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pydicom
import pytest
from pynetdicom import AE, StoragePresentationContexts, evt
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from dicomnode.audit import read_events
from dicomnode.completeness import CompletenessParams
from dicomnode.retry import RetryPolicy
from dicomnode.work_queue import WorkQueue
from pipeline.dicom import dimse
from tests.integration.node_process import NodeProcess
from tests.integration.orthanc import OrthancServer, free_ports, orthanc_available
from train.phantoms.archive import generate_archive, read_truth

pytestmark = pytest.mark.integration

ARCHIVE_STUDIES = 265  # small synthetic studies, ~2 readable instances each: >= 500 instances
ARCHIVE_SEED = 31
PUSH_INSTANCES = 500
KILL_AFTER_SUCCESSES = 200  # at least; then inside a study, after its second instance
TERMINAL = ("done", "out_of_scope", "failed")
SR_CLASSES = {"1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.34"}
POLL_S = 0.25


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Synthetic wrist (and a few chest/pelvis/skull) studies, uncompressed."""
    root = tmp_path_factory.mktemp("fault-archive")
    generate_archive(root, studies=ARCHIVE_STUDIES, seed=ARCHIVE_SEED, size="small", workers=1,
                     syntaxes=("explicit_le",))  # fmt: skip
    return root


@pytest.fixture(scope="module")
def studies(archive: Path) -> dict[str, list[Path]]:
    """Readable instances by study, in archive order."""
    by_study: dict[str, list[Path]] = defaultdict(list)
    for row in read_truth(archive):
        if not row["corrupt"]:
            by_study[row["study_instance_uid"]].append(archive / row["path"])
    assert sum(map(len, by_study.values())) >= PUSH_INSTANCES
    return dict(by_study)


@pytest.fixture(scope="module")
def wrist_studies(archive: Path) -> list[list[Path]]:
    """Readable wrist-only studies, the largest first."""
    by_study: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in read_truth(archive):
        by_study[row["study_instance_uid"]].append(row)
    chosen = [[archive / r["path"] for r in rows] for rows in by_study.values()
              if all(not r["corrupt"] and r["body_part"] == "wrist" for r in rows)]  # fmt: skip
    return sorted(chosen, key=len, reverse=True)


@pytest.fixture
def pacs(tmp_path: Path) -> Iterator[OrthancServer]:
    """A running Orthanc, stopped after the test."""
    assert orthanc_available(), "Orthanc is not installed (make install)"
    with OrthancServer(tmp_path / "orthanc") as server:
        yield server


@pytest.fixture
def nodes() -> Iterator[list[NodeProcess]]:
    """Node processes a test starts; whatever still runs is killed afterwards."""
    started: list[NodeProcess] = []
    yield started
    for node in started:
        node.kill()


# -- helpers ---------------------------------------------------------------------------------


def _destination(aet: str, port: int) -> dict[str, Any]:
    return {"ae_title": aet, "host": "127.0.0.1", "port": port}


def _wait(predicate: Callable[[], bool], timeout: float, what: str, poll: float = POLL_S) -> None:
    """Poll until `predicate()` holds; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(poll)


def _query(node: NodeProcess, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """One read of the node's index (a separate connection: the node may be running)."""
    db = sqlite3.connect(node.index_path, timeout=30)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def _states(node: NodeProcess) -> dict[str, str]:
    return dict(_query(node, "SELECT study_uid, state FROM studies"))


def _all_settled(node: NodeProcess, expected: int) -> bool:
    states = _states(node)
    return len(states) == expected and all(s in TERMINAL for s in states.values())


def _result_uids(node: NodeProcess, study_uid: str) -> set[str]:
    """SOP Instance UIDs of the result files the node wrote for a study."""
    folder = node.storage / "results" / "instances" / study_uid
    return {p.stem for p in folder.glob("*.dcm")}


def _result_srs(node: NodeProcess, study_uid: str) -> list[pydicom.Dataset]:
    folder = node.storage / "results" / "instances" / study_uid
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in folder.glob("*.dcm")]
    return [h for h in headers if str(h.SOPClassUID) in SR_CLASSES]


def _events(node: NodeProcess, event: str, study_uid: str | None = None) -> list[dict[str, Any]]:
    return [e for e in read_events(node.audit_path)
            if e["event"] == event and study_uid in (None, e.get("study_uid"))]  # fmt: skip


def _analyses(node: NodeProcess) -> Counter[str]:
    """How many times a worker claimed each study for analysis (the 'wait' stage is recorded
    once per claim, before the analysis starts)."""
    rows = _query(node, "SELECT study_uid FROM stage_timings WHERE stage = 'wait'")
    return Counter(r[0] for r in rows)


def _orthanc_results(pacs: OrthancServer) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """What Orthanc holds: {study UID: {modality: [instance (ID, SOP UID, number)]}}."""
    studies = {s["ID"]: s["MainDicomTags"]["StudyInstanceUID"]
               for s in pacs.get("/studies?expand")}  # fmt: skip
    series = {s["ID"]: (studies[s["ParentStudy"]], s["MainDicomTags"].get("Modality", ""))
              for s in pacs.get("/series?expand")}  # fmt: skip
    held: dict[str, dict[str, list[dict[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for instance in pacs.get("/instances?expand"):
        study_uid, modality = series[instance["ParentSeries"]]
        tags = instance["MainDicomTags"]
        number = int(tags.get("InstanceNumber", 0))
        held[study_uid][modality].append(
            {"id": instance["ID"], "uid": tags["SOPInstanceUID"], "number": number}
        )
    return held


def _evidence(sr: dict[str, Any]) -> set[str]:
    """SOP Instance UIDs an SR (Orthanc's simplified tags) lists as its evidence."""
    return {ref["ReferencedSOPInstanceUID"]
            for study in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
            for series in study["ReferencedSeriesSequence"]
            for ref in series["ReferencedSOPSequence"]}  # fmt: skip


def _predecessors(sr: dict[str, Any]) -> set[str]:
    return {ref["ReferencedSOPInstanceUID"]
            for study in sr.get("PredecessorDocumentsSequence", [])
            for series in study["ReferencedSeriesSequence"]
            for ref in series["ReferencedSOPSequence"]}  # fmt: skip


def _sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def _worker_pids(node: NodeProcess) -> list[int]:
    """Processes whose parent is the node (its analysis workers), read from /proc."""
    assert node.process is not None
    parent = str(node.process.pid)
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == parent:
                children.append(int(entry.name))
    return children


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- storescu killed mid-push ----------------------------------------------------------------

_SENDING = re.compile(r"Sending file: (.+)$")
_RESPONSE = re.compile(r"Received Store Response \((.+)\)")


def _push_and_kill(node: NodeProcess, files: list[Path], kill_after: int) -> list[Path]:
    """storescu -v `files` to the node and kill -9 the node after `kill_after` Success responses;
    returns the files the node answered with Success (as storescu printed them)."""
    command = ["storescu", "-v", "-aec", "WRISTAI", "127.0.0.1", str(node.port),
               *map(str, files)]  # fmt: skip
    scu = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert scu.stdout is not None
    answered: list[Path] = []
    current: Path | None = None
    killed = False
    timer = threading.Timer(300, scu.kill)  # bounds the read loop below
    timer.start()
    try:
        for line in scu.stdout:
            if sent := _SENDING.search(line):
                current = Path(sent.group(1).strip())
            elif (response := _RESPONSE.search(line)) and response.group(1) == "Success":
                assert current is not None
                answered.append(current)
                if len(answered) >= kill_after and not killed:
                    node.kill9()
                    killed = True
        scu.wait(timeout=60)
    finally:
        timer.cancel()
    assert killed, f"storescu finished before the kill ({len(answered)} answered)"
    assert scu.returncode != 0  # the node died under it
    return answered


def _kill_point(studies: dict[str, list[Path]]) -> int:
    """After how many Success responses to kill: the second instance of the first study of four
    or more instances past KILL_AFTER_SUCCESSES, so that the crash splits a study."""
    start = 0
    for paths in studies.values():
        if start >= KILL_AFTER_SUCCESSES and len(paths) >= 4:
            return start + 2
        start += len(paths)
    raise AssertionError("no study of four instances after the kill point")


def test_kill9_during_a_500_instance_push_loses_nothing_answered_and_reports_each_study_once(
    tmp_path: Path, pacs: OrthancServer, studies: dict[str, list[Path]],
    nodes: list[NodeProcess],
) -> None:  # fmt: skip
    files = [f for paths in studies.values() for f in paths]
    study_of = {f: uid for uid, paths in studies.items() for f in paths}
    node = NodeProcess(tmp_path, analysis={"workers": 2},
                       destinations=[_destination(pacs.aet, pacs.dicom_port)])  # fmt: skip
    nodes.append(node.start())
    started = time.monotonic()
    answered = _push_and_kill(node, files, _kill_point(studies))
    killed_at = time.monotonic()

    # Every instance answered Success is in the spool and the index, before any restart.
    answered_uids = {f: _sop_uid(f) for f in answered}
    indexed = {r[0]: r[1] for r in _query(node, "SELECT sop_uid, path FROM instances")}
    for path, sop_uid in answered_uids.items():
        assert sop_uid in indexed, f"{path.name} was answered Success but is not indexed"
        spooled = Path(indexed[sop_uid])
        assert spooled == node.storage / "spool" / "instances" / study_of[path] / f"{sop_uid}.dcm"
        stored, source = pydicom.dcmread(spooled), pydicom.dcmread(path)
        assert stored.SOPInstanceUID == sop_uid and stored.PixelData == source.PixelData
    print(
        f"\nkill -9 after {len(answered)} of {len(files)} instances answered "
        f"({killed_at - started:.1f} s into the push); {len(indexed)} indexed at the kill"
    )

    # The modality sends again what was not acknowledged, as soon as the node is back.
    node.start()
    restarted_at = time.monotonic()
    rest = [f for f in files if f not in answered_uids]
    again = node.storescu(rest)
    assert again.returncode == 0, again.stderr[-2000:]
    _wait(lambda: _all_settled(node, len(studies)), 600, "every study analysed and reported")
    settled_at = time.monotonic()

    states = _states(node)
    assert set(states) == set(studies)
    assert "failed" not in states.values(), [u for u, s in states.items() if s == "failed"]
    n_indexed = _query(node, "SELECT COUNT(*) FROM instances WHERE ours = 0")[0][0]
    assert n_indexed == len(files)

    # Studies with instances on both sides of the kill may be analysed twice: the node cannot
    # know the sender will come back, so the partial study is reported, then revised.
    answered_studies = {study_of[f] for f in answered}
    rest_studies = {study_of[f] for f in rest}
    split = answered_studies & rest_studies
    held = _orthanc_results(pacs)
    analyses = _analyses(node)
    for uid, state in states.items():
        if state == "out_of_scope":
            assert uid not in held, f"results sent for out-of-scope study {uid}"
            continue
        srs = held[uid]["SR"]
        uids = {i["uid"] for m in held[uid].values() for i in m}
        assert uids == _result_uids(node, uid), f"study {uid}: PACS and results spool differ"
        sent = _events(node, "result-sent", uid)
        if uid not in split:
            assert len(srs) == 1, f"study {uid}: {len(srs)} SRs"
            assert analyses[uid] == 1, f"study {uid} analysed {analyses[uid]} times"
            assert len(sent) == 1, f"study {uid} reported sent {len(sent)} times"
        else:
            assert 1 <= len(srs) <= 2 and len(sent) == len(srs) == analyses[uid]
        latest = max(srs, key=lambda i: i["number"])
        report = pacs.get(f"/instances/{latest['id']}/tags?simplify")
        expected = {_sop_uid(f) for f in studies[uid]}
        assert _evidence(report) == expected, f"study {uid}: the last SR misses instances"
        assert _predecessors(report) == {i["uid"] for i in srs} - {latest["uid"]}
    print(f"restart to last study settled: {settled_at - restarted_at:.1f} s for {len(studies)} "
          f"studies ({Counter(states.values())}); studies split by the kill: {len(split)}, "
          f"analyses of them: {[analyses[u] for u in split]}")  # fmt: skip
    assert node.stop() == 0


# -- kill -9 while analysing -----------------------------------------------------------------


def test_kill9_during_analysis_resumes_and_reproduces_the_same_results(
    tmp_path: Path, pacs: OrthancServer, wrist_studies: list[list[Path]],
    nodes: list[NodeProcess],
) -> None:  # fmt: skip
    files = wrist_studies[0]  # the largest study: the longest analysis
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    node = NodeProcess(tmp_path, destinations=[_destination(pacs.aet, pacs.dicom_port)])
    nodes.append(node.start())
    assert node.storescu(files).returncode == 0

    # Kill once the SR is written but the Secondary Captures are not all: the worst moment.
    def sr_written_while_analysing() -> bool:
        written = bool(_result_uids(node, study_uid))
        return written and _states(node).get(study_uid) == "analysing"

    _wait(sr_written_while_analysing, 60, "the analysis to write its first result", poll=0.01)
    workers = _worker_pids(node)
    node.kill9()
    _wait(lambda: not any(map(_running, workers)), 10, "the orphaned workers to exit")
    assert _states(node)[study_uid] == "analysing", "the crash came too late to test anything"
    orphan_srs = {str(sr.SOPInstanceUID) for sr in _result_srs(node, study_uid)}
    assert len(orphan_srs) == 1 and pacs.instances() == []
    print(
        f"\nkilled while analysing {len(files)} instances; "
        f"{len(_result_uids(node, study_uid))} result file(s) written before the kill"
    )

    node.start()
    _wait(lambda: _states(node)[study_uid] == "done", 120, "the study to be done after restart")
    held = _orthanc_results(pacs)[study_uid]
    assert [i["uid"] for i in held["SR"]] == sorted(orphan_srs)  # the same, deterministic UID
    report = pacs.get(f"/instances/{held['SR'][0]['id']}/tags?simplify")
    # A first report: it must not claim to revise the SR the crash left unsent.
    assert int(report["InstanceNumber"]) == 1 and "PredecessorDocumentsSequence" not in report
    assert _evidence(report) == {_sop_uid(f) for f in files}
    assert {i["uid"] for m in held.values() for i in m} == _result_uids(node, study_uid)
    assert len(_events(node, "result-sent", study_uid)) == 1
    assert _analyses(node)[study_uid] == 2  # the interrupted analysis and the resumed one
    before = _result_uids(node, study_uid)

    # The modality sends the study a second time: the same results, no second report.
    assert node.storescu(files).returncode == 0
    _wait(lambda: len(_events(node, "result-sent", study_uid)) == 2, 120, "the second delivery")
    _wait(lambda: _states(node)[study_uid] == "done", 30, "the study to be done again")
    assert _result_uids(node, study_uid) == before
    again = _orthanc_results(pacs)[study_uid]
    assert [i["uid"] for i in again["SR"]] == sorted(orphan_srs)
    assert sorted(i["uid"] for m in again.values() for i in m) == sorted(before)
    assert node.stop() == 0


# -- kill -9 while sending -------------------------------------------------------------------


class StallingPacs:
    """A C-STORE SCP on 127.0.0.1 in this process that stalls from its `stall_at`-th C-STORE
    until `recover()`: it has the data but does not answer (a hung PACS)."""

    def __init__(self, stall_at: int, stall_limit_s: float = 120.0) -> None:
        self.port = free_ports(1)[0]
        self.aet = "STALLPACS"
        self.received: list[str] = []
        self.stall_at: int | None = stall_at
        self.stalled = threading.Event()
        self._release = threading.Event()
        self._limit = stall_limit_s
        self._lock = threading.Lock()
        ae = AE(ae_title=self.aet)
        ae.supported_contexts = StoragePresentationContexts
        server = ae.start_server(("127.0.0.1", self.port), block=False,
                                 evt_handlers=[(evt.EVT_C_STORE, self._store)])  # fmt: skip
        assert server is not None  # not blocking: pynetdicom returns the server
        self._server = server

    def _store(self, event: Event) -> int:
        uid = str(cast(C_STORE, event.request).AffectedSOPInstanceUID)
        with self._lock:
            stall = self.stall_at is not None and len(self.received) + 1 >= self.stall_at
        if stall:
            self.stalled.set()
            self._release.wait(self._limit)
        with self._lock:
            self.received.append(uid)
        return dimse.SUCCESS

    def recover(self) -> None:
        """Answer the stalled requests and every later one at once."""
        with self._lock:
            self.stall_at = None
        self._release.set()

    def stop(self) -> None:
        """Release anything stalled and stop listening."""
        self._release.set()
        self._server.shutdown()


def test_kill9_during_sending_resumes_and_delivers_exactly_once(
    tmp_path: Path, wrist_studies: list[list[Path]], nodes: list[NodeProcess]
) -> None:
    files = next(s for s in wrist_studies if len(s) == 2)
    study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    destination = StallingPacs(stall_at=2)  # takes the SR, hangs on the first Secondary Capture
    try:
        # The send timeout is longer than the whole test: only the crash ends that send.
        target = _destination(destination.aet, destination.port)
        node = NodeProcess(tmp_path, sending={"timeout_seconds": 300.0}, destinations=[target])
        nodes.append(node.start())
        assert node.storescu(files).returncode == 0
        assert destination.stalled.wait(60), "the delivery never reached the destination"
        assert _states(node)[study_uid] == "sending"
        workers = _worker_pids(node)
        node.kill9()
        _wait(lambda: not any(map(_running, workers)), 10, "the orphaned workers to exit")
        assert len(destination.received) == 1  # the SR; the Secondary Capture hangs
        node.start()
        destination.recover()
        _wait(lambda: _states(node)[study_uid] == "done", 60, "the delivery after restart")
        time.sleep(2)  # a second delivery, were there one, would show up now
        results = _result_uids(node, study_uid)
        received = Counter(destination.received)
        assert set(received) == results
        srs = {str(sr.SOPInstanceUID) for sr in _result_srs(node, study_uid)}
        assert len(srs) == 1 and all(received[uid] == 2 for uid in srs)  # resent, same UID
        sent = _events(node, "result-sent", study_uid)
        assert len(sent) == 1 and sent[0]["instances"] == len(results)
        assert _events(node, "result-failed", study_uid) == []
        attempts = _query(node, "SELECT attempts, status FROM deliveries WHERE study_uid = ?",
                          (study_uid,))  # fmt: skip
        assert attempts == [(1, "sent")]
        print(f"\nresent after restart: {dict(received)}")
        assert node.stop() == 0
    finally:
        destination.stop()


# -- the destination PACS down ---------------------------------------------------------------


def test_pacs_outage_queues_backs_off_and_delivers_everything_once_it_returns(
    tmp_path: Path, wrist_studies: list[list[Path]], nodes: list[NodeProcess]
) -> None:
    outage = OrthancServer(tmp_path / "orthanc")  # its ports are chosen; it is not running yet
    chosen = [s for s in wrist_studies if len(s) == 2][1:4]
    uids = [str(pydicom.dcmread(s[0], stop_before_pixels=True).StudyInstanceUID) for s in chosen]
    initial, maximum = 1.0, 4.0
    node = NodeProcess(tmp_path,
                       sending={"initial_delay_seconds": initial, "max_delay_seconds": maximum},
                       destinations=[_destination(outage.aet, outage.dicom_port)])  # fmt: skip
    nodes.append(node.start())
    for files in chosen:
        assert node.storescu(files).returncode == 0

    def attempts() -> dict[str, int]:
        rows = _query(node, "SELECT study_uid, attempts FROM deliveries")
        return {r[0]: int(r[1]) for r in rows}

    _wait(lambda: len(attempts()) == 3 and min(attempts().values()) >= 5, 90,
          "five failed attempts per study")  # fmt: skip
    down = {uid: _events(node, "result-failed", uid) for uid in uids}
    # Nothing is reported sent while the PACS is down.
    assert set(_states(node).values()) == {"sending"}
    assert _events(node, "result-sent") == []
    for uid in uids:
        assert all(e["outcome"] == "pending" and e["instances"] == 0 for e in down[uid])
        assert "connection" in down[uid][0]["reason"]
        # The pause after the n-th failure is initial * 2^(n-1), capped at maximum, +-10 %
        # (less 0.1 s: the audit line is written a moment after the attempt's clock reading).
        times = [_audit_time(e) for e in down[uid]]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        for n, gap in enumerate(gaps, start=1):
            assert gap >= 0.9 * min(initial * 2 ** (n - 1), maximum) - 0.1, (uid, gaps)
    assert {r[0] for r in _query(node, "SELECT status FROM deliveries")} == {"pending"}

    back_at = time.time()
    with outage:
        _wait(lambda: set(_states(node).values()) == {"done"}, 60, "delivery after the outage")
        held = _orthanc_results(outage)
        for uid in uids:
            sent = _events(node, "result-sent", uid)
            assert len(sent) == 1 and _audit_time(sent[0]) >= back_at - 0.01
            assert {i["uid"] for m in held[uid].values() for i in m} == _result_uids(node, uid)
            assert sent[0]["instances"] == len(_result_uids(node, uid))
            assert len(held[uid]["SR"]) == 1
        delivered = max(_audit_time(e) for e in _events(node, "result-sent"))
    print(f"\nfailed attempts per study during the outage: {[len(down[u]) for u in uids]}; "
          f"gaps {[round(b - a, 2) for a, b in _pairs(down[uids[0]])]} s; "
          f"delivered {delivered - back_at:.1f} s after the PACS came back")  # fmt: skip
    assert node.stop() == 0


def _audit_time(event: dict[str, Any]) -> float:
    """An audit event's time (UTC ISO with milliseconds) as epoch seconds."""
    stamp = time.strptime(event["time"][:19], "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(stamp) + float("0" + event["time"][19:-1])


def _pairs(events: list[dict[str, Any]]) -> list[tuple[float, float]]:
    times = [_audit_time(e) for e in events]
    return list(itertools.pairwise(times))


# -- an instance that arrives while its study is analysed ------------------------------------


def test_an_instance_received_during_analysis_gets_the_study_analysed_again(
    tmp_path: Path,
) -> None:
    """The kill -9 push test meets this when the resent instances reach a study the restart
    already promoted: results made without them must not close the study."""
    queue = WorkQueue(tmp_path / "index.sqlite")
    policy = RetryPolicy(initial_delay_s=1.0, max_delay_s=4.0, jitter=0.0)

    def receive(sop_uid: str, at: float) -> None:
        queue.record_instance(sop_uid=sop_uid, study_uid="1.2", series_uid="1.2.3",
                              sop_class_uid="1.2.840.10008.5.1.4.1.1.1", path=tmp_path / "x",
                              calling_aet="MODALITY", association_id="a", received_at=at,
                              ours=False)  # fmt: skip

    receive("1.2.3.1", 100.0)
    queue.association_closed("a", 100.0, released=True)
    assert queue.promote_complete(110.0, CompletenessParams(1.0, 10.0)) == ["1.2"]
    assert queue.claim(now=110.0) is not None
    receive("1.2.3.2", 111.0)  # while the worker analyses the first instance only
    queue.schedule("1.2", ["PACS@127.0.0.1:104"], [tmp_path / "sr.dcm"], 112.0)
    (delivery,) = queue.due(113.0)
    assert queue.record_attempt(delivery, sent=True, reason="", now=113.0, policy=policy) == "sent"
    study = queue.study("1.2")
    assert study is not None and study.state == "receiving" and study.n_instances == 2
    queue.association_closed("a", 114.0, released=True)
    assert queue.promote_complete(120.0, CompletenessParams(1.0, 10.0)) == ["1.2"]
    again = queue.claim(now=120.0)
    assert again is not None and not again.needs_revision
    assert [i.sop_uid for i in queue.instances("1.2")] == ["1.2.3.1", "1.2.3.2"]


def test_two_workers_never_attempt_the_same_delivery_and_a_restart_frees_a_claim(
    tmp_path: Path,
) -> None:
    """Two workers both saw a due delivery and both sent and reported it (found by the push
    test with two workers); a claim now takes it for one worker only, and the restart after a
    kill -9 mid-send makes it due again at once."""
    first, second = WorkQueue(tmp_path / "index.sqlite"), WorkQueue(tmp_path / "index.sqlite")
    policy = RetryPolicy(initial_delay_s=1.0, max_delay_s=4.0, jitter=0.0)
    first.record_instance(sop_uid="1.2.3.1", study_uid="1.2", series_uid="1.2.3",
                          sop_class_uid="1.2.840.10008.5.1.4.1.1.1", path=tmp_path / "x",
                          calling_aet="MODALITY", association_id="a", received_at=100.0,
                          ours=False)  # fmt: skip
    first.set_state("1.2", "analysing")
    first.schedule("1.2", ["PACS@127.0.0.1:104"], [tmp_path / "sr.dcm"], 100.0)
    taken = first.claim_due(101.0, timeout_s=30.0)
    assert taken is not None and taken.study_uid == "1.2"
    assert second.claim_due(101.0, timeout_s=30.0) is None  # held while it is being sent
    assert first.record_attempt(taken, sent=False, reason="refused", now=102.0,
                                policy=policy) == "pending"  # fmt: skip
    assert second.claim_due(102.5, timeout_s=30.0) is None  # backing off, not held
    retry = second.claim_due(103.0, timeout_s=30.0)
    assert retry is not None and retry.attempts == 1
    # kill -9 mid-send: the lease would hold it for 120 s, the restart releases it at once.
    restarted = WorkQueue(tmp_path / "index.sqlite")
    assert restarted.claim_due(104.0, timeout_s=30.0) is None
    restarted.recover()
    assert restarted.claim_due(104.0, timeout_s=30.0) is not None
    assert second.claim_due(104.0 + 121.0, timeout_s=30.0) is not None  # the lease ran out
