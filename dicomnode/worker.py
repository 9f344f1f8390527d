"""Analysis worker processes, isolated from the receiver.

Each worker is its own process with its own SQLite connection and model: a decoder that
crashes or a slow model never blocks or kills ingest, and the supervisor in the service restarts
a worker that stopped, with backoff, until too many stops in a row stop analysis (see
`dicomnode.supervision`). A worker claims complete studies, analyses them, writes the results,
then delivers due results (`dicomnode.delivery`). A worker whose model
fails (it no longer loads, or fails its self-test after an analysis failed) puts its study back
in the queue, tells the supervisor why and stops.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import multiprocessing
import os
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from dicomnode.commitment import expire_overdue
from dicomnode.config import RESULT_KINDS, Config
from dicomnode.delivery import deliver_due, destination_key, retry_policy
from dicomnode.index import StudyRow
from dicomnode.logs import configure_logging
from dicomnode.model_check import ModelFault, load_checked, self_test
from dicomnode.spool import Spool
from dicomnode.states import StudyState
from dicomnode.supervision import AnalysisHealth, RestartPolicy, after_failure, after_running
from dicomnode.work_queue import MAX_CRASHES, WorkQueue

if TYPE_CHECKING:  # the receiver imports this module: torch only in the worker processes
    from dicomnode.drift import DriftMonitor
    from pipeline.inference import ModelBundle, StudyPrediction

log = logging.getLogger("dicomnode.worker")
IDLE_SECONDS = 0.25
ORPHAN_CHECK_SECONDS = 0.1
ORPHAN_EXIT_CODE = 70
MODEL_FAILURE_EXIT_CODE = 78
"""A worker whose model cannot analyse anything (EX_CONFIG); the reason goes to the supervisor."""
DISK_FULL_PAUSE_SECONDS = 10.0
"""How long a worker waits after its disk (results or index) was full before trying again."""
DISK_FULL_REASON = "disk full while writing results: analysed again when space returns"
SHADOW_REASON = "shadow mode: results kept, not sent"
"""What a study analysed in shadow mode ([results] shadow) says, and the workers' log."""


class DiskFull(Exception):
    """A write of the worker's found the disk full (results or index): the worker pauses.

    `stranded` names the study it had claimed when the index, full too, could not take it back
    into the queue; the worker puts it back once it can.
    """

    def __init__(self, cause: BaseException, stranded: str | None = None) -> None:
        super().__init__(str(cause))
        self.stranded = stranded


def database(config: Config) -> Path:
    """The node's SQLite file."""
    return config.storage.path / "index.sqlite"


def run_worker(config: Config, stop: EventType, parent: int,
               report: Connection | None = None) -> None:  # fmt: skip
    """The worker loop (a process target); returns when `stop` is set or the service that
    started it is gone (killed with -9: an orphan must not keep working on the queue). Exits
    with MODEL_FAILURE_EXIT_CODE, the reason sent on `report`, when the model fails."""
    configure_logging(config.logging)
    exit_with_parent(parent)
    import torch  # here: the receiver process never loads it (~700 MB)

    torch.set_num_threads(config.analysis.threads_per_worker)
    queue = WorkQueue(database(config))
    # Results stop at half the receiver's watermark: studies already accepted can still be
    # analysed while new ones are refused, and the index keeps room to record it all.
    results = Spool(config.storage.path / "results",
                    min_free_bytes=int(config.storage.min_free_mb * 1e6 / 2))  # fmt: skip
    try:
        bundle = load_checked(config.model.bundle)
    except ModelFault as fault:
        _stop_for_model(queue, report, fault)
    from dicomnode.drift import DriftMonitor, reference_of

    drift = DriftMonitor(config.storage.path, reference_of(config.model.bundle))
    destinations = {destination_key(d): d for d in config.destinations}
    shadow = config.results.shadow
    policy = retry_policy(config)
    log.info("worker ready with model %s %s%s", bundle.info.name, bundle.info.version,
             f"; {SHADOW_REASON}" if shadow else "")  # fmt: skip
    stranded: set[str] = set()  # claimed, to be put back in the queue (see DiskFull)
    while not stop.is_set() and os.getppid() == parent:
        try:
            for study_uid in sorted(stranded):
                requeue(queue, study_uid)
                stranded.discard(study_uid)
            worked = analyse_next(
                queue,
                bundle,
                results,
                [] if shadow else list(destinations),
                report_out_of_scope=config.results.report_out_of_scope,
                drift=drift,
                shadow=shadow,
                send=config.results.send,
                hold_s=config.completeness.grace_seconds
                if config.completeness.analyse_during_grace
                else 0.0,
            )
            if not shadow:  # shadow mode sends nothing, not even what was due before
                worked = deliver_due(queue, destinations, config, policy) or worked
                worked = expire_overdue(queue, config, policy) or worked
        except ModelFault as fault:
            _stop_for_model(queue, report, fault)
        except Exception as exc:
            if not is_disk_full(exc):
                raise
            if isinstance(exc, DiskFull) and exc.stranded:
                stranded.add(exc.stranded)
            # Dying would only restart the worker into the same full disk, over and over.
            log.error("disk full (%s); pausing %.0f s", exc, DISK_FULL_PAUSE_SECONDS)
            stop.wait(DISK_FULL_PAUSE_SECONDS)
            continue
        if not worked:
            stop.wait(IDLE_SECONDS)
    queue.close()


def _stop_for_model(queue: WorkQueue, report: Connection | None, fault: ModelFault) -> NoReturn:
    """Tell the supervisor why, then end the process: restarting at once would only fail again
    (the supervisor decides when to try, and when to stop trying)."""
    log.error("model failure, this worker stops: %s", fault)
    queue.close()
    if report is not None:
        # OSError: the supervisor is gone; the orphan watch ends this process anyway.
        with contextlib.suppress(OSError):
            report.send(str(fault))
    sys.exit(MODEL_FAILURE_EXIT_CODE)


def exit_with_parent(parent: int, interval: float = ORPHAN_CHECK_SECONDS) -> threading.Thread:
    """End this process as soon as `parent` is gone (a kill -9 of the service).

    The loop in `run_worker` checks its parent only between studies, but one analysis or a send
    to a hung PACS can take minutes: an orphan would go on writing results and delivering them
    while the restarted service resumes the same study, so both would report it. This thread
    ends the process within `interval`; its transactions roll back and its claim is resumed by
    the restarted service (`WorkQueue.recover`). Not PR_SET_PDEATHSIG: that follows the parent
    *thread*, and the supervisor restarts workers from a scheduler thread.
    """

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os._exit(ORPHAN_EXIT_CODE)  # nothing of this process may run on: no clean-up

    thread = threading.Thread(target=watch, name="dicomnode-orphan-watch", daemon=True)
    thread.start()
    return thread


def analyse_next(
    queue: WorkQueue,
    bundle: ModelBundle,
    results: Spool,
    destinations: list[str],
    *,
    report_out_of_scope: bool = False,
    drift: DriftMonitor | None = None,
    shadow: bool = False,
    send: tuple[str, ...] = RESULT_KINDS,
    hold_s: float = 0.0,
) -> bool:
    """Claim and analyse one complete study; False when there was none. `drift` counts its
    outcome; in `shadow` mode its results are kept and scheduled nowhere. `send` names the
    result objects written ([results] send). Deliveries start `hold_s` after the study's last
    instance at the earliest (the grace period it was analysed during, see completeness).

    A full disk (results or index) puts the study back in the queue, without the results this
    attempt wrote (never sent, they must not become the predecessor of the next SR), and
    raises DiskFull: the caller pauses (and, should the index refuse even that, puts the
    study back later). A failing model puts it back too, and raises ModelFault.
    """
    study = queue.claim()
    if study is None:
        return False
    folder = results.instances / study.study_uid
    before = set(folder.glob("*.dcm"))
    try:
        _analyse_claimed(queue, study, bundle, results, [] if shadow else destinations,
                         report_out_of_scope=report_out_of_scope, drift=drift,
                         shadow=shadow, send=send,
                         hold_until=study.last_received + hold_s)  # fmt: skip
    except Exception as exc:
        if not (is_disk_full(exc) or isinstance(exc, ModelFault)):
            raise
        for path in set(folder.glob("*.dcm")) - before:
            path.unlink(missing_ok=True)
        if isinstance(exc, ModelFault):
            raise  # the study is back in the queue already
        log.error("study %s: %s", study.study_uid, DISK_FULL_REASON)
        try:
            requeue(queue, study.study_uid)
        except Exception as again:
            if not is_disk_full(again):
                raise
            raise DiskFull(again, stranded=study.study_uid) from exc
        raise DiskFull(exc) from exc
    return True


def requeue(queue: WorkQueue, study_uid: str) -> None:
    """Put a study whose results did not fit back in the queue, to be analysed again."""
    queue.set_state(study_uid, StudyState.COMPLETE, reason=DISK_FULL_REASON)


def _analyse_claimed(
    queue: WorkQueue,
    study: StudyRow,
    bundle: ModelBundle,
    results: Spool,
    destinations: list[str],
    *,
    report_out_of_scope: bool,
    drift: DriftMonitor | None = None,
    shadow: bool = False,
    send: tuple[str, ...] = RESULT_KINDS,
    hold_until: float = 0.0,
) -> None:
    """Analyse a claimed study and schedule its results (or mark it failed or out of scope)."""
    from dicomnode.analysis import analyse_study

    claimed = time.time()
    queue.record_timing(study.study_uid, "receive", study.last_received - study.first_received,
                        claimed)  # fmt: skip
    queue.record_timing(study.study_uid, "wait", claimed - study.last_received, claimed)
    try:
        outcome = analyse_study(study.study_uid, queue.instances(study.study_uid), bundle, results,
                                report_out_of_scope=report_out_of_scope, send=send)  # fmt: skip
    except Exception as exc:  # one bad study must not stop the worker
        if is_disk_full(exc):  # transient: the study is not at fault (see analyse_next)
            raise
        try:  # a bad study, or a model that no longer works at all?
            self_test(bundle)
        except ModelFault as fault:
            log.error("study %s: analysis failed (%s) and so does the model's self-test: the "
                      "study stays queued", study.study_uid, type(exc).__name__)  # fmt: skip
            log.debug("analysis failure detail", exc_info=exc)
            queue.set_state(study.study_uid, StudyState.COMPLETE, reason=f"model failure: {fault}")
            raise fault from exc
        log.exception("study %s: analysis failed", study.study_uid)
        queue.set_state(study.study_uid, StudyState.FAILED,
                        reason=f"analysis error: {type(exc).__name__}")  # fmt: skip
        return
    for stage, seconds in outcome.timings.items():
        queue.record_timing(study.study_uid, stage, seconds, time.time())
    abstained = outcome.prediction is not None and outcome.prediction.abstained
    if not outcome.in_scope and not abstained:
        log.info("study %s out of scope: %s", study.study_uid, outcome.reason)
        if outcome.files:  # the "not analysed" report
            queue.schedule(study.study_uid, destinations, list(outcome.files), time.time(),
                           final_state=StudyState.OUT_OF_SCOPE, reason=outcome.reason,
                           hold_until=hold_until)  # fmt: skip
        else:
            queue.set_state(study.study_uid, StudyState.OUT_OF_SCOPE, reason=outcome.reason)
        _count(drift, study.study_uid, None)
        return
    # A wrist study the model abstained on entirely is not out of scope: it ends done, with its
    # "not analysable" report delivered and that reason kept.
    reason = SHADOW_REASON if shadow else (outcome.reason if abstained else "")
    queue.schedule(study.study_uid, destinations, list(outcome.files), time.time(),
                   reason=reason, hold_until=hold_until)  # fmt: skip
    if shadow:
        log.info("study %s: %s (%d file(s) in the results spool)", study.study_uid,
                 SHADOW_REASON, len(outcome.files))  # fmt: skip
    _count(drift, study.study_uid, outcome.prediction)


def _count(drift: DriftMonitor | None, study_uid: str, prediction: StudyPrediction | None) -> None:
    """Add a study's outcome to the drift statistics; a failure there never fails the study."""
    if drift is None:
        return
    try:
        if prediction is None or prediction.abstained:
            drift.record("not_analysable", None)
        else:
            drift.record(prediction.level, prediction.probability)
    except (sqlite3.Error, OSError) as exc:
        log.error("study %s: drift statistics not recorded: %s", study_uid, exc)


def is_disk_full(exc: BaseException) -> bool:
    """True for a write refused for lack of space: ENOSPC or EDQUOT from a file (the spool's
    watermark included), SQLITE_FULL from the index, DiskFull."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return (isinstance(exc, sqlite3.OperationalError)
            and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL)  # fmt: skip


class WorkerPool:
    """Starts the worker processes and restarts any that stops, as `RestartPolicy` says;
    `health` is what /healthz reports, and `on_change` hears of every change to it."""

    def __init__(self, config: Config, policy: RestartPolicy | None = None,
                 on_change: Callable[[AnalysisHealth], None] | None = None) -> None:  # fmt: skip
        self.config = config
        self.policy = policy or RestartPolicy()
        self.on_change = on_change
        self.context = multiprocessing.get_context("spawn")
        self.stop = self.context.Event()
        self.health = AnalysisHealth(since=time.time())
        self.processes: list[multiprocessing.process.BaseProcess | None] = []
        """One per worker; None while a stopped one waits for its restart."""
        self._reports: list[Connection | None] = []
        self._started: list[float] = []
        self._queue: WorkQueue | None = None
        """Opened on the first worker stop, to release the study it held."""

    def start(self) -> None:
        """Start `config.analysis.worker_count` processes."""
        count = self.config.analysis.worker_count
        self.processes, self._reports, self._started = [None] * count, [None] * count, [0.0] * count
        for i in range(count):
            self._spawn(i)

    def supervise(self, now: float | None = None) -> None:
        """Note stopped workers and start them again when due (called by the service's timer)."""
        if self.stop.is_set():
            return
        at = time.time() if now is None else now
        health = self.health
        stopped = [self._stopped(i, p) for i, p in enumerate(self.processes)
                   if p is not None and not p.is_alive()]  # fmt: skip
        if stopped:  # workers stopping together count once: a broken model stops them all
            health = after_failure(health, stopped[0], at, self.policy)
            if health.state == "stopped":
                log.error("analysis %s", health.describe())
            else:
                wait = max(0.0, (health.retry_at or at) - at)
                log.error("analysis worker stopped: %s; restarting it %s (%d failure(s) in a "
                          "row; analysis stops at %d)", health.reason,
                          f"in {wait:.0f} s" if wait else "now", health.failures,
                          self.policy.max_failures)  # fmt: skip
        if health.state == "restarting" and (health.retry_at or at) <= at:
            for i, process in enumerate(self.processes):
                if process is None:
                    self._spawn(i)
        if health.state == "restarting" and all(p is not None for p in self.processes):
            ran = min(at - started for started in self._started)
            health = after_running(health, ran, at, self.policy)
            if health.ok:
                log.info("analysis workers running again")
        if health != self.health:
            self.health = health
            if self.on_change is not None:
                self.on_change(health)

    def alive(self) -> int:
        """How many workers are running."""
        return sum(1 for p in self.processes if p is not None and p.is_alive())

    def shutdown(self, timeout: float = 30.0) -> None:
        """Ask the workers to finish their current study, then wait for them."""
        self.stop.set()
        for process in self.processes:
            if process is None:
                continue
            process.join(timeout)
            if process.is_alive():  # still loading its model, or stuck: SIGTERM, then wait
                process.terminate()
                process.join(5.0)

    def _stopped(self, i: int, process: multiprocessing.process.BaseProcess) -> str:
        """Why worker `i` stopped: the model failure it reported, else its exit status."""
        reason, report = "", self._reports[i]
        if report is not None:
            with contextlib.suppress(EOFError, OSError):  # died before (or while) saying it
                reason = str(report.recv()) if report.poll() else ""
            report.close()
        self.processes[i], self._reports[i] = None, None
        code = process.exitcode
        if not reason and code is not None and code < 0:
            name = signal.Signals(-code).name if -code in signal.valid_signals() else -code
            reason = f"worker {process.pid} killed by signal {name}"
        elif not reason:
            reason = f"worker {process.pid} exited with status {code}"
        if process.pid is not None:
            self._release(process.pid, reason)
        return reason

    def _release(self, pid: int, why: str) -> None:
        """Put the study a dead worker was analysing back in the queue at once (or fail it, when
        it stopped workers too often): not left 'analysing' until the node restarts."""
        try:
            if self._queue is None:
                self._queue = WorkQueue(database(self.config))
            released = self._queue.release_crashed(pid, why)
        except (sqlite3.Error, OSError) as exc:  # the next start-up's `recover` does it then
            log.error("could not put back the study of stopped worker %d: %s", pid, exc)
            return
        for study_uid, state in released:
            if state == StudyState.FAILED:
                log.error("study %s failed: analysis stopped %d times (%s)", study_uid,
                          MAX_CRASHES, why)  # fmt: skip
            else:
                log.warning("study %s queued again: its worker stopped (%s)", study_uid, why)

    def _spawn(self, i: int) -> None:
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(target=run_worker,
                                       args=(self.config, self.stop, os.getpid(), writer),
                                       name="dicomnode-worker", daemon=True)  # fmt: skip
        process.start()
        writer.close()  # the worker holds its own end: EOF here once it is gone
        self.processes[i], self._reports[i], self._started[i] = process, reader, time.time()
