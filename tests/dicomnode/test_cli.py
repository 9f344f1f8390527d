"""The `dicomnode` command: flags override the file, mistakes stop it with exit status 2."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicomnode.cli import main
from tests.dicomnode.conftest import DEMO_BUNDLE


def test_check_config_applies_flags_and_loads_the_model(
    capsys: pytest.CaptureFixture[str],
) -> None:
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
    info = json.loads((DEMO_BUNDLE / "model.json").read_text(encoding="utf-8"))
    assert f"{info['name']} {info['version']}, loads and passes its self-test" in out
    assert re.search(r"storage.path var/dicomnode: writable, \d+ MB free", out)


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
    assert "listening as WRISTAI" in err and "loads and passes its self-test" in err
    assert re.search(r"association assoc-\w+ released after [\d.]+ s \(ECHOSCU at 127\.0\.0\.1\): "
                     r"1 C-ECHO", err)  # fmt: skip
    assert re.search(r"\(STORESCU at 127\.0\.0\.1\): 3 stored in \d+ stud", err)
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


# --- start-up checks: what cannot work exits 2 with one sentence naming the key and the file --


def _config(tmp_path: Path, text: str = "") -> Path:
    """A configuration with its storage in tmp_path and no HTTP port, plus `text`."""
    path = tmp_path / "node.toml"
    path.write_text(f'[storage]\npath = "{tmp_path / "node"}"\n[http]\nport = 0\n{text}')
    return path


def _refusal(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line the command printed on stderr."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("dicomnode: ") and "\n" not in err, err
    return err


def _run(command: str, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """`dicomnode COMMAND ARGS`: exit status and stderr. `serve` runs in a process of its own
    (on a free port): should it start instead of refusing, the timeout ends it."""
    if command != "serve":
        return main([command, *args]), _refusal(capsys)
    node = subprocess.run(
        [sys.executable, "-m", "dicomnode.cli", "serve", *args, "--port", str(_free_port())],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return node.returncode, node.stderr.strip()


@pytest.mark.parametrize("command", ["serve", "check-config"])
def test_a_missing_model_exits_2_naming_the_key_and_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    missing = tmp_path / "no-such-bundle"
    config = _config(tmp_path, f'[model]\nbundle = "{missing}"\n')
    assert _run(command, "--config", str(config), capsys=capsys) == (
        2,
        f"dicomnode: {config}: 'model.bundle' = '{missing}' does not "
        "exist (a model bundle folder, as dicomnode-train export makes)",
    )
    status, err = _run(command, "--config", str(config), "--model", str(tmp_path), capsys=capsys)
    assert status == 2 and "\n" not in err
    assert err.startswith(
        f"dicomnode: command line (--model): 'model.bundle' = '{tmp_path}' cannot be used: "
    )
    assert "no model.json" in err
    assert not (tmp_path / "node").exists()  # refused before creating anything


def test_a_bundle_that_loads_but_cannot_analyse_exits_2(
    tmp_path: Path, broken_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["check-config", "--config", str(_config(tmp_path)), "--model", str(broken_bundle)])
        == 2
    )
    err = _refusal(capsys)
    assert f"'model.bundle' = '{broken_bundle}' cannot be used: {broken_bundle}: " in err
    assert "output for a blank image is not a number" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[destinations]]\nae_title = "PACS"\nhost = "pacs.example.org:104"\nport = 104\n',
            "'destinations[0].host' = 'pacs.example.org:104' must be a host name or an IP address",
        ),
        (
            '[[destinations]]\nae_title = "PACS"\nhost = "10.0.0.256"\nport = 104\n',
            "'destinations[0].host' = '10.0.0.256' must be a host name or an IP address",
        ),
        (
            '[[destinations]]\nae_title = "PACS"\nhost = "h"\nport = 104\n'
            '[[destinations]]\nae_title = "PACS"\nhost = "h"\nport = 104\n',
            "'destinations[1]' = 'PACS@h:104' repeats destinations[0]",
        ),
    ],
    ids=["port-in-host", "bad-address", "repeated"],
)
def test_bad_destinations_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = _config(tmp_path, text)
    assert main(["check-config", "--config", str(config)]) == 2
    assert _refusal(capsys).startswith(f"dicomnode: {config}: {message}")


def test_missing_or_unusable_tls_files_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "ca.pem"
    config = _config(
        tmp_path,
        f'[tls]\nca_certificates = "{missing}"\n[[destinations]]\n'
        'ae_title = "PACS"\nhost = "pacs"\nport = 2762\ntls = true\n',
    )
    assert main(["check-config", "--config", str(config)]) == 2
    assert _refusal(capsys) == (
        f"dicomnode: {config}: 'tls.ca_certificates' = '{missing}' cannot be loaded: no such file"
    )
    garbage = tmp_path / "node.pem"
    garbage.write_text("not a certificate\n")
    config = _config(
        tmp_path, f'[tls]\nenabled = true\ncertificate = "{garbage}"\nprivate_key = "{garbage}"\n'
    )
    assert main(["serve", "--config", str(config)]) == 2
    err = _refusal(capsys)
    assert err.startswith(f"dicomnode: {config}: 'tls.certificate': TLS certificate '{garbage}'")
    assert "cannot be loaded" in err


@contextlib.contextmanager
def _unwritable(folder: Path) -> Iterator[None]:
    """`folder` made unwritable, for root too (immutable) where chattr works."""
    if os.geteuid() != 0:
        folder.chmod(0o500)
        try:
            yield
        finally:
            folder.chmod(0o700)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(folder)]).returncode != 0:
        pytest.skip("root, and no immutable attribute on this file system")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


def test_storage_that_cannot_be_written_or_is_nearly_full_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    (tmp_path / "node").mkdir()
    with _unwritable(tmp_path / "node"):
        assert main(["serve", "--config", str(config)]) == 2
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    assert _refusal(capsys) == (
        f"dicomnode: {config}: 'storage.path' = '{tmp_path / 'node'}' "
        f"is not writable by user {user}"
    )
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert main(["check-config", "--config", str(config), "--storage", str(a_file / "x")]) == 2
    assert _refusal(capsys) == (
        f"dicomnode: command line (--storage): 'storage.path' = "
        f"'{a_file / 'x'}' cannot be created: {a_file} is not a folder"
    )
    config.write_text(config.read_text().replace("[http]", "min_free_mb = 1e12\n[http]"))
    assert main(["check-config", "--config", str(config)]) == 2
    assert re.fullmatch(
        rf"dicomnode: {re.escape(str(config))}: 'storage.path' = '.*' has \d+ MB "
        r"free, less than storage.min_free_mb \(1e\+12 MB\)",
        _refusal(capsys),
    )
