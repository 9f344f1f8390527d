"""`make demo`: the whole loop on one machine, with a private Orthanc standing in for the PACS.

`python -m dicomnode.demo FILE...` starts Orthanc (its own configuration and storage in a
temporary folder, loopback only) and the node with Orthanc as its destination, pushes the files
(one study) with dcmtk's `storescu`, waits for the structured report and the overlay images to
arrive in Orthanc, prints the report with `dsrdump`, then stops both (only the processes it
started). `make demo` feeds it a synthetic two-view wrist study.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ORTHANC = "/usr/sbin/Orthanc"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: object, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"demo: {what} did not happen within {timeout:.0f} s")


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        data: bytes = answer.read()
        return data


def main(argv: list[str] | None = None) -> int:
    """Run the demonstration on the files of one study; 0 when the report came back."""
    files = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not files:
        print("usage: python -m dicomnode.demo FILE.dcm...", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="wristai-demo-") as name:
        tmp = Path(name)
        dicom, http, node_port = _port(), _port(), _port()
        (tmp / "orthanc.json").write_text(json.dumps({
            "Name": "demo-pacs", "StorageDirectory": str(tmp / "pacs"),
            "IndexDirectory": str(tmp / "pacs"), "DicomAet": "DEMOPACS", "DicomPort": dicom,
            "HttpPort": http, "RemoteAccessAllowed": False, "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False, "Plugins": [],
        }))  # fmt: skip
        pacs = subprocess.Popen([ORTHANC, str(tmp / "orthanc.json")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        node = subprocess.Popen(
            [sys.executable, "-m", "dicomnode.cli", "serve", "--port", str(node_port),
             "--storage", str(tmp / "node"), "--http-port", "0",
             "--destination", f"DEMOPACS@127.0.0.1:{dicom}"],
        )  # fmt: skip
        try:
            _wait(lambda: _get(f"http://127.0.0.1:{http}/system"), "Orthanc start")
            _wait(lambda: subprocess.run(["echoscu", "-aec", "WRISTAI", "127.0.0.1",
                                          str(node_port)], capture_output=True).returncode == 0,
                  "node start")  # fmt: skip
            print(f"demo: sending a synthetic {len(files)}-view wrist study to WRISTAI", flush=True)
            subprocess.run(["storescu", "-aec", "WRISTAI", "127.0.0.1", str(node_port),
                            *map(str, files)], check=True)  # fmt: skip
            sent = time.monotonic()

            def report_arrived() -> bool:
                ids = json.loads(_get(f"http://127.0.0.1:{http}/instances"))
                return len(ids) >= 1 + len(files)

            _wait(report_arrived, "the report's arrival in Orthanc")
            print(f"demo: SR and overlays stored in Orthanc {time.monotonic() - sent:.1f} s after "
                  "the last image", flush=True)  # fmt: skip
            for instance in json.loads(_get(f"http://127.0.0.1:{http}/instances")):
                tags = json.loads(
                    _get(f"http://127.0.0.1:{http}/instances/{instance}/simplified-tags")
                )
                if tags.get("Modality") == "SR":
                    path = tmp / "report.dcm"
                    path.write_bytes(_get(f"http://127.0.0.1:{http}/instances/{instance}/file"))
                    subprocess.run(["dsrdump", "+Pl", str(path)], check=False)
            return 0
        finally:
            node.terminate()
            node.wait(60)
            pacs.terminate()
            pacs.wait(30)


if __name__ == "__main__":
    sys.exit(main())
