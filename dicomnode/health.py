"""`/healthz` and Prometheus `/metrics` on a local HTTP port.

The node's processes (receiver, analysis workers) share one SQLite database, so the metrics are
read from it at scrape time rather than kept in per-process counters: what a scrape reports is
what the node has durably recorded, across restarts too.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.registry import Collector

from dicomnode.drift import OUTCOMES, DriftMonitor
from dicomnode.index import STUDY_STATES
from dicomnode.supervision import AnalysisHealth
from dicomnode.work_queue import WorkQueue
from pipeline.drift import LEVELS

log = logging.getLogger("dicomnode.http")


class NodeCollector(Collector):
    """Instances, bytes, studies per state, stage latencies, failures, delivery backlog, and
    the drift of the model's outputs (with a `drift` monitor)."""

    def __init__(self, queue: WorkQueue, drift: DriftMonitor | None = None) -> None:
        self.queue = queue
        self.drift = drift

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        counts = self.queue.counts()
        yield CounterMetricFamily("dicomnode_instances_received", "Instances received and kept",
                                  value=counts.get("instances", 0))  # fmt: skip
        yield CounterMetricFamily("dicomnode_received_bytes", "Bytes of received instances",
                                  value=self.queue.received_bytes())  # fmt: skip
        states = GaugeMetricFamily("dicomnode_studies", "Studies per state", labels=["state"])
        for state in STUDY_STATES:
            states.add_metric([state], counts.get(state, 0))
        yield states
        stages = HistogramMetricFamily("dicomnode_stage_seconds", "Seconds per study and stage",
                                       labels=["stage"])  # fmt: skip
        for stage, histogram in self.queue.stage_histograms().items():
            buckets = [("+Inf" if b == float("inf") else str(b), n) for b, n in histogram.buckets]
            stages.add_metric([stage], buckets, sum_value=histogram.sum)
        yield stages
        failures = GaugeMetricFamily("dicomnode_failed_studies", "Failed studies by reason",
                                     labels=["reason"])  # fmt: skip
        for reason, count in self.queue.failure_reasons().items():
            failures.add_metric([reason], count)
        yield failures
        backlog = GaugeMetricFamily("dicomnode_delivery_backlog", "Pending deliveries",
                                    labels=["destination"])  # fmt: skip
        for destination, count in self.queue.backlog().items():
            backlog.add_metric([destination], count)
        yield backlog
        commitments = GaugeMetricFamily(
            "dicomnode_storage_commitments",
            "Storage commitment requests (N-ACTION) by outcome: awaiting the PACS's report, "
            "committed, failed (the PACS listed failures or refused) or expired (no report by "
            "the deadline); awaiting is current, the others count since the first",
            labels=["status"],
        )
        for status, count in self.queue.commitment_counts().items():
            commitments.add_metric([status], count)
        yield commitments
        if self.drift is not None:
            yield from drift_metrics(self.drift)


def drift_metrics(monitor: DriftMonitor) -> Iterator[GaugeMetricFamily]:
    """Per window (today, last_7_days): studies per outcome, level rates, PSI; and degraded."""
    report = monitor.report()
    studies = GaugeMetricFamily("dicomnode_drift_studies", "Studies counted per outcome (UTC "
                                "days)", labels=["window", "outcome"])  # fmt: skip
    rates = GaugeMetricFamily("dicomnode_drift_level_rate", "Share of analysed studies per "
                              "level", labels=["window", "level"])  # fmt: skip
    psi = GaugeMetricFamily("dicomnode_drift_psi", "Population stability index of the study "
                            "probability vs the bundle's reference", labels=["window"])  # fmt: skip
    for window in report.windows:
        for outcome in OUTCOMES:
            studies.add_metric([window.name, outcome], window.tally.outcomes[outcome])
        for level in LEVELS:
            rate = window.rates()[level]
            if rate is not None:
                rates.add_metric([window.name, level], rate)
        if window.psi is not None:
            psi.add_metric([window.name], window.psi)
    yield studies
    yield rates
    yield psi
    yield GaugeMetricFamily("dicomnode_drift_degraded", "1 when the outputs left the "
                            "reference's band", value=int(report.degraded))  # fmt: skip


def start_http(host: str, port: int, queue: WorkQueue,
               healthy: Callable[[], dict[str, object]],
               drift: DriftMonitor | None = None) -> ThreadingHTTPServer:  # fmt: skip
    """Serve /healthz and /metrics in a daemon thread; returns the server (shutdown() stops)."""
    registry = CollectorRegistry()
    registry.register(NodeCollector(queue, drift))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                state = healthy()
                code = 200 if state.get("ok") else 503
                self._answer(code, json.dumps(state).encode(), "application/json")
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            del format, args  # scrapes every few seconds would flood the log

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    log.info("health and metrics on http://%s:%d/", host, server.server_address[1])
    return server


def health(queue: WorkQueue, workers_alive: int, expected: int, analysis: AnalysisHealth,
           drift: DriftMonitor | None = None, shadow: bool = False, *,
           receivers: tuple[int, int] | None = None) -> dict[str, object]:  # fmt: skip
    """The /healthz answer: ok when every worker and every receiver process (`receivers`:
    alive, expected) runs, analysis is not failing and the database answers; otherwise
    `reason` says why. With a `drift` monitor, `degraded` (and then
    `degraded_reason`) says whether the model's outputs left their band: a field to alert on,
    not a failure of the node (the status code stays)."""
    try:
        queue.counts()
        database = True
    except Exception:  # a broken database is exactly what this must report
        database = False
    reasons = [] if database else ["the database does not answer"]
    if not analysis.ok:
        reasons.append(f"analysis {analysis.describe()}")
    elif workers_alive != expected:
        reasons.append(f"{workers_alive} of {expected} analysis workers running")
    if receivers is not None and receivers[0] != receivers[1]:
        reasons.append(f"{receivers[0]} of {receivers[1]} receiver processes running")
    answer: dict[str, object] = {
        "ok": not reasons, "workers": workers_alive, "expected_workers": expected,
        "database": database, "analysis": analysis.state, "time": time.time(),
    }  # fmt: skip
    if receivers is not None:
        answer["receivers"], answer["expected_receivers"] = receivers
    if reasons:
        answer["reason"] = "; ".join(reasons)
    if shadow:
        answer["shadow"] = True
    if drift is not None:
        try:
            report = drift.report()
            answer["degraded"], why = report.degraded, report.reason
        except (sqlite3.Error, OSError) as exc:
            answer["degraded"], why = True, f"drift statistics unreadable: {exc}"
        if answer["degraded"]:
            answer["degraded_reason"] = f"model outputs drift: {why}"
    return answer
