"""The `dicomnode` command: flags override the file, mistakes stop it with exit status 2."""

from __future__ import annotations

import logging
import os
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
def test_serve_stores_what_storescu_sends_and_stops_on_sigterm(
    tmp_path: Path, synthetic_archive: Path
) -> None:
    from dicomnode.index import Index
    from train.phantoms.archive import read_truth

    port = _free_port()
    storage = tmp_path / "node"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # as systemd's NOTIFY_SOCKET
    notify.bind(str(tmp_path / "notify"))
    notify.settimeout(60)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
    node = subprocess.Popen(
        [sys.executable, "-m", "dicomnode.cli", "serve", "--port", str(port),
         "--storage", str(storage), "--http-port", "0"],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    rows = [r for r in read_truth(synthetic_archive)
            if not r["corrupt"] and r["transfer_syntax"] == "explicit_le"][:3]  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            echo = subprocess.run(["echoscu", "-aec", "WRISTAI", "127.0.0.1", str(port)],
                                  capture_output=True, text=True, timeout=30)  # fmt: skip
            if echo.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert echo.returncode == 0, echo.stderr
        files = [str(synthetic_archive / r["path"]) for r in rows]
        store = subprocess.run(["storescu", "-aec", "WRISTAI", "127.0.0.1", str(port), *files],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        assert store.returncode == 0, store.stderr
    finally:
        node.terminate()
        _, err = node.communicate(timeout=30)
    assert node.returncode == 0
    messages = {notify.recv(100), notify.recv(100)}
    notify.close()
    assert messages == {b"READY=1", b"STOPPING=1"}
    assert "listening as WRISTAI" in err and "C-ECHO from ECHOSCU" in err
    index = Index(storage / "index.sqlite")
    for row in rows:
        stored = index.instances(row["study_instance_uid"])
        assert row["sop_instance_uid"] in {i.sop_uid for i in stored}
    assert not any(row["patient_id"] in err for row in rows)  # logs never name the patient


def test_serve_with_an_unreadable_certificate_exits_2_naming_it(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "tls.toml"
    missing = tmp_path / "missing-cert.pem"
    config.write_text(
        f'[storage]\npath = "{tmp_path / "node"}"\n[http]\nport = 0\n'
        f'[tls]\nenabled = true\ncertificate = "{missing}"\nprivate_key = "{missing}"\n'
    )
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        assert main(["serve", "--config", str(config)]) == 2
    finally:  # serve configured logging onto this test's captured stderr: undo it
        root.handlers[:], root.level = handlers, level
    err = capfd.readouterr().err
    assert "missing-cert.pem" in err and "cannot be loaded" in err
    assert not (tmp_path / "node").exists()  # stopped before creating anything


def test_the_receiver_does_not_import_torch() -> None:
    # Only the analysis workers need the model: torch in the receiver costs ~700 MB of RSS.
    code = (
        "import sys, dicomnode.cli, dicomnode.scp, dicomnode.worker, dicomnode.health, "
        "dicomnode.retention, dicomnode.operations; print(sorted(m for m in sys.modules "
        "if m.split('.')[0] in ('torch', 'torchvision')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
