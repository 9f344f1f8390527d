"""The `dicomnode` command: flags override the file, mistakes stop it with exit status 2."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dicomnode.cli import main


def test_check_config_applies_flags(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "check-config",
                "--port",
                "2104",
                "--ae-title",
                "TESTNODE",
                "--destination",
                "PACS@127.0.0.1:4242",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "port=2104" in out and "ae_title='TESTNODE'" in out and "'PACS'" in out


def test_invalid_flag_value_exits_2_with_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dicomnode: ") and "'node.port' = 0" in err and "\n" not in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.integration
def test_serve_answers_echoscu_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    node = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dicomnode.cli",
            "serve",
            "--port",
            str(port),
            "--storage",
            str(tmp_path / "spool"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            echo = subprocess.run(
                ["echoscu", "-aec", "WRISTAI", "127.0.0.1", str(port)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if echo.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert echo.returncode == 0, echo.stderr
    finally:
        node.terminate()
        _, err = node.communicate(timeout=30)
    assert node.returncode == 0
    assert "listening as WRISTAI" in err and "C-ECHO from ECHOSCU" in err
    assert (tmp_path / "spool").is_dir()
