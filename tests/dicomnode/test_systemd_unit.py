"""The systemd unit passes `systemd-analyze verify` and runs the node as the service expects."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

UNIT = Path(__file__).resolve().parents[2] / "systemd" / "dicomnode.service"


def test_unit_verifies_clean(tmp_path: Path) -> None:
    # The installed path does not exist on a development machine: point it at this venv.
    executable = Path(sys.executable).with_name("dicomnode")
    unit = tmp_path / "dicomnode.service"
    unit.write_text(UNIT.read_text().replace("/opt/dicomnode/.venv/bin/dicomnode",
                                             str(executable)))  # fmt: skip
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                            text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr


def test_unit_runs_serve_with_state_directory_and_hardening() -> None:
    text = UNIT.read_text()
    for line in (
        "StateDirectory=dicomnode",
        "Restart=on-failure",
        "RestartPreventExitStatus=2",  # dicomnode's "cannot work as configured": fix, not retry
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "User=dicomnode",
        "UMask=0077",
    ):
        assert line in text, line
    assert "dicomnode serve --config" in text and "--storage /var/lib/dicomnode" in text
