"""Benchmark: ingest throughput against dcmtk's storescp and Orthanc, and time to results.

1. The same files (small CR-like and full-size DX instances, uncompressed) are pushed by one
   `storescu` association to: this node (fsync on), dcmtk `storescp`, and Orthanc. dcmtk runs
   with TCP_NODELAY=1 (otherwise Nagle's delay of ~44 ms per object dominates).
2. Concurrency: the small instances pushed by 1 and by 8 concurrent `storescu` associations
   (the files dealt round-robin) to: the node with 1 receiver process and with N ([node]
   receivers, default the number of cores), dcmtk `storescp` (`--fork` for 8; it has no fsync),
   Orthanc (its default SyncStorageArea: fsync), and `storescp --fork --ignore` (receives, writes
   nothing): the sending client's own ceiling. Also the resident memory of each receiver process.
3. Time from the last instance's Success to every result (SR, Secondary Captures, presentation
   states) stored in Orthanc, as the node records it ('done'), for two-view full-size studies,
   with the default 2 s grace period (analysed during it); a first study warms the workers up.

    .venv/bin/python bench/ingest.py [--small 200] [--full 40] [--studies 5] [--receivers N]
                                     [--skip single,concurrency,results]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pydicom

from tests.integration.orthanc import OrthancServer
from train.phantoms.archive import generate_archive, read_truth

ENV = {**os.environ, "TCP_NODELAY": "1"}


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _files(folder: Path, studies: int, size: str, seed: int, limit: int) -> list[Path]:
    generate_archive(folder, studies=studies, seed=seed, size=size, workers=2,
                     syntaxes=("explicit_le",))  # fmt: skip
    rows = [r for r in read_truth(folder) if not r["corrupt"]]
    return [folder / r["path"] for r in rows][:limit]


def _push(aet: str, port: int, files: list[Path]) -> float:
    start = time.perf_counter()
    result = subprocess.run(["storescu", "-aec", aet, "127.0.0.1", str(port), *map(str, files)],
                            capture_output=True, text=True, env=ENV, timeout=600)  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"storescu to {aet}: {result.stderr[-500:]}")
    return time.perf_counter() - start


def _wait_port(port: int, aet: str) -> None:
    for _ in range(200):
        if subprocess.run(["echoscu", "-aec", aet, "127.0.0.1", str(port)],
                          capture_output=True, env=ENV).returncode == 0:  # fmt: skip
            return
        time.sleep(0.2)
    raise RuntimeError(f"{aet} did not start")


def _node(tmp: Path, destination: OrthancServer | None, receivers: int = 1,
          extra: str = "") -> tuple[subprocess.Popen[bytes], int]:  # fmt: skip
    port = _port()
    config = tmp / f"node-{port}.toml"
    lines = [f"[node]\nport = {port}\nreceivers = {receivers}\n[storage]\n"
             f"path = \"{tmp / f'node-{port}'}\"\n",
             "[logging]\nlevel = \"WARNING\"\n[http]\nport = 0\n", extra]  # fmt: skip
    if destination:
        lines.append(f'[[destinations]]\nae_title = "{destination.aet}"\nhost = "127.0.0.1"\n'
                     f"port = {destination.dicom_port}\n")  # fmt: skip
    config.write_text("".join(lines), encoding="utf-8")
    node = subprocess.Popen([sys.executable, "-m", "dicomnode.cli", "serve", "--config",
                             str(config)], cwd=ROOT, stderr=subprocess.DEVNULL)  # fmt: skip
    _wait_port(port, "WRISTAI")
    _wait_receivers(tmp / f"node-{port}", receivers)
    return node, port


def _wait_receivers(storage: Path, expected: int) -> list[int]:
    """The receiver pids, once all listen (the service records them in receivers.json)."""
    for _ in range(600):
        with contextlib.suppress(OSError, ValueError):
            status = json.loads((storage / "receivers.json").read_text())
            if status["alive"] == expected:
                return [int(p) for p in status["pids"]]
        time.sleep(0.1)
    raise RuntimeError(f"{expected} receivers did not start")


def _rss_mib(pid: int) -> tuple[float, float]:
    """Resident and peak resident memory of `pid`, MiB (from /proc)."""
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def _push_parallel(aet: str, port: int, files: list[Path], associations: int) -> float:
    """Seconds for `associations` concurrent storescu runs to send `files` between them."""
    chunks = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    senders = [subprocess.Popen(["storescu", "-aec", aet, "127.0.0.1", str(port),
                                 *map(str, chunk)], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE) for chunk in chunks]  # fmt: skip
    failed = [p.communicate(timeout=600)[1] for p in senders if p.wait(timeout=600) != 0]
    seconds = time.perf_counter() - start
    if failed:
        raise RuntimeError(f"storescu to {aet}: {failed[0][-500:]!r}")
    return seconds


@contextlib.contextmanager
def _storescp(tmp: Path, *flags: str) -> Iterator[int]:
    port = _port()
    out = tmp / f"storescp-{port}"
    out.mkdir()
    process = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(out), "-fe", ".dcm",
                                *flags, str(port)], env=ENV, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_port(port, "STORESCP")
        yield port
    finally:
        process.terminate()
        process.wait(30)


def concurrency(files: list[Path], tmp: Path, receivers: int) -> None:
    """Instances/s with 1 and 8 concurrent associations, per receiver, in one run."""
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    rates: dict[str, dict[int, float]] = {}
    memory: list[str] = []

    def measure(name: str, aet: str, port: int, *counts: int) -> None:
        for count in counts:
            rates.setdefault(name, {})[count] = len(files) / _push_parallel(aet, port, files, count)

    for n in (1, receivers):
        node, port = _node(tmp, None, receivers=n)
        try:
            pids = _wait_receivers(tmp / f"node-{port}", n)
            measure(f"node, {n} receiver(s), fsync", "WRISTAI", port, 1, 8)
            for pid in pids:
                now, peak = _rss_mib(pid)
                role = "service process" if pid == node.pid else "receiver process"
                memory.append(f"node, {n} receiver(s): {role} {pid}: RSS {now:.0f} MiB "
                              f"(peak {peak:.0f})")  # fmt: skip
        finally:
            node.terminate()
            node.wait(60)
    with _storescp(tmp) as port:
        measure("dcmtk storescp (no fsync)", "STORESCP", port, 1)
    with _storescp(tmp, "--fork") as port:
        measure("dcmtk storescp (no fsync)", "STORESCP", port, 8)
    with OrthancServer(tmp / "orthanc-concurrency") as orthanc:
        measure("Orthanc (SyncStorageArea)", orthanc.aet, orthanc.dicom_port, 1, 8)
    with _storescp(tmp, "--fork", "--ignore") as port:
        measure("client ceiling: storescp --ignore", "STORESCP", port, 1, 8)
    print(f"small instances ({len(files)}, {megabytes:.1f} MB), instances/s (wall time of the "
          f"concurrent storescu runs, their start-up included); {os.cpu_count()} cores, load "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}:")  # fmt: skip
    print(f"  {'receiver':<40}{'1 assoc':>10}{'8 assoc':>10}")
    for name, by_count in rates.items():
        print(f"  {name:<40}" + "".join(f"{by_count.get(c, float('nan')):10.1f}" for c in (1, 8)))
    node8 = rates[f"node, {receivers} receiver(s), fsync"][8]
    node1 = rates["node, 1 receiver(s), fsync"][1]
    orthanc8 = rates["Orthanc (SyncStorageArea)"][8]
    print(f"  node-8 ({receivers} receivers) vs Orthanc-8: {node8 / orthanc8:.2f}x "
          "(target >= 1.5x)")  # fmt: skip
    print(f"  node-1 vs storescp-1: {node1 / rates['dcmtk storescp (no fsync)'][1]:.2f}x "
          "(target >= 0.5x)")  # fmt: skip
    ceiling = rates["client ceiling: storescp --ignore"]
    print(f"  node-8 vs client ceiling-8: {node8 / ceiling[8]:.2f}x; node-1 vs ceiling-1: "
          f"{node1 / ceiling[1]:.2f}x")  # fmt: skip
    for line in memory:
        print(f"  {line}")


def ingest(files: list[Path], tmp: Path) -> None:
    megabytes = sum(f.stat().st_size for f in files) / 1e6
    results: dict[str, float] = {}
    node, port = _node(tmp, None)
    try:
        results["this node (fsync)"] = _push("WRISTAI", port, files)
    finally:
        node.terminate()
        node.wait(60)
    port = _port()
    out = tmp / "storescp"
    out.mkdir()
    storescp = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(out), "-fe", ".dcm",
                                 str(port)], env=ENV, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_port(port, "STORESCP")
        results["dcmtk storescp"] = _push("STORESCP", port, files)
    finally:
        storescp.terminate()
        storescp.wait(30)
    with OrthancServer(tmp / "orthanc-ingest") as orthanc:
        results["Orthanc"] = _push(orthanc.aet, orthanc.dicom_port, files)
    print(f"ingest of {len(files)} instances ({megabytes:.0f} MB) over one association:")
    for name, seconds in results.items():
        print(
            f"  {name:<20}{len(files) / seconds:8.1f} instances/s {megabytes / seconds:8.1f} MB/s"
        )
    ratio = results["Orthanc"] / results["this node (fsync)"]
    print(f"  this node vs Orthanc: {ratio:.2f}x (target >= 1.2x)")


def _delivered(index: Path, study_uid: str) -> bool:
    """Whether the node recorded the study's results as delivered ('done': the PACS answered
    Success for every result object), read from its index."""
    with contextlib.suppress(sqlite3.Error):
        db = sqlite3.connect(f"file:{index}?mode=ro", uri=True, timeout=1.0)
        try:
            row = db.execute("SELECT state FROM studies WHERE study_uid = ?", (study_uid,))
            return (row.fetchone() or ("",))[0] == "done"
        finally:
            db.close()
    return False


def time_to_results(tmp: Path, studies: int) -> None:
    """The same studies through a node that analyses during the grace period (the default) and
    through one that waits for it to end first, in one run."""
    folder = tmp / "two-view"
    generate_archive(folder, studies=studies * 6, seed=404, size="full", workers=2,
                     syntaxes=("explicit_le",))  # fmt: skip
    by_study: dict[str, list[Path]] = {}
    for row in read_truth(folder):
        if not row["corrupt"] and row["body_part"] == "wrist":
            by_study.setdefault(row["study_instance_uid"], []).append(folder / row["path"])
    # The first study only warms the workers up (spawn, torch, the model): not counted.
    chosen = [files for files in by_study.values() if len(files) == 2][: studies + 1]
    for during in (True, False):
        delays = _delays(tmp / f"results-{during}", chosen, analyse_during_grace=during)[1:]
        how = "analysed during the grace" if during else "analysed after the grace"
        print(
            f"last instance's Success -> every result stored in Orthanc, two-view full-size "
            f"studies, grace 2 s, {how}: median {statistics.median(delays):.2f} s (min "
            f"{min(delays):.2f}, max {max(delays):.2f}, n={len(delays)}; target median < 3 s)"
        )


def _delays(tmp: Path, studies: list[list[Path]], *, analyse_during_grace: bool) -> list[float]:
    tmp.mkdir(parents=True)
    delays = []
    extra = f"[completeness]\nanalyse_during_grace = {str(analyse_during_grace).lower()}\n"
    with OrthancServer(tmp / "orthanc-results") as orthanc:
        node, port = _node(tmp, orthanc, extra=extra)
        index = tmp / f"node-{port}" / "index.sqlite"
        try:
            for files in studies:
                study_uid = str(pydicom.dcmread(files[0], stop_before_pixels=True)
                                .StudyInstanceUID)  # fmt: skip
                _push("WRISTAI", port, files)
                sent = time.perf_counter()
                while not _delivered(index, study_uid):
                    if time.perf_counter() - sent > 120:
                        raise RuntimeError(f"results of {study_uid} not delivered in 120 s")
                    time.sleep(0.05)
                delays.append(time.perf_counter() - sent)
        finally:
            node.terminate()
            node.wait(60)
    return delays


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--full", type=int, default=40)
    parser.add_argument("--studies", type=int, default=5)
    parser.add_argument("--receivers", type=int, default=os.cpu_count() or 1,
                        help="[node] receivers of the node measured (default: cores)")  # fmt: skip
    parser.add_argument("--skip", default="", help="comma-separated parts to leave out: "
                        "single, concurrency, results")  # fmt: skip
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        small = _files(tmp / "small", args.small, "small", 501, args.small)
        if "single" not in skip:
            files = small + _files(tmp / "full", max(4, args.full // 2), "full", 502, args.full)
            ingest(files, tmp)
        if "concurrency" not in skip:
            concurrency(small, tmp, args.receivers)
        if "results" not in skip:
            time_to_results(tmp, args.studies)


if __name__ == "__main__":
    main()
