"""Analysis worker processes and the delivery of results, isolated from the receiver.

Each worker is its own process with its own SQLite connection and model: a decoder that
crashes or a slow model never blocks or kills ingest, and the supervisor in the service restarts
a worker that died. A worker claims complete studies, analyses them, writes the results, then
delivers due results to every destination with exponential backoff.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import time
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

from dicomnode.analysis import analyse_study
from dicomnode.audit import AuditLog
from dicomnode.config import Config, Destination
from dicomnode.logs import configure_logging
from dicomnode.retry import RetryPolicy
from dicomnode.sender import send_files
from dicomnode.spool import Spool
from dicomnode.work_queue import Delivery, WorkQueue
from pipeline.inference import ModelBundle

log = logging.getLogger("dicomnode.worker")
IDLE_SECONDS = 0.25


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
    queue = WorkQueue(database(config))
    results = Spool(config.storage.path / "results")
    bundle = ModelBundle.load(config.model.bundle)
    destinations = {destination_key(d): d for d in config.destinations}
    policy = retry_policy(config)
    log.info("worker ready with model %s %s", bundle.info.name, bundle.info.version)
    while not stop.is_set() and os.getppid() == parent:
        worked = analyse_next(
            queue,
            bundle,
            results,
            list(destinations),
            report_out_of_scope=config.results.report_out_of_scope,
        )
        worked = deliver_due(queue, destinations, config, policy) or worked
        if not worked:
            stop.wait(IDLE_SECONDS)
    queue.close()


def analyse_next(
    queue: WorkQueue,
    bundle: ModelBundle,
    results: Spool,
    destinations: list[str],
    *,
    report_out_of_scope: bool = False,
) -> bool:
    """Claim and analyse one complete study; False when there was none."""
    study = queue.claim()
    if study is None:
        return False
    claimed = time.time()
    queue.record_timing(study.study_uid, "receive", study.last_received - study.first_received,
                        claimed)  # fmt: skip
    queue.record_timing(study.study_uid, "wait", claimed - study.last_received, claimed)
    try:
        outcome = analyse_study(study.study_uid, queue.instances(study.study_uid), bundle, results,
                                report_out_of_scope=report_out_of_scope)  # fmt: skip
    except Exception as exc:  # one bad study must not stop the worker
        log.exception("study %s: analysis failed", study.study_uid)
        queue.set_state(study.study_uid, "failed", reason=f"analysis error: {type(exc).__name__}")
        return True
    for stage, seconds in outcome.timings.items():
        queue.record_timing(study.study_uid, stage, seconds, time.time())
    if not outcome.in_scope:
        log.info("study %s out of scope: %s", study.study_uid, outcome.reason)
        if outcome.files:  # the "not analysed" report
            queue.schedule(study.study_uid, destinations, list(outcome.files), time.time(),
                           final_state="out_of_scope", reason=outcome.reason)  # fmt: skip
        else:
            queue.set_state(study.study_uid, "out_of_scope", reason=outcome.reason)
        return True
    queue.schedule(study.study_uid, destinations, list(outcome.files), time.time())
    return True


def deliver_due(queue: WorkQueue, destinations: dict[str, Destination], config: Config,
                policy: RetryPolicy) -> bool:  # fmt: skip
    """Attempt every due delivery once; False when none was due."""
    due = queue.due(time.time())
    for delivery in due:
        _deliver(queue, delivery, destinations, config, policy)
    return bool(due)


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
        from dicomnode.tls import client_context

        tls = client_context(config.tls)
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
