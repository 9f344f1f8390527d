"""The OHIF Viewer (the npm package's prebuilt `dist/`) over a private Orthanc's DICOMweb.

A radiologist's web viewer as a test peer: Orthanc gets its DICOMweb plugin, and a small HTTP
server in this process serves OHIF's static files and forwards `/dicom-web/` to Orthanc, so the
browser sees one origin (no CORS, which Orthanc 1.10 does not speak) and OHIF's client-side
routes (`/viewer?...`) fall back to its `index.html`, which Orthanc's ServeFolders cannot do.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from playwright.sync_api import Browser, Page, Playwright, ViewportSize
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from tests.integration.orthanc import LOOPBACK, OrthancServer, free_port

REPO = Path(__file__).resolve().parents[2]
OHIF_VERSION = "3.13.2"
# Where `make install` unpacks `npm pack @ohif/app@OHIF_VERSION`; OHIF_DIST overrides it.
DEFAULT_OHIF_DIST = REPO / "var" / "ohif" / "package" / "dist"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
PROXY_TIMEOUT_S = 30.0
VIEWPORT_SIZE = ViewportSize(width=1280, height=800)
# No GPU here: WebGL through SwiftShader, which Chromium only allows when asked.
CHROMIUM_ARGS = ("--no-sandbox", "--use-gl=angle", "--use-angle=swiftshader",
                 "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist")  # fmt: skip
TOUR_WAIT_MS = 20_000
RENDER_TIMEOUT_S = 40.0
MIME_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".html": "text/html; charset=utf-8",
    ".json": "application/json",
    ".wasm": "application/wasm",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".woff": "font/woff",
}


def ohif_dist() -> Path | None:
    """The unpacked OHIF `dist/` folder, or None when it is not installed."""
    dist = Path(os.environ.get("OHIF_DIST", DEFAULT_OHIF_DIST))
    return dist if (dist / "index.html").is_file() else None


class DicomWebOrthanc(OrthancServer):
    """An OrthancServer with the DICOMweb plugin (QIDO-RS, WADO-RS) under `/dicom-web/`."""

    def config(self) -> dict[str, Any]:
        config = super().config()
        config["Plugins"] = [str(DICOMWEB_PLUGIN)]
        config["DicomWeb"] = {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "WadoRoot": "/wado",
            "Ssl": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        }
        return config


def ohif_config(origin: str) -> str:
    """OHIF's `app-config.js`: one DICOMweb data source, the Orthanc behind `origin`."""
    root = f"{origin}/dicom-web"
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (test PACS)",
            "name": "orthanc",
            "wadoUriRoot": f"{origin}/wado",
            "qidoRoot": root,
            "wadoRoot": root,
            "qidoSupportsIncludeField": False,
            "supportsReject": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        "showStudyList": True,
        "showLoadingIndicator": True,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "investigationalUseDialog": {"option": "never"},
        "maxNumberOfWebWorkers": 2,
        "dataSources": [source],
        "defaultDataSourceName": "orthanc",
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class OhifSite:
    """OHIF's static files and Orthanc's DICOMweb on one loopback origin, served by a thread:
    `with OhifSite(dist, orthanc) as site: page.goto(site.viewer_url(study_uid))`."""

    def __init__(self, dist: Path, orthanc: OrthancServer) -> None:
        self.dist = dist
        self.orthanc = orthanc
        self.port = free_port()
        self.origin = f"http://{LOOPBACK}:{self.port}"
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def viewer_url(self, study_uid: str, series_uid: str = "") -> str:
        """The basic viewer on one study, opening `series_uid` first when given."""
        url = f"{self.origin}/viewer?StudyInstanceUIDs={study_uid}"
        return f"{url}&initialSeriesInstanceUID={series_uid}" if series_uid else url

    def start(self) -> OhifSite:
        handler = _handler(self.dist, self.orthanc.url, ohif_config(self.origin))
        self._server = ThreadingHTTPServer((LOOPBACK, self.port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> OhifSite:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _handler(dist: Path, orthanc_url: str, config_js: str) -> type[BaseHTTPRequestHandler]:
    root = dist.resolve()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            """Quiet: the test output is no place for an access log."""

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path.startswith(("/dicom-web/", "/wado")):
                self._forward()
            elif path == "/app-config.js":
                self._send(HTTPStatus.OK, "text/javascript", config_js.encode())
            else:
                self._static(path)

        def _static(self, path: str) -> None:
            target = (root / path.lstrip("/")).resolve()
            if not target.is_relative_to(root) or not target.is_file():
                target = root / "index.html"  # a client-side route of the single-page app
            content_type = MIME_TYPES.get(target.suffix, "application/octet-stream")
            self._send(HTTPStatus.OK, content_type, target.read_bytes())

        def _forward(self) -> None:
            request = urllib.request.Request(orthanc_url + self.path)
            if accept := self.headers.get("Accept"):
                request.add_header("Accept", accept)
            try:
                with urllib.request.urlopen(request, timeout=PROXY_TIMEOUT_S) as answer:
                    body = answer.read()
                    status = answer.status
                    content_type = answer.headers.get("Content-Type", "application/octet-stream")
            except urllib.error.HTTPError as exc:
                body, status = exc.read(), exc.code
                content_type = exc.headers.get("Content-Type", "text/plain")
            self._send(status, content_type, body)

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


# -- the browser ---------------------------------------------------------------------------

Rgb = npt.NDArray[np.uint8]


def launch_chromium(playwright: Playwright) -> Browser:
    """Debian's Chromium, headless, driven by Playwright (no browser download)."""
    executable = shutil.which("chromium") or "/usr/bin/chromium"
    return playwright.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))


def open_study(page: Page, site: OhifSite, study_uid: str) -> None:
    """Open the study in OHIF's basic viewer and dismiss the first-visit tour."""
    page.goto(site.viewer_url(study_uid))
    with contextlib.suppress(PlaywrightTimeout):  # no tour: nothing covers the viewport
        page.get_by_text("Skip all", exact=True).click(timeout=TOUR_WAIT_MS)


def show_series(page: Page, modality: str) -> None:
    """Load the study browser's first series of `modality` into the viewport, as a reader does
    with a double click on its thumbnail."""
    browser = page.locator('[data-cy="studyBrowser-panel"]')
    browser.get_by_text(modality, exact=True).first.dblclick()


def viewport_rgb(page: Page) -> Rgb:
    """The viewport grid as the screen shows it, an RGB array."""
    png = page.locator('[data-cy="viewport-grid"]').screenshot()
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def wait_for_pixels(
    page: Page, count: Callable[[Rgb], int], minimum: int, timeout_s: float = RENDER_TIMEOUT_S
) -> tuple[Rgb, int]:
    """Screenshots of the viewport until `count` of one reaches `minimum` (the rendering is
    asynchronous) or the time is up; the last screenshot and its count."""
    deadline = time.monotonic() + timeout_s
    while True:
        rgb = viewport_rgb(page)
        found = count(rgb)
        if found >= minimum or time.monotonic() > deadline:
            return rgb, found
        time.sleep(0.5)
