"""Analysis worker processes and the delivery of results, isolated from the receiver.

Each worker is its own process with its own SQLite connection and model: a decoder that
crashes or a slow model never blocks or kills ingest, and the supervisor in the service restarts
a worker that died. A worker claims complete studies, analyses them, writes the results, then
delivers due results to every destination with exponential backoff.
"""

from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import random
import sqlite3
import threading
import time
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import TYPE_CHECKING

from dicomnode.audit import AuditLog
from dicomnode.config import Config, Destination
from dicomnode.index import StudyRow
from dicomnode.logs import configure_logging
from dicomnode.retry import RetryPolicy
from dicomnode.sender import send_files
from dicomnode.spool import Spool
from dicomnode.work_queue import Delivery, WorkQueue

if TYPE_CHECKING:  # the receiver imports this module: torch only in the worker processes
    from pipeline.inference import ModelBundle

log = logging.getLogger("dicomnode.worker")
IDLE_SECONDS = 0.25
ORPHAN_CHECK_SECONDS = 0.1
ORPHAN_EXIT_CODE = 70
DISK_FULL_PAUSE_SECONDS = 10.0
"""How long a worker waits after its disk (results or index) was full before trying again."""
DISK_FULL_REASON = "disk full while writing results: analysed again when space returns"


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


def retry_policy(config: Config) -> RetryPolicy:
    """The delivery retry policy from the configuration."""
    s = config.sending
    return RetryPolicy(initial_delay_s=s.initial_delay_seconds, max_delay_s=s.max_delay_seconds,
                       give_up_after_s=s.give_up_after_seconds)  # fmt: skip


def destination_key(destination: Destination) -> str:
    """How a destination is named in the queue and in status output."""
    return f"{destination.ae_title}@{destination.host}:{destination.port}"


def run_worker(config: Config, stop: EventType, parent: int) -> None:
    """The worker loop (a process target); returns when `stop` is set or the service that
    started it is gone (killed with -9: an orphan must not keep working on the queue)."""
    configure_logging(config.logging)
    exit_with_parent(parent)
    queue = WorkQueue(database(config))
    # Results stop at half the receiver's watermark: studies already accepted can still be
    # analysed while new ones are refused, and the index keeps room to record it all.
    results = Spool(config.storage.path / "results",
                    min_free_bytes=int(config.storage.min_free_mb * 1e6 / 2))  # fmt: skip
    from pipeline.inference import ModelBundle

    bundle = ModelBundle.load(config.model.bundle)
    destinations = {destination_key(d): d for d in config.destinations}
    policy = retry_policy(config)
    log.info("worker ready with model %s %s", bundle.info.name, bundle.info.version)
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
                list(destinations),
                report_out_of_scope=config.results.report_out_of_scope,
            )
            worked = deliver_due(queue, destinations, config, policy) or worked
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
) -> bool:
    """Claim and analyse one complete study; False when there was none.

    A full disk (results or index) puts the study back in the queue, without the results this
    attempt wrote (never sent, they must not become the predecessor of the next SR), and
    raises DiskFull: the caller pauses (and, should the index refuse even that, puts the
    study back later).
    """
    study = queue.claim()
    if study is None:
        return False
    folder = results.instances / study.study_uid
    before = set(folder.glob("*.dcm"))
    try:
        _analyse_claimed(queue, study, bundle, results, destinations,
                         report_out_of_scope=report_out_of_scope)  # fmt: skip
    except Exception as exc:
        if not is_disk_full(exc):
            raise
        for path in set(folder.glob("*.dcm")) - before:
            path.unlink(missing_ok=True)
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
    queue.set_state(study_uid, "complete", reason=DISK_FULL_REASON)


def _analyse_claimed(
    queue: WorkQueue,
    study: StudyRow,
    bundle: ModelBundle,
    results: Spool,
    destinations: list[str],
    *,
    report_out_of_scope: bool,
) -> None:
    """Analyse a claimed study and schedule its results (or mark it failed or out of scope)."""
    from dicomnode.analysis import analyse_study

    claimed = time.time()
    queue.record_timing(study.study_uid, "receive", study.last_received - study.first_received,
                        claimed)  # fmt: skip
    queue.record_timing(study.study_uid, "wait", claimed - study.last_received, claimed)
    try:
        outcome = analyse_study(study.study_uid, queue.instances(study.study_uid), bundle, results,
                                report_out_of_scope=report_out_of_scope)  # fmt: skip
    except Exception as exc:  # one bad study must not stop the worker
        if is_disk_full(exc):  # transient: the study is not at fault (see analyse_next)
            raise
        log.exception("study %s: analysis failed", study.study_uid)
        queue.set_state(study.study_uid, "failed", reason=f"analysis error: {type(exc).__name__}")
        return
    for stage, seconds in outcome.timings.items():
        queue.record_timing(study.study_uid, stage, seconds, time.time())
    if not outcome.in_scope:
        log.info("study %s out of scope: %s", study.study_uid, outcome.reason)
        if outcome.files:  # the "not analysed" report
            queue.schedule(study.study_uid, destinations, list(outcome.files), time.time(),
                           final_state="out_of_scope", reason=outcome.reason)  # fmt: skip
        else:
            queue.set_state(study.study_uid, "out_of_scope", reason=outcome.reason)
        return
    queue.schedule(study.study_uid, destinations, list(outcome.files), time.time())


def is_disk_full(exc: BaseException) -> bool:
    """True for a write refused for lack of space: ENOSPC or EDQUOT from a file (the spool's
    watermark included), SQLITE_FULL from the index, DiskFull."""
    if isinstance(exc, DiskFull):
        return True
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    return (isinstance(exc, sqlite3.OperationalError)
            and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL)  # fmt: skip


def deliver_due(queue: WorkQueue, destinations: dict[str, Destination], config: Config,
                policy: RetryPolicy) -> bool:  # fmt: skip
    """Attempt every delivery due now once; False when none was due. Each is claimed first:
    another worker never sends the same results at the same time."""
    now, worked = time.time(), False
    while (delivery := queue.claim_due(now, config.sending.timeout_seconds)) is not None:
        _deliver(queue, delivery, destinations, config, policy)
        worked = True
    return worked


def _deliver(queue: WorkQueue, delivery: Delivery, destinations: dict[str, Destination],
             config: Config, policy: RetryPolicy) -> None:  # fmt: skip
    destination = destinations.get(delivery.destination)
    if destination is None:  # removed from the configuration since: give up at once
        queue.record_attempt(
            delivery,
            sent=False,
            reason="destination no longer configured",
            now=time.time(),
            policy=policy,
            give_up=True,
        )
        return
    started = time.time()
    tls = None
    if destination.tls:
        from dicomnode.tls import TlsError, client_context

        try:
            tls = client_context(config.tls)
        except TlsError as exc:  # an unreadable certificate fails this attempt, not the worker
            log.error("study %s to %s: %s", delivery.study_uid, delivery.destination, exc)
            queue.record_attempt(delivery, sent=False, reason=str(exc), now=time.time(),
                                 policy=policy, random_unit=random.random())  # fmt: skip
            return
    result = send_files(destination, list(delivery.files), calling_aet=config.node.ae_title,
                        timeout_s=config.sending.timeout_seconds, tls=tls)  # fmt: skip
    queue.record_timing(delivery.study_uid, "send", time.time() - started, time.time())
    reasons = sorted({o.reason for o in result.outcomes if not o.sent})
    status = queue.record_attempt(
        delivery,
        sent=result.all_sent,
        reason="; ".join(reasons),
        now=time.time(),
        policy=policy,
        random_unit=random.random(),
    )
    log.info("study %s to %s: %s%s", delivery.study_uid, delivery.destination, status,
             f" ({'; '.join(reasons)})" if reasons else "")  # fmt: skip
    AuditLog(config.audit_path).record(
        "result-sent" if result.all_sent else "result-failed",
        study_uid=delivery.study_uid,
        destination=delivery.destination,
        tls=tls is not None,
        instances=sum(1 for o in result.outcomes if o.sent),
        outcome=status,
        reason="; ".join(reasons),
    )


class WorkerPool:
    """Starts the worker processes and restarts any that dies."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.context = multiprocessing.get_context("spawn")
        self.stop = self.context.Event()
        self.processes: list[multiprocessing.process.BaseProcess] = []

    def start(self) -> None:
        """Start `config.analysis.workers` processes."""
        self.processes = [self._spawn() for _ in range(self.config.analysis.workers)]

    def supervise(self) -> None:
        """Replace dead workers (called by the service's timer)."""
        for i, process in enumerate(self.processes):
            if not process.is_alive() and not self.stop.is_set():
                log.error("worker %s died (exit %s); restarting it", process.pid,
                          process.exitcode)  # fmt: skip
                self.processes[i] = self._spawn()

    def alive(self) -> int:
        """How many workers are running."""
        return sum(1 for p in self.processes if p.is_alive())

    def shutdown(self, timeout: float = 30.0) -> None:
        """Ask the workers to finish their current study, then wait for them."""
        self.stop.set()
        for process in self.processes:
            process.join(timeout)
            if process.is_alive():
                process.terminate()

    def _spawn(self) -> multiprocessing.process.BaseProcess:
        process = self.context.Process(target=run_worker,
                                       args=(self.config, self.stop, os.getpid()),
                                       name="dicomnode-worker", daemon=True)  # fmt: skip
        process.start()
        return process
