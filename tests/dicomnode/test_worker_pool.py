"""A worker that dies (a crashing decoder, say) is replaced; ingest is another process."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from dicomnode.config import Config, with_overrides
from dicomnode.worker import WorkerPool


def test_a_killed_worker_is_restarted(tmp_path: Path) -> None:
    config = with_overrides(Config(), storage={"path": tmp_path})
    pool = WorkerPool(config)
    pool.start()
    try:
        first = pool.processes[0]
        assert first.pid is not None and first.is_alive()
        os.kill(first.pid, signal.SIGKILL)
        first.join(10)
        assert pool.alive() == 0
        pool.supervise()
        replacement = pool.processes[0]
        assert replacement.pid != first.pid
        deadline = time.monotonic() + 10
        while not replacement.is_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pool.alive() == 1
    finally:
        pool.shutdown(timeout=30)
    assert pool.alive() == 0
