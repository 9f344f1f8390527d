"""Retention: a delivered study's files are removed a configurable age after delivery, never before.

Which studies: those in a final state with nothing left to deliver, PURGEABLE_STATES:
- 'done': the results reached every destination (or no destination was configured, so there
  was nothing to deliver);
- 'out_of_scope': the "not analysed" report reached every destination, or nothing was to be sent
  (`results.report_out_of_scope` off, or no destination).
Never 'receiving', 'complete', 'analysing' or 'sending' (work or a delivery is still due, or a
PACS has not yet confirmed storage: see dicomnode.commitment_queue), and
never 'failed': its results never reached the PACS, so it is kept for `dicomnode resend` or for an
admin to deal with, however old.

The age counts from the study's `state_changed_at`: when it entered its final state, i.e. when its
last delivery went out.

What is removed: ``spool/instances/<study>/`` (the instances received, our own results sent back
to us included) and ``results/instances/<study>/`` (the SR and Secondary Captures made). The index
then forgets the study's instances and records the purge (table ``purged``); the study row stays,
in its final state, for `dicomnode status`, until `[retention] forget_after_days` after the purge,
when the index forgets the study altogether (`Index.forget_purged`), so that it stays bounded
however long the node runs. One "study-purged" audit event per study: its UID, final state, file
counts and bytes; no patient data.

Order: files first, then the index, so a purge frees space even on a full disk (the index write
then has room), and a crash between the two leaves a study the next run purges again (its files
already gone). Each study is purged holding `Index.study_lock`, which the receiver holds around
writing and indexing an instance: an instance arriving meanwhile is either indexed first (the
study has reopened and is skipped) or written after the purge (and kept).

A study that receives an instance after its purge reopens as any delivered study does
('receiving', then analysed again) from the instances received since; its earlier results are
gone, so the new SR covers the new instances and revises nothing (no predecessor).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from dicomnode.audit import AuditLog
from dicomnode.index import Index, StudyRow
from dicomnode.states import StudyState
from pipeline.dicom.uids import is_valid_uid
from pipeline.files import fsync_directory

log = logging.getLogger(__name__)

PURGEABLE_STATES: tuple[str, ...] = (StudyState.DONE, StudyState.OUT_OF_SCOPE)


@dataclass(frozen=True)
class PurgedStudy:
    """What the purge of one study removed."""

    study_uid: str
    state: str
    instances: int
    """Files removed from the spool (received instances)."""
    results: int
    """Files removed from the results (SR, Secondary Captures)."""
    bytes_removed: int


@dataclass(frozen=True)
class PurgeReport:
    """One retention run: the studies purged and those that could not be."""

    purged: tuple[PurgedStudy, ...] = ()
    errors: tuple[str, ...] = ()
    """'<study UID>: <reason>' for each study whose purge failed (retried next run)."""

    @property
    def bytes_removed(self) -> int:
        """Bytes removed in this run."""
        return sum(p.bytes_removed for p in self.purged)


def study_folders(storage_root: Path, study_uid: str) -> tuple[Path, Path]:
    """Where a study's received instances and its results live under `storage_root`."""
    if not is_valid_uid(study_uid):  # it becomes a path component: only a valid UID may
        raise ValueError(f"study UID {study_uid!r} is not a valid DICOM UID")
    return (storage_root / "spool" / "instances" / study_uid,
            storage_root / "results" / "instances" / study_uid)  # fmt: skip


def purge_delivered(
    index: Index,
    storage_root: Path,
    *,
    older_than_s: float,
    now: float,
    audit: AuditLog | None = None,
) -> PurgeReport:
    """Remove the files of every study delivered more than `older_than_s` before `now`.

    `storage_root` holds ``spool/`` and ``results/`` (config.storage.path). A study whose removal
    fails is reported in `errors`, left in the index as it was and tried again next run.
    """
    if older_than_s <= 0:
        raise ValueError("older_than_s must be positive (0 keeps everything: do not purge)")
    purged: list[PurgedStudy] = []
    errors: list[str] = []
    for study in index.purge_candidates(PURGEABLE_STATES, now - older_than_s):
        try:
            result = _purge_study(index, storage_root, study, now)
        except (OSError, ValueError) as exc:
            log.error("study %s: purge failed: %s", study.study_uid, exc)
            errors.append(f"{study.study_uid}: {exc}")
            continue
        if result is None:
            continue
        purged.append(result)
        log.info("study %s purged (%s): %d instance(s), %d result(s), %d bytes",
                 result.study_uid, result.state, result.instances, result.results,
                 result.bytes_removed)  # fmt: skip
        if audit is not None:
            audit.record(
                "study-purged",
                study_uid=result.study_uid,
                state=result.state,
                instances=result.instances,
                results=result.results,
                bytes=result.bytes_removed,
            )
    return PurgeReport(tuple(purged), tuple(errors))


def scheduled_purge(index: Index, storage_root: Path, older_than_s: float,
                    audit: AuditLog, forget_after_s: float = 0.0) -> None:  # fmt: skip
    """The service's retention job: purge now, then forget the studies purged more than
    `forget_after_s` ago (0: never); log, never raise (the next run retries)."""
    now = time.time()
    try:
        report = purge_delivered(index, storage_root, older_than_s=older_than_s, now=now,
                                 audit=audit)  # fmt: skip
        forgotten = index.forget_purged(now - forget_after_s) if forget_after_s > 0 else 0
    except Exception as exc:  # e.g. the index unwritable: the timer must keep running
        log.error("retention run failed: %s: %s", type(exc).__name__, exc)
        return
    if report.purged or report.errors:
        log.info("retention: %d study(ies) purged, %d bytes freed, %d failed",
                 len(report.purged), report.bytes_removed, len(report.errors))  # fmt: skip
    if forgotten:
        log.info("retention: %d study(ies) purged long ago forgotten by the index", forgotten)


def _purge_study(index: Index, storage_root: Path, study: StudyRow,
                 now: float) -> PurgedStudy | None:  # fmt: skip
    """Remove one study's files and record it; None if the study moved on meanwhile."""
    spool_folder, results_folder = study_folders(storage_root, study.study_uid)
    with index.study_lock(study.study_uid):
        current = index.study(study.study_uid)
        if current is None or (current.state, current.state_changed_at) != (
            study.state,
            study.state_changed_at,
        ):
            return None  # reopened (or resent) since it was listed: not delivered any more
        instances, instance_bytes = _remove_folder(spool_folder)
        results, result_bytes = _remove_folder(results_folder)
        recorded = index.record_purge(current, at=now, instances=instances, results=results,
                                      bytes_removed=instance_bytes + result_bytes)  # fmt: skip
    if not recorded:
        return None
    return PurgedStudy(study.study_uid, study.state, instances, results,
                       instance_bytes + result_bytes)  # fmt: skip


def _remove_folder(folder: Path) -> tuple[int, int]:
    """Remove `folder` and its files; (DICOM files removed, bytes removed). A missing folder
    (never made, or removed by a run the index did not hear of) removes nothing."""
    files = size = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0, 0
    for entry in entries:
        if entry.is_file(follow_symlinks=False):
            size += entry.stat(follow_symlinks=False).st_size
            files += entry.name.endswith(".dcm")
    shutil.rmtree(folder)
    # Make the removal durable before the index records it: a crash must not bring files back
    # that the index no longer knows.
    with contextlib.suppress(OSError):
        fsync_directory(folder.parent)
    return files, size
