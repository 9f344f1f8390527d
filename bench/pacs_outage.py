"""Benchmark: the destination PACS down for a while (default 10 minutes), then back.

The node (the real service, `dicomnode serve`) receives --studies wrist studies while its only
destination, a private Orthanc, is down: nothing listens on the Orthanc's port until the outage
ends, then Orthanc starts on it. The node runs with the shipped retry policy unless flags say
otherwise (first retry after 30 s, doubling up to 3600 s). Printed:

- every delivery attempt as it happens (the audit trail), and per study the attempts timeline
  and the pauses between attempts (the backoff);
- the time from the PACS's return to each study's delivery;
- PASS or FAIL for "everything delivered, once, and nothing reported sent that was not": no
  "result-sent" event and no study 'done' before the PACS was back; afterwards every study
  'done' with exactly one "result-sent", and every result file in Orthanc.

    .venv/bin/python bench/pacs_outage.py [--outage-seconds 600] [--studies 4]
        [--initial-delay 30] [--max-delay 3600]
"""

from __future__ import annotations

import argparse
import calendar
import itertools
import json
import sqlite3
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dicomnode.audit import read_events
from dicomnode.config import SendingSection
from tests.integration.node_process import NodeProcess
from tests.integration.orthanc import OrthancServer
from train.phantoms.archive import generate_archive, read_truth

POLL_S = 1.0


def _wrist_studies(root: Path, count: int, seed: int) -> list[list[Path]]:
    """`count` synthetic wrist studies (every instance readable), uncompressed."""
    generate_archive(root, studies=count * 3, seed=seed, size="small", workers=1,
                     syntaxes=("explicit_le",))  # fmt: skip
    by_study: dict[str, list[dict[str, str]]] = defaultdict(list)
    for row in read_truth(root):
        by_study[row["study_instance_uid"]].append(row)
    chosen = [[root / r["path"] for r in rows] for rows in by_study.values()
              if all(not r["corrupt"] and r["body_part"] == "wrist" for r in rows)]  # fmt: skip
    if len(chosen) < count:
        raise SystemExit(f"only {len(chosen)} wrist studies generated, {count} asked for")
    return chosen[:count]


def _epoch(event: dict[str, Any]) -> float:
    """An audit event's time (UTC, ISO 8601 with milliseconds) in epoch seconds."""
    stamp = time.strptime(event["time"][:19], "%Y-%m-%dT%H:%M:%S")
    return calendar.timegm(stamp) + float("0" + event["time"][19:-1])


def _states(node: NodeProcess) -> dict[str, str]:
    db = sqlite3.connect(node.index_path, timeout=30)
    try:
        return {r[0]: r[1] for r in db.execute("SELECT study_uid, state FROM studies")}
    finally:
        db.close()


def _next_attempts(node: NodeProcess) -> dict[str, float]:
    db = sqlite3.connect(node.index_path, timeout=30)
    try:
        rows = db.execute("SELECT study_uid, next_attempt_at FROM deliveries "
                          "WHERE status = 'pending'").fetchall()  # fmt: skip
    finally:
        db.close()
    return {r[0]: float(r[1]) for r in rows}


def _deliveries(node: NodeProcess) -> list[dict[str, Any]]:
    return [e for e in read_events(node.audit_path)
            if e["event"] in ("result-sent", "result-failed")]  # fmt: skip


def _results(node: NodeProcess, study_uid: str) -> set[str]:
    """SOP Instance UIDs of the result files the node made for a study."""
    folder = node.storage / "results" / "instances" / study_uid
    return {p.stem for p in folder.glob("*.dcm")}


def _in_orthanc(pacs: OrthancServer, sop_uid: str) -> int:
    """How many Orthanc instances carry `sop_uid` (0 or 1: Orthanc keys instances by it)."""
    request = urllib.request.Request(f"{pacs.url}/tools/lookup", data=sop_uid.encode(),
                                     method="POST")  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as answer:
        matches = json.loads(answer.read())
    return sum(1 for m in matches if m["Type"] == "Instance")


class Watch:
    """Follows the audit trail and the study states, printing each attempt once."""

    def __init__(self, node: NodeProcess, names: dict[str, str], start: float) -> None:
        self.node, self.names, self.start = node, names, start
        self.seen = 0
        self.done_too_early: list[str] = []

    def poll(self, pacs_back_at: float | None) -> None:
        events = _deliveries(self.node)
        upcoming = _next_attempts(self.node)
        for event in events[self.seen :]:
            uid = event["study_uid"]
            wait = upcoming.get(uid)
            then = f", next try in {wait - time.time():.0f} s" if wait else ""
            print(f"  +{_epoch(event) - self.start:7.1f} s  {self.names[uid]}  {event['event']}"
                  f" ({event['outcome']}){then}", flush=True)  # fmt: skip
        self.seen = len(events)
        if pacs_back_at is None:
            self.done_too_early += [u for u, s in _states(self.node).items()
                                    if s == "done" and u not in self.done_too_early]  # fmt: skip


def run(args: argparse.Namespace, tmp: Path) -> bool:
    """The outage scenario; True when it passed."""
    studies = _wrist_studies(tmp / "archive", args.studies, args.seed)
    pacs = OrthancServer(tmp / "orthanc")  # its ports are chosen now; it starts after the outage
    node = NodeProcess(
        tmp,
        sending={"initial_delay_seconds": args.initial_delay,
                 "max_delay_seconds": args.max_delay},
        destinations=[{"ae_title": pacs.aet, "host": "127.0.0.1", "port": pacs.dicom_port}],
    )  # fmt: skip
    print(f"retry policy: first retry after {args.initial_delay:g} s, doubling up to "
          f"{args.max_delay:g} s (+-10 % jitter); outage {args.outage_seconds:g} s; "
          f"{len(studies)} studies")  # fmt: skip
    node.start()
    try:
        start = time.time()
        names: dict[str, str] = {}
        for number, files in enumerate(studies, start=1):
            result = node.storescu(files)
            if result.returncode != 0:
                raise RuntimeError(f"storescu failed: {result.stderr[-500:]}")
            names[str(_study_uid(files[0]))] = f"study {number}"
        print(f"PACS down from +0 s (the node's start); {len(studies)} studies received")
        watch = Watch(node, names, start)
        while time.time() - start < args.outage_seconds:
            watch.poll(None)
            time.sleep(POLL_S)
        watch.poll(None)
        pacs.start()
        back = time.time()
        print(f"PACS back at +{back - start:.1f} s")
        deadline = back + args.max_delay * 1.1 + 120  # the longest pause, then a send
        while time.time() < deadline:
            watch.poll(back)
            if all(s in ("done", "failed") for s in _states(node).values()):
                break
            time.sleep(POLL_S)
        watch.poll(back)
        return _report(node, pacs, names, start, back, watch.done_too_early)
    finally:
        node.stop()
        pacs.stop()


def _study_uid(path: Path) -> str:
    import pydicom

    return str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)


def _report(node: NodeProcess, pacs: OrthancServer, names: dict[str, str], start: float,
            back: float, done_too_early: list[str]) -> bool:  # fmt: skip
    events = _deliveries(node)
    states = _states(node)
    problems: list[str] = [f"{names[u]} was 'done' while the PACS was down"
                           for u in done_too_early]  # fmt: skip
    delays: list[float] = []
    print("\nper study: attempt times (s from the first failure) | pauses between attempts (s)")
    for uid, name in names.items():
        mine = [e for e in events if e["study_uid"] == uid]
        times = [_epoch(e) for e in mine]
        first = times[0] if times else start
        pauses = [round(b - a, 1) for a, b in itertools.pairwise(times)]
        print(f"  {name}: {[round(t - first, 1) for t in times]} | {pauses}")
        sent = [e for e in mine if e["event"] == "result-sent"]
        early = [e for e in sent if _epoch(e) < back]
        if early:
            problems.append(f"{name}: reported sent at +{_epoch(early[0]) - start:.1f} s, "
                            "while the PACS was down")  # fmt: skip
        if len(sent) != 1:
            problems.append(f"{name}: {len(sent)} result-sent events, not 1")
        if states.get(uid) != "done":
            problems.append(f"{name}: state {states.get(uid)!r}, not 'done'")
        results = _results(node, uid)
        missing = [r for r in results if _in_orthanc(pacs, r) != 1]
        if not results or missing:
            problems.append(f"{name}: {len(missing)} of {len(results)} result files not in Orthanc")
        if sent and sent[0]["instances"] != len(results):
            problems.append(f"{name}: reported {sent[0]['instances']} sent, "
                            f"{len(results)} result files")  # fmt: skip
        if sent:
            delays.append(_epoch(sent[0]) - back)
    if delays:
        print(f"\ntime to delivery after the PACS came back: min {min(delays):.1f} s, "
              f"max {max(delays):.1f} s")  # fmt: skip
    failed = sum(1 for e in events if e["event"] == "result-failed")
    print(f"failed attempts during the outage: {failed} ({failed / max(1, len(names)):.1f} per "
          f"study); Orthanc holds {len(pacs.instances())} instances")  # fmt: skip
    for problem in problems:
        print(f"  problem: {problem}")
    verdict = "PASS" if not problems else "FAIL"
    print(f"{verdict}: all delivered once after the outage, none reported sent before it ended")
    return not problems


def main() -> int:
    shipped = SendingSection()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--outage-seconds", type=float, default=600.0)
    parser.add_argument("--studies", type=int, default=4)
    parser.add_argument("--seed", type=int, default=77)
    parser.add_argument("--initial-delay", type=float, default=shipped.initial_delay_seconds)
    parser.add_argument("--max-delay", type=float, default=shipped.max_delay_seconds)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pacs-outage-") as folder:
        return 0 if run(args, Path(folder)) else 1


if __name__ == "__main__":
    sys.exit(main())
