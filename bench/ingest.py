"""Benchmark: ingest throughput against dcmtk's storescp and Orthanc, and time to results.

1. The same files (small CR-like and full-size DX instances, uncompressed) are pushed by one
   `storescu` association to: this node (fsync on), dcmtk `storescp`, and Orthanc. dcmtk runs
   with TCP_NODELAY=1 (otherwise Nagle's delay of ~44 ms per object dominates).
2. Time from the last instance's Success to the SR and the Secondary Captures stored in Orthanc,
   for two-view full-size studies, with the default 2 s grace period.

    .venv/bin/python bench/ingest.py [--small 200] [--full 40] [--studies 5]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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


def _node(tmp: Path, destination: OrthancServer | None) -> tuple[subprocess.Popen[bytes], int]:
    port = _port()
    config = tmp / f"node-{port}.toml"
    lines = [f"[node]\nport = {port}\n[storage]\npath = \"{tmp / f'node-{port}'}\"\n",
             "[logging]\nlevel = \"WARNING\"\n[http]\nport = 0\n"]  # fmt: skip
    if destination:
        lines.append(f'[[destinations]]\nae_title = "{destination.aet}"\nhost = "127.0.0.1"\n'
                     f"port = {destination.dicom_port}\n")  # fmt: skip
    config.write_text("".join(lines), encoding="utf-8")
    node = subprocess.Popen([sys.executable, "-m", "dicomnode.cli", "serve", "--config",
                             str(config)], cwd=ROOT, stderr=subprocess.DEVNULL)  # fmt: skip
    _wait_port(port, "WRISTAI")
    return node, port


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


def time_to_results(tmp: Path, studies: int) -> None:
    folder = tmp / "two-view"
    generate_archive(folder, studies=studies * 6, seed=404, size="full", workers=2,
                     syntaxes=("explicit_le",))  # fmt: skip
    by_study: dict[str, list[Path]] = {}
    for row in read_truth(folder):
        if not row["corrupt"] and row["body_part"] == "wrist":
            by_study.setdefault(row["study_instance_uid"], []).append(folder / row["path"])
    chosen = [files for files in by_study.values() if len(files) == 2][:studies]
    delays = []
    with OrthancServer(tmp / "orthanc-results") as orthanc:
        node, port = _node(tmp, orthanc)
        try:
            for files in chosen:
                before = len(orthanc.instances())
                _push("WRISTAI", port, files)
                sent = time.perf_counter()
                while len(orthanc.instances()) < before + 1 + len(files):
                    if time.perf_counter() - sent > 120:
                        raise RuntimeError("results did not arrive within 120 s")
                    time.sleep(0.05)
                delays.append(time.perf_counter() - sent)
        finally:
            node.terminate()
            node.wait(60)
    print(
        f"last instance's Success -> SR and {2} SCs stored in Orthanc, two-view full-size "
        f"studies, grace 2 s: median {statistics.median(delays):.2f} s "
        f"(min {min(delays):.2f}, max {max(delays):.2f}, n={len(delays)}; target median < 5 s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=200)
    parser.add_argument("--full", type=int, default=40)
    parser.add_argument("--studies", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        files = _files(tmp / "small", args.small, "small", 501, args.small)
        files += _files(tmp / "full", max(4, args.full // 2), "full", 502, args.full)
        ingest(files, tmp)
        time_to_results(tmp, args.studies)


if __name__ == "__main__":
    main()
