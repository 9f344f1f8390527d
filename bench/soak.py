"""Soak: a sustained mixed load on the node, with a real Orthanc as the destination.

1. Ingest comparison, same run: bench/ingest.py's single-association comparison of this node
   (fsync on), dcmtk `storescp` and Orthanc, then the same files over eight concurrent
   associations to each of the three.
2. Soak for --minutes (default 20): --senders concurrent `storescu` senders, each sending one
   study per association at Poisson-spaced times (--studies-per-minute in all), mixing small
   wrist studies, full-size wrist studies and small studies of other body parts; every study is
   a copy of a synthetic template with fresh UIDs. The RSS of the node and its workers is
   sampled every --sample-seconds. Then the node drains (every study reaches a final state).
3. Summary: instances sent / answered Success / stored / lost, failure statuses, time from the
   last instance received to the results delivered (p50/p95), peak RSS, and
   PASS/FAIL for "no loss, no failure status" (exit status 1 on FAIL).
4. Uptime (bench/uptime.py): each process's RSS slope after --warmup-minutes, its open file
   descriptors, and the index's growth per study. Nothing is purged in a soak (the study must
   stay to be checked): that retention bounds the index is shown by
   tests/reliability/test_retention.py, over 120 simulated days. The issue's run: --minutes 120.

    .venv/bin/python bench/soak.py [--minutes 20] [--senders 4] [--studies-per-minute 15]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest import ENV, _files, _node, _port, _wait_port, ingest
from bench.loadgen import (
    FINAL_STATES,
    CopiedStudy,
    MemorySampler,
    SendResult,
    StudyOutcome,
    Templates,
    copy_study,
    deliveries,
    indexed_instances,
    load_templates,
    memory_kib,
    mib,
    percentile,
    send,
    send_parallel,
    study_outcomes,
    wait_final,
)
from bench.uptime import ResourceSampler, uptime_checks, uptime_figures
from tests.integration.node_process import NodeProcess
from tests.integration.orthanc import OrthancServer
from train.phantoms.archive import generate_archive

# Study kinds: (weight, instances from .. to, template pool).
KINDS = {
    "small-wrist": (0.5, (1, 4), "small_wrist"),
    "full-wrist": (0.3, (1, 3), "full"),
    "small-other": (0.2, (1, 3), "small_other"),
}
PRODUCTION_COMPLETENESS = {"grace_seconds": 2.0, "quiet_seconds": 30.0}


# -- ingest comparison -------------------------------------------------------------------


def compare_ingest(tmp: Path, small: int, full: int, associations: int) -> list[str]:
    """bench/ingest.py's one-association comparison, then the same files over `associations`
    concurrent associations to each receiver; the lines printed."""
    files = _files(tmp / "small", small, "small", 501, small)
    files += _files(tmp / "full", max(4, full // 2), "full", 502, full)
    captured = io.StringIO()
    (tmp / "single").mkdir(parents=True)
    with contextlib.redirect_stdout(captured):
        ingest(files, tmp / "single")
    lines = captured.getvalue().splitlines()
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    batches = [files[i::associations] for i in range(associations)]
    lines.append(f"ingest of the same {len(files)} instances over {associations} concurrent "
                 "associations:")  # fmt: skip
    for name, seconds in _concurrent(batches, tmp / "concurrent").items():
        lines.append(f"  {name:<20}{len(files) / seconds:8.1f} instances/s "
                     f"{megabytes / seconds:8.1f} MB/s")  # fmt: skip
    for line in lines:
        print(line, flush=True)
    return lines


def _concurrent(batches: list[list[Path]], tmp: Path) -> dict[str, float]:
    """Wall seconds for all batches at once, to the node, storescp and Orthanc."""
    tmp.mkdir(parents=True)
    seconds: dict[str, float] = {}
    node, port = _node(tmp, None)
    try:
        seconds["this node (fsync)"] = _wall(send_parallel("WRISTAI", port, batches))
    finally:
        node.terminate()
        node.wait(60)
    port = _port()
    (tmp / "storescp").mkdir()
    # Without --fork storescp serves one association at a time; with it, one process each.
    storescp = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(tmp / "storescp"),
                                 "-fe", ".dcm", "--fork", str(port)], env=ENV,
                                stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_port(port, "STORESCP")
        seconds["dcmtk storescp"] = _wall(send_parallel("STORESCP", port, batches))
    finally:
        storescp.terminate()
        storescp.wait(30)
    with OrthancServer(tmp / "orthanc") as orthanc:
        seconds["Orthanc"] = _wall(send_parallel(orthanc.aet, orthanc.dicom_port, batches))
    return seconds


def _wall(sent: tuple[list[SendResult], float]) -> float:
    """The wall time of a parallel send, which must have succeeded throughout."""
    results, seconds = sent
    bad = [r for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"concurrent ingest failed: {bad[0].statuses} {bad[0].output_tail}")
    return seconds


# -- the soak ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SentStudy:
    """One study sent in one association."""

    kind: str
    study: CopiedStudy
    bytes: int
    result: SendResult
    started: float


class Senders:
    """`count` sender threads, Poisson arrivals at `per_minute` studies a minute in all."""

    def __init__(self, port: int, pools: dict[str, tuple[Path, ...]], copies: Path, *,
                 count: int, per_minute: float, until: float, seed: int) -> None:  # fmt: skip
        self.port, self.pools, self.copies = port, pools, copies
        self.until = until
        self.rate_per_sender = per_minute / 60.0 / count  # studies per second
        self.sent: list[SentStudy] = []
        self.errors: list[str] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(i, random.Random(seed + i)),
                                          name=f"sender-{i}", daemon=True)
                         for i in range(count)]  # fmt: skip

    def start(self) -> None:
        """Start every sender."""
        for thread in self._threads:
            thread.start()

    def alive(self) -> bool:
        """Whether any sender is still sending."""
        return any(t.is_alive() for t in self._threads)

    def join(self, timeout: float) -> None:
        """Wait for every sender to finish its last association."""
        for thread in self._threads:
            thread.join(timeout)

    def snapshot(self) -> list[SentStudy]:
        """The studies sent so far."""
        with self._lock:
            return list(self.sent)

    def _run(self, number: int, rng: random.Random) -> None:
        try:
            self._send_until_done(number, rng)
        except Exception as exc:  # reported in the summary (a sender that stops is a FAIL)
            with self._lock:
                self.errors.append(f"sender {number}: {type(exc).__name__}: {exc}")

    def _send_until_done(self, number: int, rng: random.Random) -> None:
        next_at = time.monotonic() + rng.expovariate(self.rate_per_sender)
        serial = 0
        while next_at < self.until:
            time.sleep(max(0.0, next_at - time.monotonic()))
            kind = rng.choices(list(KINDS), weights=[k[0] for k in KINDS.values()])[0]
            _, (low, high), pool = KINDS[kind]
            sources = rng.sample(self.pools[pool], min(rng.randint(low, high),
                                                      len(self.pools[pool])))  # fmt: skip
            folder = self.copies / f"sender-{number}"
            study = copy_study(sources, folder, wrist=kind != "small-other",
                               label=f"SOAK{number:02d}{serial:05d}")  # fmt: skip
            size = sum(f.stat().st_size for f in study.files)
            started = time.time()
            result = send("WRISTAI", self.port, study.files, calling=f"SOAK{number:02d}")
            with self._lock:
                self.sent.append(SentStudy(kind, study, size, result, started))
            shutil.rmtree(folder / study.study_uid, ignore_errors=True)
            serial += 1
            # Behind schedule (a slow association): start the next one now, not in a burst.
            next_at = max(next_at + rng.expovariate(self.rate_per_sender), time.monotonic())


def templates(tmp: Path) -> dict[str, tuple[Path, ...]]:
    """Template pools: small wrist, small other body parts, full-size (mostly wrist)."""
    small_dir, full_dir = tmp / "templates-small", tmp / "templates-full"
    generate_archive(small_dir, studies=40, seed=5, size="small", workers=2,
                     syntaxes=("explicit_le",))  # fmt: skip
    generate_archive(full_dir, studies=8, seed=502, size="full", workers=2,
                     syntaxes=("explicit_le",))  # fmt: skip
    small: Templates = load_templates(small_dir)
    full = load_templates(full_dir)
    pools = {"small_wrist": small.wrist, "small_other": small.other,
             "full": full.wrist + full.other}  # fmt: skip
    empty = [name for name, paths in pools.items() if not paths]
    if empty:
        raise RuntimeError(f"no template for {empty}")
    return pools


def soak(tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run the soak and return its figures."""
    pools = templates(tmp)
    (tmp / "soak").mkdir()
    with OrthancServer(tmp / "orthanc-soak") as orthanc:
        destination = {"ae_title": orthanc.aet, "host": "127.0.0.1", "port": orthanc.dicom_port}
        node = NodeProcess(tmp / "soak", destinations=[destination],
                           completeness=PRODUCTION_COMPLETENESS).start()  # fmt: skip
        assert node.process is not None
        try:
            sampler = MemorySampler(node.process.pid, interval=args.sample_seconds)
            resources = ResourceSampler(node.process.pid, node.index_path, args.sample_seconds)
            with sampler, resources:
                started = time.monotonic()
                senders = Senders(node.port, pools, tmp / "copies", count=args.senders,
                                  per_minute=args.studies_per_minute,
                                  until=started + args.minutes * 60, seed=args.seed)  # fmt: skip
                senders.start()
                _monitor(senders, node, started)
                senders.join(600)
                sent = senders.snapshot()
                soak_seconds = time.monotonic() - started
                print(f"senders done after {soak_seconds:.0f} s; draining...", flush=True)
                outcomes = wait_final(node.index_path, {s.study.study_uid for s in sent},
                                      args.drain_timeout)  # fmt: skip
                drained = time.monotonic() - started - soak_seconds
                alive = node.process.poll() is None
            figures = _figures(sent, outcomes, node, orthanc, soak_seconds, sampler)
            figures |= uptime_figures(resources.samples, args.warmup_minutes * 60)
            figures |= {"drain_s": drained, "node_alive_at_end": alive,
                        "sender_errors": senders.errors}  # fmt: skip
        finally:
            code = node.stop()
    return figures | {"node_exit_status": code}


def _monitor(senders: Senders, node: NodeProcess, started: float) -> None:
    """One progress line a minute while the senders run."""
    assert node.process is not None
    next_line = started + 60
    while senders.alive():
        time.sleep(1.0)
        if time.monotonic() < next_line:
            continue
        next_line += 60
        sent = senders.snapshot()
        states = Counter(o.state for o in study_outcomes(node.index_path).values())
        backlog = sum(n for s, n in states.items() if s not in FINAL_STATES)
        own = memory_kib(node.process.pid).get("VmRSS", 0)
        print(f"  {(time.monotonic() - started) / 60:5.1f} min: {len(sent)} studies, "
              f"{sum(len(s.study.files) for s in sent)} instances sent, "
              f"{sum(s.result.failures for s in sent)} not Success; backlog {backlog} "
              f"studies; receiver RSS {mib(own):.0f} MiB", flush=True)  # fmt: skip


def _figures(sent: list[SentStudy], outcomes: dict[str, StudyOutcome], node: NodeProcess,
             orthanc: OrthancServer, seconds: float,
             sampler: MemorySampler) -> dict[str, Any]:  # fmt: skip
    """Every figure of the summary, from the senders' records, the index and Orthanc."""
    memory = sampler.report
    succeeded = {sop for s in sent for f, sop in zip(s.study.files, s.study.sop_uids, strict=True)
                 if s.result.answered.get(f) == "Success"}  # fmt: skip
    indexed = indexed_instances(node.index_path)
    stored = {sop for sop, (_, path) in indexed.items() if path.is_file()}
    statuses: Counter[str] = Counter()
    for s in sent:
        statuses.update(s.result.statuses)
        statuses["(no response)"] += len(s.study.files) - len(s.result.answered)
    kinds = {s.study.study_uid: s.kind for s in sent}
    done = [o for o in outcomes.values() if o.state == "done"]
    rows = deliveries(node.index_path)
    stats = orthanc.get("/statistics")
    samples = memory.series
    quarter = max(1, len(samples) // 4)
    log = node.log()
    delivered = sum(r.files for r in rows if r.status == "sent")

    def report_times(kind: str) -> dict[str, float]:
        return _spread([o.seconds_to_final for o in done if kinds[o.study_uid] == kind])

    out_of_scope = [o.seconds_to_final for o in outcomes.values() if o.state == "out_of_scope"]
    return {
        "soak_s": seconds,
        "studies_sent": len(sent),
        "studies_by_kind": dict(Counter(s.kind for s in sent)),
        "instances_sent": sum(len(s.study.files) for s in sent),
        "megabytes_sent": sum(s.bytes for s in sent) / 1e6,
        "instances_success": len(succeeded),
        "instances_stored": len(stored & succeeded),
        "instances_lost": len(succeeded - stored),
        "failure_statuses": {k: v for k, v in statuses.items() if k != "Success" and v},
        "storescu_nonzero_exits": sum(1 for s in sent if s.result.returncode != 0),
        "study_states": dict(Counter(o.state for o in outcomes.values())),
        "studies_not_final": len(sent) - sum(o.state in FINAL_STATES for o in outcomes.values()),
        "deliveries": dict(Counter(r.status for r in rows)),
        "orthanc_studies": (stats["CountStudies"], len(done)),
        "orthanc_instances": (stats["CountInstances"], delivered),
        "report_s": _spread([o.seconds_to_final for o in done]),
        "report_small_wrist_s": report_times("small-wrist"),
        "report_full_wrist_s": report_times("full-wrist"),
        "out_of_scope_s": _spread(out_of_scope),
        "receiver_rss_start_mib": mib(memory.receiver_start_kib),
        "receiver_peak_rss_mib": mib(memory.receiver_peak_kib),
        "receiver_rss_first_quarter_max_mib": mib(max(s[1] for s in samples[:quarter])),
        "receiver_rss_last_quarter_max_mib": mib(max(s[1] for s in samples[-quarter:])),
        "receiver_rss_per_minute_max_mib": _per_minute(samples, 1),
        "tree_rss_per_minute_max_mib": _per_minute(samples, 2),
        "worker_peak_rss_mib": mib(memory.peak_of("worker")),
        "tree_sampled_peak_rss_mib": mib(memory.tree_peak_kib),
        "log_errors": sum(1 for line in log.splitlines() if " ERROR " in line),
        "log_store_failures": log.count("C-STORE failed") + log.count("C-STORE refused"),
    }


def _per_minute(samples: list[tuple[float, int, int]], column: int) -> list[int]:
    """The largest sampled RSS in MiB of each minute (1: receiver, 2: whole tree): a leak
    shows as a rising sequence, a bounded node as a plateau."""
    peaks: dict[int, float] = {}
    for sample in samples:
        minute = int(sample[0] // 60)
        peaks[minute] = max(peaks.get(minute, 0), sample[column])
    return [round(mib(peaks[m])) for m in sorted(peaks)]


def _spread(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": percentile(values, 50), "p95": percentile(values, 95),
            "max": max(values, default=float("nan"))}  # fmt: skip


# -- summary -----------------------------------------------------------------------------


def verdict(figures: dict[str, Any]) -> list[tuple[str, bool]]:
    """Each pass/fail check of the run."""
    return [
        ("no loss (every instance answered Success is indexed and in the spool)",
         figures["instances_lost"] == 0),
        ("no failure status (every C-STORE answered Success, storescu exit 0)",
         not figures["failure_statuses"] and figures["storescu_nonzero_exits"] == 0),
        ("every study reached a final state, none failed",
         figures["studies_not_final"] == 0 and "failed" not in figures["study_states"]),
        ("every result delivered to Orthanc",
         figures["orthanc_studies"][0] == figures["orthanc_studies"][1]
         and figures["orthanc_instances"][0] == figures["orthanc_instances"][1]
         and set(figures["deliveries"]) <= {"sent"}),
        ("the node stayed up and stopped cleanly",
         figures["node_alive_at_end"] and figures["node_exit_status"] == 0),
        ("every sender ran to the end", not figures["sender_errors"]),
    ]  # fmt: skip


def print_summary(figures: dict[str, Any], comparison: list[str],
                  args: argparse.Namespace) -> bool:  # fmt: skip
    """The summary table; True when every check passed."""
    print("\n" + "=" * 78)
    print(f"soak: {args.minutes:g} min, {args.senders} senders, "
          f"{args.studies_per_minute:g} studies/min offered")  # fmt: skip
    print("-" * 78)
    for line in comparison:
        print(line)
    print("-" * 78)
    width = 40
    for name, value in figures.items():
        print(f"  {name:<{width}}{_format(value)}")
    print("-" * 78)
    checks = verdict(figures) + uptime_checks(figures)
    for name, ok in checks:
        print(f"  {'PASS' if ok else 'FAIL'}  {name}")
    passed = all(ok for _, ok in checks)
    core = all(ok for _, ok in checks[:2])
    print(f"RESULT: {'PASS' if core else 'FAIL'} (no loss, no failure status); "
          f"all checks: {'PASS' if passed else 'FAIL'}")  # fmt: skip
    return passed


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_format(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return " ".join(_format(v) for v in value) or "-"
    if isinstance(value, tuple):
        return " / ".join(_format(v) for v in value) + " (found / expected)"
    return str(value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=20.0, help="soak duration")
    parser.add_argument("--senders", type=int, default=4, help="concurrent senders")
    parser.add_argument(
        "--studies-per-minute",
        type=float,
        default=15.0,
        help="offered load, all senders together (Poisson arrivals)",
    )
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="RSS sampling")
    parser.add_argument(
        "--drain-timeout",
        type=float,
        default=900.0,
        help="seconds to wait after the soak for every study to finish",
    )
    parser.add_argument(
        "--compare-small", type=int, default=200, help="small instances in the ingest comparison"
    )
    parser.add_argument(
        "--compare-full", type=int, default=40, help="full-size instances in the ingest comparison"
    )
    parser.add_argument("--no-compare", action="store_true", help="skip the ingest comparison")
    parser.add_argument("--warmup-minutes", type=float, default=10.0,
                        help="memory and descriptor slopes are measured after this")  # fmt: skip
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, index)")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        comparison = [] if args.no_compare else compare_ingest(
            tmp / "compare", args.compare_small, args.compare_full, 8)  # fmt: skip
        figures = soak(tmp, args)
        passed = print_summary(figures, comparison, args)
        if args.json:
            args.json.write_text(json.dumps({"figures": figures, "comparison": comparison},
                                            indent=2, default=str))  # fmt: skip
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
