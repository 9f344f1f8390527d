"""Load generation and measurement shared by bench/soak.py and tests/reliability/test_load.py.

- Templates: synthetic instances (train.phantoms) split into wrist and other body parts.
- Copies: a template study re-issued with fresh Study/Series/SOP Instance UIDs, so a handful of
  generated images make any number of distinct studies cheaply.
- Senders: dcmtk `storescu -v`, one process per association (real concurrency); every
  "Received Store Response (...)" line is counted, so a missing or non-Success answer shows.
- Memory: VmRSS/VmHWM of the node and of its worker processes from /proc (no psutil).
- Outcomes: per-study states and the time from the last instance received to the final state,
  read from the node's SQLite index.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

STORESCU_ENV = {**os.environ, "TCP_NODELAY": "1"}  # dcmtk: no Nagle delay per object
FINAL_STATES = ("done", "failed", "out_of_scope")
# storescu -v logs "Sending file: PATH" before each request and the response status after it.
_EVENT = re.compile(r"Sending file: (\S+)|Received Store Response \(([^)]*)\)")
_KIB = 1024


# -- templates and copies ----------------------------------------------------------------


@dataclass(frozen=True)
class Templates:
    """Readable (not corrupt) synthetic instances by kind of study they can make."""

    wrist: tuple[Path, ...]
    other: tuple[Path, ...]


def load_templates(archive: Path) -> Templates:
    """Split a `generate_archive` output into wrist and non-wrist instances."""
    from train.phantoms.archive import read_truth

    wrist: list[Path] = []
    other: list[Path] = []
    for row in read_truth(archive):
        if not row["corrupt"]:
            (wrist if row["body_part"] == "wrist" else other).append(archive / row["path"])
    return Templates(tuple(wrist), tuple(other))


@dataclass(frozen=True)
class CopiedStudy:
    """One study written with fresh UIDs: its files in sending order."""

    study_uid: str
    wrist: bool
    files: tuple[Path, ...]
    sop_uids: tuple[str, ...]


def copy_study(sources: Sequence[Path], out: Path, *, wrist: bool, label: str) -> CopiedStudy:
    """Write `sources` (template files) under `out` as one new study of one series.

    Patient ID and name become `label`, so the copies of different template patients form
    one consistent study.
    """
    study_uid, series_uid = generate_uid(), generate_uid()
    folder = out / study_uid
    folder.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    sop_uids: list[str] = []
    for number, source in enumerate(sources, start=1):
        dataset = pydicom.dcmread(source)
        sop_uid = generate_uid()
        dataset.StudyInstanceUID = study_uid
        dataset.SeriesInstanceUID = series_uid
        dataset.SOPInstanceUID = sop_uid
        dataset.file_meta.MediaStorageSOPInstanceUID = sop_uid
        dataset.PatientID = label
        dataset.PatientName = f"LOAD^{label}"
        dataset.InstanceNumber = number
        path = folder / f"{sop_uid}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        files.append(path)
        sop_uids.append(sop_uid)
    return CopiedStudy(study_uid, wrist, tuple(files), tuple(sop_uids))


def cycle(paths: Sequence[Path], count: int, start: int = 0) -> list[Path]:
    """`count` paths taken round-robin from `paths`, beginning at index `start`."""
    if not paths:
        raise ValueError("no template to copy")
    return [paths[(start + i) % len(paths)] for i in range(count)]


# -- sending -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SendResult:
    """One storescu association: exit status and the C-STORE response status of each file
    (files that got no response are absent from `answered`)."""

    files: tuple[Path, ...]
    returncode: int
    answered: dict[Path, str]
    seconds: float
    output_tail: str

    @property
    def statuses(self) -> Counter[str]:
        """How many responses of each status."""
        return Counter(self.answered.values())

    @property
    def failures(self) -> int:
        """C-STORE requests not answered Success (missing answers included)."""
        return len(self.files) - self.statuses.get("Success", 0)

    @property
    def succeeded(self) -> list[Path]:
        """The files answered Success."""
        return [f for f in self.files if self.answered.get(f) == "Success"]

    @property
    def ok(self) -> bool:
        """Exit status 0 and a Success for every file."""
        return self.returncode == 0 and len(self.succeeded) == len(self.files)


def send(aet: str, port: int, files: Sequence[Path], *, calling: str = "LOADGEN",
         timeout: float = 600.0) -> SendResult:  # fmt: skip
    """Send `files` over one association with `storescu -v`; never raises on a failed send."""
    command = ["storescu", "-v", "-aet", calling, "-aec", aet, "127.0.0.1", str(port),
               *map(str, files)]  # fmt: skip
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=STORESCU_ENV,
                                timeout=timeout, errors="replace")  # fmt: skip
        output, returncode = result.stdout + result.stderr, result.returncode
    except subprocess.TimeoutExpired as exc:
        output = _text(exc.stdout) + _text(exc.stderr) + f"\n(timed out after {timeout} s)"
        returncode = -1
    seconds = time.perf_counter() - started
    return SendResult(tuple(files), returncode, _answers(output), seconds, output[-2000:])


def _answers(output: str) -> dict[Path, str]:
    """The response status of each file, from storescu's verbose log."""
    answered: dict[Path, str] = {}
    current: Path | None = None
    for match in _EVENT.finditer(output):
        if match.group(1) is not None:
            current = Path(match.group(1))
        elif current is not None:
            answered[current] = match.group(2)
            current = None
    return answered


def send_parallel(aet: str, port: int, batches: Sequence[Sequence[Path]], *,
                  timeout: float = 600.0) -> tuple[list[SendResult], float]:  # fmt: skip
    """One storescu process per batch, all at once; the results and the wall time."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, len(batches))) as pool:
        futures = [pool.submit(send, aet, port, batch, calling=f"LOAD{i:02d}", timeout=timeout)
                   for i, batch in enumerate(batches)]  # fmt: skip
        results = [f.result() for f in futures]
    return results, time.perf_counter() - started


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else value.decode(errors="replace")


# -- memory ------------------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (children of each of its threads, recursively)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for children in Path(f"/proc/{parent}/task").glob("*/children"):
            try:
                pids = [int(p) for p in children.read_text().split()]
            except OSError:
                continue
            found += pids
            pending += pids
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of one process in KiB; empty once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    values: dict[str, int] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


def role(pid: int) -> str:
    """'worker', 'resource_tracker' or the command name of a node child process."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    if "spawn_main" in command:
        return "worker"
    if "resource_tracker" in command:
        return "resource_tracker"
    return command.split(" ")[0].rsplit("/", 1)[-1] or "?"


@dataclass
class MemoryReport:
    """Peaks in KiB: the receiver's own, each child's (by pid and role), and the largest
    sampled sum of the whole tree; `series` holds (seconds, receiver RSS, tree RSS)."""

    receiver_start_kib: int = 0
    receiver_peak_kib: int = 0
    children_peak_kib: dict[int, int] = field(default_factory=dict)
    roles: dict[int, str] = field(default_factory=dict)
    tree_peak_kib: int = 0
    series: list[tuple[float, int, int]] = field(default_factory=list)

    def peak_of(self, name: str) -> int:
        """The largest peak among children with role `name` (0 when none)."""
        return max((kib for pid, kib in self.children_peak_kib.items()
                    if self.roles.get(pid) == name), default=0)  # fmt: skip

    def summary(self) -> str:
        """One line in MiB."""
        workers = [kib for pid, kib in self.children_peak_kib.items()
                   if self.roles.get(pid) == "worker"]  # fmt: skip
        return (
            f"receiver peak {mib(self.receiver_peak_kib):.0f} MiB "
            f"(after start {mib(self.receiver_start_kib):.0f} MiB); "
            f"worker peak {', '.join(f'{mib(w):.0f}' for w in workers) or '-'} MiB; "
            f"whole tree sampled peak {mib(self.tree_peak_kib):.0f} MiB"
        )


def mib(kib: float) -> float:
    """KiB to MiB."""
    return kib / _KIB


class MemorySampler:
    """Samples the RSS of a process tree every `interval` seconds in a thread.

    VmHWM is the kernel's own peak, so a short spike between samples is not missed for a
    process alive at the last sample; the tree sum is only as fine as the sampling.
    """

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        self.report = MemoryReport(receiver_start_kib=memory_kib(pid).get("VmRSS", 0))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._started = time.monotonic()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> MemoryReport:
        """Stop sampling (after one last sample) and return the report."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self.sample()
        return self.report

    def sample(self) -> None:
        """Take one sample now."""
        report = self.report
        own = memory_kib(self.pid)
        report.receiver_peak_kib = max(report.receiver_peak_kib, own.get("VmHWM", 0))
        total = own.get("VmRSS", 0)
        for child in descendants(self.pid):
            values = memory_kib(child)
            if not values:
                continue
            report.roles.setdefault(child, role(child))
            peak = report.children_peak_kib.get(child, 0)
            report.children_peak_kib[child] = max(peak, values.get("VmHWM", 0))
            total += values.get("VmRSS", 0)
        report.tree_peak_kib = max(report.tree_peak_kib, total)
        seconds = time.monotonic() - self._started
        report.series.append((seconds, own.get("VmRSS", 0), total))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


# -- outcomes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class StudyOutcome:
    """A study as the node's index holds it."""

    study_uid: str
    state: str
    n_instances: int
    last_received: float
    state_changed_at: float
    reason: str

    @property
    def seconds_to_final(self) -> float:
        """From the last instance received to the final state (results delivered for 'done')."""
        return self.state_changed_at - self.last_received


def _connect(index_path: Path) -> sqlite3.Connection:
    # A separate read connection; the node writes in WAL mode, so reading never blocks it.
    return sqlite3.connect(index_path, timeout=30)


def study_outcomes(index_path: Path) -> dict[str, StudyOutcome]:
    """Every study in the index by Study Instance UID."""
    db = _connect(index_path)
    try:
        rows = db.execute("SELECT study_uid, state, n_instances, last_received, "
                          "state_changed_at, reason FROM studies").fetchall()  # fmt: skip
    finally:
        db.close()
    return {r[0]: StudyOutcome(r[0], r[1], int(r[2]), float(r[3]), float(r[4]), r[5])
            for r in rows}  # fmt: skip


def indexed_instances(index_path: Path) -> dict[str, tuple[str, Path]]:
    """SOP Instance UID -> (Study Instance UID, spool path) of every received instance."""
    db = _connect(index_path)
    try:
        rows = db.execute("SELECT sop_uid, study_uid, path FROM instances WHERE ours = 0")
        return {r[0]: (r[1], Path(r[2])) for r in rows.fetchall()}
    finally:
        db.close()


@dataclass(frozen=True)
class DeliveryRow:
    """Results of one study for one destination, as the node's queue holds them."""

    study_uid: str
    destination: str
    status: str
    files: int
    attempts: int


def deliveries(index_path: Path) -> list[DeliveryRow]:
    """Every result delivery the node scheduled (none before the first worker started)."""
    db = _connect(index_path)
    try:
        rows = db.execute(
            "SELECT study_uid, destination, status, files, attempts FROM deliveries"
        ).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()
    return [DeliveryRow(r[0], r[1], r[2], len(r[3].splitlines()), int(r[4])) for r in rows]


def wait_final(index_path: Path, study_uids: Iterable[str], timeout: float,
               poll: float = 0.5) -> dict[str, StudyOutcome]:  # fmt: skip
    """Poll until every study in `study_uids` is in a final state or `timeout` passes; the
    outcomes of those studies (missing ones absent)."""
    wanted = set(study_uids)
    deadline = time.monotonic() + timeout
    while True:
        outcomes = {u: o for u, o in study_outcomes(index_path).items() if u in wanted}
        final = all(u in outcomes and outcomes[u].state in FINAL_STATES for u in wanted)
        if final or time.monotonic() > deadline:
            return outcomes
        time.sleep(poll)


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation; nan for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)
