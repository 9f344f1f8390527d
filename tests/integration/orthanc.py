"""A real Orthanc (Debian's /usr/sbin/Orthanc) started from a test as the PACS.

Each server gets its own config, storage and index in a temp dir and free loopback ports; it is
stopped by its own pid only. Option names are those of Orthanc 1.10 (`Orthanc --config=-`).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

ORTHANC_BINARY = "/usr/sbin/Orthanc"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
HTTP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on right now (bind to port 0)."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports. The sockets stay bound until all are chosen:
    asking one at a time can hand the same port out twice."""
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((LOOPBACK, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def stop_process(
    process: subprocess.Popen[bytes] | None, timeout_s: float = STOP_TIMEOUT_S
) -> None:
    """Terminate a process this test started (by its own handle, so by pid), then kill it if it
    does not exit in time; nothing when it is None or already gone."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout_s)


def orthanc_available() -> bool:
    """Whether the Orthanc binary is installed on this machine."""
    return Path(ORTHANC_BINARY).exists() or shutil.which("Orthanc") is not None


class OrthancError(RuntimeError):
    """Orthanc did not start, or a REST call failed; the message carries the log's tail."""


class OrthancServer:
    """A private Orthanc on 127.0.0.1: `with OrthancServer(tmp) as pacs: pacs.upload(path)`.

    `modalities` are (AE title, port) pairs of peers on 127.0.0.1 that Orthanc may serve
    (C-FIND/C-GET/C-MOVE callers) or send to (C-MOVE/C-STORE destinations).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        modalities: Iterable[tuple[str, int]] = (),
        stable_age_s: int = 1,
    ) -> None:
        self.workdir = workdir
        self.aet = aet
        self.dicom_port, self.http_port = free_ports(2)
        self.url = f"http://{LOOPBACK}:{self.http_port}"
        self.config_path = workdir / "orthanc.json"
        self.log_path = workdir / "orthanc.log"
        self._modalities = list(modalities)
        self._stable_age_s = stable_age_s
        self._process: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"OrthancServer({self.aet}@{LOOPBACK}:{self.dicom_port}, http {self.http_port})"

    # -- lifecycle -------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The configuration this server starts with."""
        return {
            "Name": f"test-{self.aet}",
            "StorageDirectory": str(self.workdir / "storage"),
            "IndexDirectory": str(self.workdir / "index"),
            "StorageCompression": False,
            "Plugins": [],
            "LuaScripts": [],
            "ConcurrentJobs": 2,
            "SaveJobs": False,
            "HttpServerEnabled": True,
            "HttpPort": self.http_port,
            "OrthancExplorerEnabled": False,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "HttpDescribeErrors": True,
            "KeepAlive": True,
            "TcpNoDelay": True,
            "HttpThreadsCount": 4,
            "DicomServerEnabled": True,
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "DicomCheckCalledAet": False,
            "DicomCheckModalityHost": False,
            "DicomAlwaysAllowEcho": True,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,
            "DicomAlwaysAllowGet": True,
            "DicomAlwaysAllowMove": True,
            "DicomModalitiesInDatabase": False,
            "DicomModalities": {
                aet.lower(): _modality(aet, port) for aet, port in self._modalities
            },
            "DicomScpTimeout": 30,
            "DicomScuTimeout": 10,
            "DicomThreadsCount": 4,
            "StableAge": self._stable_age_s,
            "LoadPrivateDictionary": False,
            "MallocArenaMax": 2,
        }

    def start(self) -> OrthancServer:
        """Write the config, start Orthanc and wait until its REST API answers."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        binary = ORTHANC_BINARY if Path(ORTHANC_BINARY).exists() else shutil.which("Orthanc")
        if binary is None:
            raise OrthancError("Orthanc is not installed (apt-get install orthanc)")
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(
                [binary, "--no-jobs", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise OrthancError(
                    f"Orthanc exited with code {self._process.returncode} at start-up\n"
                    + self.log_tail()
                )
            try:
                self.get("/system")
                return self
            except (OSError, OrthancError):
                time.sleep(0.1)
        self.stop()
        raise OrthancError(
            f"Orthanc did not answer on {self.url} within {START_TIMEOUT_S:.0f} s\n"
            + self.log_tail()
        )

    def stop(self) -> None:
        """Terminate this server's own process (then kill it if it does not exit in time)."""
        process, self._process = self._process, None
        stop_process(process)

    def __enter__(self) -> OrthancServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int | None:
        """The pid of the running Orthanc, or None when stopped."""
        return self._process.pid if self._process is not None else None

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of Orthanc's log."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no Orthanc log)"
        return "\n".join(text.splitlines()[-lines:])

    # -- REST helpers ----------------------------------------------------------------------

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str = ""
    ) -> Any:
        """One REST call; the decoded JSON answer (None for an empty one)."""
        req = urllib.request.Request(self.url + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")
            raise OrthancError(f"{method} {path} -> HTTP {exc.code}: {detail}") from exc
        return json.loads(payload) if payload.strip() else None

    def get(self, path: str) -> Any:
        """GET a REST resource as JSON."""
        return self.request("GET", path)

    def raw(self, path: str) -> bytes:
        """GET a resource's bytes (an instance's file: `/instances/ID/file`)."""
        with urllib.request.urlopen(self.url + path, timeout=HTTP_TIMEOUT_S) as response:
            data: bytes = response.read()
        return data

    def upload(self, path: Path) -> dict[str, Any]:
        """Store one DICOM file through POST /instances; Orthanc's answer (ID, Status...)."""
        answer: dict[str, Any] = self.request(
            "POST", "/instances", path.read_bytes(), "application/dicom"
        )
        return answer

    def instances(self) -> list[str]:
        """Orthanc's identifiers of every stored instance."""
        ids: list[str] = self.get("/instances")
        return ids

    def study_count(self) -> int:
        """How many studies Orthanc holds."""
        return len(self.get("/studies"))

    def add_modality(self, aet: str, port: int) -> None:
        """Declare one more peer on 127.0.0.1 at run time (e.g. a C-MOVE destination)."""
        body = json.dumps(_modality(aet, port)).encode()
        self.request("PUT", f"/modalities/{aet.lower()}", body, "application/json")


def _modality(aet: str, port: int) -> dict[str, Any]:
    return {
        "AET": aet,
        "Host": LOOPBACK,
        "Port": port,
        "AllowEcho": True,
        "AllowFind": True,
        "AllowGet": True,
        "AllowMove": True,
        "AllowStore": True,
    }
