"""`make demo`: the whole loop on one machine, with a private Orthanc standing in for the PACS.

`python -m tests.integration.demo FILE...` starts Orthanc and the node with the tests' own
harness (`OrthancServer`, `NodeProcess`: private configuration and storage in a temporary
folder, free loopback ports), the node sending to Orthanc; pushes the files (one study) with
dcmtk's `storescu`; waits for the structured report, the presentation states and the overlay
images to arrive in Orthanc; prints the report with `dsrdump`; then stops both, by pid. It lives
beside the tests because it is the same harness: the service package carries no Orthanc code.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.integration.node_process import NodeProcess
from tests.integration.orthanc import OrthancServer

TIMEOUT_S = 180.0


def main(argv: list[str] | None = None) -> int:
    """Run the demonstration on the files of one study; 0 when the report came back."""
    files = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not files:
        print("usage: python -m tests.integration.demo FILE.dcm...", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="wristai-demo-") as name, \
            OrthancServer(Path(name) / "pacs", aet="DEMOPACS") as pacs:  # fmt: skip
        node = NodeProcess(Path(name), destinations=[
            {"ae_title": "DEMOPACS", "host": "127.0.0.1", "port": pacs.dicom_port}
        ])  # fmt: skip
        node.start()
        try:
            print(f"demo: sending a synthetic {len(files)}-view wrist study to WRISTAI", flush=True)
            node.storescu(files).check_returncode()
            sent = time.monotonic()
            reports: list[str] = []
            while not reports and time.monotonic() - sent < TIMEOUT_S:
                time.sleep(0.5)
                reports = [
                    i
                    for i in pacs.instances()
                    if pacs.get(f"/instances/{i}/simplified-tags").get("Modality") == "SR"
                ]
            if not reports:
                print(f"demo: no report in Orthanc after {TIMEOUT_S:.0f} s\n{node.log()[-3000:]}",
                      file=sys.stderr)  # fmt: skip
                return 1
            time.sleep(2.0)  # the presentation states and overlays follow on the same association
            modalities = sorted(pacs.get(f"/instances/{i}/simplified-tags").get("Modality", "")
                                for i in pacs.instances())  # fmt: skip
            print(f"demo: results stored in Orthanc {time.monotonic() - sent:.1f} s after the last "
                  f"image; Orthanc now holds {', '.join(modalities)}", flush=True)  # fmt: skip
            path = Path(name) / "report.dcm"
            path.write_bytes(pacs.raw(f"/instances/{reports[0]}/file"))
            subprocess.run(["dsrdump", "+Pl", str(path)], check=False)
            return 0
        finally:
            node.stop()


if __name__ == "__main__":
    sys.exit(main())
