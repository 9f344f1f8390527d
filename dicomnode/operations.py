"""What admins ask of a running (or stopped) node: `status` and `resend`, from the database."""

from __future__ import annotations

import time
from typing import Any

from dicomnode.config import Config
from dicomnode.drift import DriftMonitor, reference_of
from dicomnode.receiver_status import read_status
from dicomnode.states import StudyState
from dicomnode.work_queue import WorkQueue
from dicomnode.worker import SHADOW_REASON, database
from pipeline.drift import LEVELS
from pipeline.timestamps import utc_timestamp

WAITING = (StudyState.RECEIVING, StudyState.COMPLETE, StudyState.ANALYSING, StudyState.SENDING)


def status(config: Config, *, now: float | None = None, recent: int = 10) -> dict[str, Any]:
    """Counts per state, the oldest waiting study, recent failures, per-destination backlog,
    the analysis workers' health as the service last recorded it, shadow mode and the drift of
    the model's outputs (today and the last 7 days against the bundle's reference)."""
    at = time.time() if now is None else now
    queue = WorkQueue(database(config))
    try:
        counts = queue.counts()
        waiting = queue.studies_in_state(*WAITING)
        oldest = min(waiting, key=lambda s: s.first_received, default=None)
        failed = sorted(queue.studies_in_state(StudyState.FAILED), key=lambda s: s.state_changed_at,
                        reverse=True)[:recent]  # fmt: skip
        analysis = queue.analysis_health()
        return {
            "analysis": {"state": analysis.state, "reason": analysis.reason,
                         "failures": analysis.failures, "since": utc_timestamp(analysis.since),
                         "summary": analysis.describe()},
            "counts": counts,
            "oldest_waiting": None if oldest is None else {
                "study_instance_uid": oldest.study_uid, "state": oldest.state,
                "waiting_seconds": round(at - oldest.first_received, 1),
            },
            "recent_failures": [
                {"study_instance_uid": s.study_uid, "reason": s.reason,
                 "at": utc_timestamp(s.state_changed_at)}
                for s in failed
            ],
            "backlog": queue.backlog(),
            "commitments": queue.commitment_counts(),
            "purged": queue.purge_totals(),
            "shadow": config.results.shadow,
            "receivers": _receivers(config),
            "drift": DriftMonitor(config.storage.path,
                                  reference_of(config.model.bundle)).report(at).as_dict(),
        }  # fmt: skip
    finally:
        queue.close()


def _receivers(config: Config) -> dict[str, Any] | None:
    """The receiver processes as the service last recorded them (None: it never did)."""
    recorded = read_status(config.storage.path)
    if recorded is None:
        return None
    return {"alive": recorded.alive, "expected": recorded.expected, "pids": list(recorded.pids),
            "restarts": recorded.restarts, "updated": utc_timestamp(recorded.updated),
            "summary": recorded.describe()}  # fmt: skip


def format_status(report: dict[str, Any]) -> str:
    """The human-readable `dicomnode status`."""
    counts = report["counts"]
    analysis = report["analysis"]
    since = "" if analysis["state"] == "running" else f" (since {analysis['since']})"
    lines = [f"analysis: {analysis['summary']}{since}"]
    if report.get("receivers"):
        lines.append(f"receivers: {report['receivers']['summary']}")
    if report.get("shadow"):
        lines.append(SHADOW_REASON)
    lines.append("studies: " + ", ".join(f"{k} {v}" for k, v in counts.items()
                                         if k != "instances")
                 + f"; instances {counts.get('instances', 0)}")  # fmt: skip
    oldest = report["oldest_waiting"]
    lines.append("oldest waiting: " + ("none" if oldest is None else
                 f"{oldest['study_instance_uid']} ({oldest['state']}, "
                 f"{oldest['waiting_seconds']:.0f} s)"))  # fmt: skip
    backlog = report["backlog"]
    lines.append("backlog: " + (", ".join(f"{k} {v}" for k, v in backlog.items()) or "none"))
    commitments = report.get("commitments", {})
    if any(commitments.values()):
        lines.append("storage commitment: " + ", ".join(f"{k} {v}" for k, v in
                                                        commitments.items()))  # fmt: skip
    purged = report["purged"]
    lines.append(f"purged after delivery: {purged['studies']} studies, "
                 f"{purged['bytes'] / 1e6:.1f} MB")  # fmt: skip
    if "drift" in report:
        lines += _drift_lines(report["drift"])
    for failure in report["recent_failures"]:
        lines.append(f"failed {failure['at']} {failure['study_instance_uid']}: "
                     f"{failure['reason']}")  # fmt: skip
    return "\n".join(lines)


def _drift_lines(drift: dict[str, Any]) -> list[str]:
    reference = drift["reference"]
    if reference is None:
        head = "drift: not judged (the model bundle has no drift_reference)"
    elif drift["degraded"]:
        head = f"drift: DEGRADED: {drift['reason']}"
    else:
        head = f"drift: within band (reference: {reference['source']}, n {reference['n_studies']})"
    lines = [head]
    for name, window in drift["windows"].items():
        shares = window["level_rates"]
        rates = ", ".join(f"{level} " + ("-" if shares[level] is None else f"{shares[level]:.1%}")
                          for level in LEVELS)  # fmt: skip
        psi = "-" if window["psi"] is None else f"{window['psi']:.3f}"
        if window["psi_limit"] is not None:
            psi += f" (limit {window['psi_limit']:.3f})"
        if not window["judged"] and reference is not None:
            psi += f"; not judged below {reference['min_studies']} studies"
        lines.append(f"  {name.replace('_', ' ')}: {window['studies']} analysed, "
                     f"{window['not_analysable']} not analysable; {rates}; PSI {psi}")  # fmt: skip
    return lines


def resend(config: Config, study_uid: str) -> str:
    """Analyse and send a study again; its result UIDs are deterministic, so PACS that already
    hold them are not given duplicates. Returns what was done."""
    queue = WorkQueue(database(config))
    try:
        study = queue.study(study_uid)
        if study is None:
            return f"no study {study_uid} in this node's index"
        if study.state in (StudyState.COMPLETE, StudyState.ANALYSING):
            return f"study {study_uid} is already queued ({study.state})"
        if not queue.instances(study_uid):
            return (f"study {study_uid} has no images left (purged after delivery, see "
                    "[retention]); have the sender send it again")  # fmt: skip
        queue.set_state(study_uid, StudyState.COMPLETE, reason="resend requested")
        return f"study {study_uid} queued again (was {study.state}); a running node picks it up"
    finally:
        queue.close()
