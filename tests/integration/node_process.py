"""The node as a separate process for fault, load and security tests: start, kill -9, restart.

`NodeProcess` writes a TOML configuration from the given sections, starts
``python -m dicomnode.cli serve`` on free loopback ports and waits until a C-ECHO succeeds.
Only the process it started is ever signalled, by pid.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.integration.orthanc import free_ports

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "config" / "models" / "wrist-demo"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_text(sections: dict[str, Any]) -> str:
    """TOML for {section: {key: value}}; a list of dicts becomes an array of tables."""
    lines: list[str] = []
    for name, body in sections.items():
        tables = body if isinstance(body, list) else [body]
        for table in tables:
            lines.append(f"[[{name}]]" if isinstance(body, list) else f"[{name}]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


class NodeProcess:
    """One node: its configuration, storage folder and (while running) its process."""

    def __init__(self, tmp_path: Path, **sections: Any) -> None:
        self.port, self.http_port = free_ports(2)
        self.storage = tmp_path / "node"
        self.log_path = tmp_path / "node.log"
        base: dict[str, Any] = {
            "node": {"port": self.port},
            "storage": {"path": str(self.storage)},
            "http": {"port": self.http_port},
            "completeness": {"grace_seconds": 0.5, "quiet_seconds": 10.0},
            "model": {"bundle": str(MODEL)},
            "sending": {"initial_delay_seconds": 1.0, "max_delay_seconds": 5.0},
        }
        for name, body in sections.items():
            if isinstance(body, dict) and isinstance(base.get(name), dict):
                base[name] = {**base[name], **body}
            else:
                base[name] = body
        self.config = tmp_path / "node.toml"
        self.config.write_text(toml_text(base), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *extra_args: str, timeout: float = 90.0) -> NodeProcess:
        """Start the node; return once it answers C-ECHO (AssertionError with its log if not)."""
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.cli", "serve", "--config", str(self.config),
             *extra_args],
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self.echo().returncode == 0:
                return self
            time.sleep(0.3)
        self.kill()
        raise AssertionError(f"the node did not start:\n{self.log()[-3000:]}")

    def echo(self, calling: str = "ECHOSCU", *tls: str) -> subprocess.CompletedProcess[str]:
        """echoscu to the node (extra dcmtk TLS arguments in `tls`)."""
        command = ["echoscu", "-aet", calling, "-aec", "WRISTAI", *tls, "127.0.0.1",
                   str(self.port)]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=60)

    def storescu(self, files: list[Path], *args: str, timeout: float = 300.0
                 ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """storescu `files` to the node over one association (extra flags in `args`)."""
        command = ["storescu", "-aec", "WRISTAI", *args, "127.0.0.1", str(self.port),
                   *map(str, files)]  # fmt: skip
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def kill9(self) -> None:
        """SIGKILL the node process (a crash: nothing runs after it)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait; returns the exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return int(self.process.returncode or 0)

    def kill(self) -> None:
        """Stop whatever way works (test clean-up)."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def log(self) -> str:
        """The node's output so far (text and JSON lines)."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def index_path(self) -> Path:
        return self.storage / "index.sqlite"

    @property
    def audit_path(self) -> Path:
        return self.storage / "audit.jsonl"
