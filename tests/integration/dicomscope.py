"""DICOMscope, OFFIS's presentation-state reference viewer (Debian package dicomscope), driven
headless: a private Xvfb, the viewer's own database in a temp dir, keyboard and mouse through
xdotool, screenshots through xwd.

It is the viewer that draws a GSPS's graphic layers (boxes, text) over the image; dcmtk's
`dcmp2pgm`, the same engine without the GUI, applies only the grey-level pipeline.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType

import numpy as np
import numpy.typing as npt
from PIL import Image

from tests.integration.orthanc import stop_process

DICOMSCOPE_JAR = Path("/usr/share/java/DICOMscope.jar")
DICOMSCOPE_CONFIG = Path("/etc/dcmtk/DICOMscope.cfg")
SCREEN = (1280, 900)
START_TIMEOUT_S = 30.0
RENDER_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
# Where the fixed layout of DICOMscope 3.6.0 puts things, on a 1280x900 screen.
ALL_STUDIES_HANDLE = (12, 71)
STUDY_ROW = (120, 96)
TREE_AREA = (slice(60, 400), slice(60, 700))
VIEWER_PANEL = (slice(66, 830), slice(8, 1030))
SELECTED_ROW_RGB = (184, 207, 229)
# Right on a collapsed node opens it, on an open one steps to its first child; Down goes on.
# Enough pairs open study, series and instances and end on the tree's last row.
EXPAND_KEYS = ("Right", "Down") * 6

Rgb = npt.NDArray[np.uint8]


class DicomScopeError(RuntimeError):
    """The viewer did not start or did not show the presentation state."""


class DicomScope:
    """One DICOMscope session showing one image through one presentation state:
    `with DicomScope(tmp, tools) as viewer: rgb = viewer.show(image, pr)`."""

    def __init__(self, workdir: Path, tools: dict[str, str]) -> None:
        self.workdir = workdir
        self.tools = tools
        self.display = ""
        self._xvfb: subprocess.Popen[bytes] | None = None
        self._viewer: subprocess.Popen[bytes] | None = None

    def show(self, image: Path, presentation_state: Path) -> Rgb:
        """Open `presentation_state` (of `image`) from the viewer's study browser; the image
        viewer panel as drawn, an RGB array."""
        database = self.workdir / "database"
        database.mkdir(parents=True)
        names = ["image.dcm", "state.dcm"]
        shutil.copyfile(image, database / names[0])
        shutil.copyfile(presentation_state, database / names[1])
        subprocess.run([self.tools["dcmqridx"], ".", *names], cwd=database, check=True,
                       capture_output=True, timeout=30)  # fmt: skip
        self._start_xvfb()
        self._start_viewer(database)
        self._xdotool("mousemove", *map(str, ALL_STUDIES_HANDLE), "click", "1")
        time.sleep(0.5)
        self._xdotool("mousemove", *map(str, STUDY_ROW), "click", "1")
        for key in EXPAND_KEYS:
            self._xdotool("key", key)
            time.sleep(0.15)
        row = self._selected_row()
        self._xdotool("mousemove", str(row[1]), str(row[0]), "click", "--repeat", "2",
                      "--delay", "80", "1")  # fmt: skip
        return self._rendered_panel()

    # -- processes ---------------------------------------------------------------------------

    def _start_xvfb(self) -> None:
        read, write = os.pipe()
        self._xvfb = subprocess.Popen(
            [self.tools["Xvfb"], "-displayfd", str(write), "-nolisten", "tcp",
             "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24"],
            pass_fds=(write,), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        os.close(write)
        with os.fdopen(read) as pipe:
            number = pipe.readline().strip()
        if not number:
            raise DicomScopeError("Xvfb did not report a display number")
        self.display = f":{number}"

    def _start_viewer(self, database: Path) -> None:
        config = database / "DICOMscope.cfg"
        config.write_text(_private_config(DICOMSCOPE_CONFIG.read_text(encoding="latin-1")),
                          encoding="latin-1")  # fmt: skip
        log = (self.workdir / "dicomscope.log").open("wb")
        self._viewer = subprocess.Popen(
            [self.tools["java"], "-jar", str(DICOMSCOPE_JAR), str(config)],
            cwd=database, env={**os.environ, "DISPLAY": self.display},
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._viewer.poll() is not None:
                raise DicomScopeError(f"DICOMscope exited with {self._viewer.returncode}")
            found = subprocess.run(
                [self.tools["xdotool"], "search", "--name", "DICOMscope"],
                env=self._env(), capture_output=True, check=False, timeout=10,
            )  # fmt: skip
            if found.returncode == 0 and self._tree_drawn():
                return
            time.sleep(0.5)
        raise DicomScopeError(f"DICOMscope showed no study browser in {START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        """End this session's own viewer and X server, by pid."""
        for process in (self._viewer, self._xvfb):
            stop_process(process, STOP_TIMEOUT_S)
        self._viewer = self._xvfb = None

    def __enter__(self) -> DicomScope:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the screen ----------------------------------------------------------------------------

    def screen(self) -> Rgb:
        """The whole X screen, an RGB array."""
        dump = subprocess.run([self.tools["xwd"], "-root", "-silent", "-display", self.display],
                              capture_output=True, check=True, timeout=30)  # fmt: skip
        pnm = subprocess.run([self.tools["xwdtopnm"]], input=dump.stdout, capture_output=True,
                             check=True, timeout=30)  # fmt: skip
        return np.asarray(Image.open(io.BytesIO(pnm.stdout)).convert("RGB"))

    def _tree_drawn(self) -> bool:
        """Whether the study browser shows its root ("All Studies": dark text on white)."""
        screen = self.screen()
        return bool((screen[60:85, 55:130].max(axis=2) < 100).sum() > 20)

    def _selected_row(self) -> tuple[int, int]:
        """(y, x) of the middle of the study browser's highlighted row."""
        tree = self.screen()[TREE_AREA].astype(int)
        hit = np.all(np.abs(tree - np.array(SELECTED_ROW_RGB)) <= 4, axis=2)
        ys, xs = np.nonzero(hit)
        if len(ys) == 0:
            raise DicomScopeError("no row is selected in DICOMscope's study browser")
        return (int(np.median(ys)) + TREE_AREA[0].start, int(np.median(xs)) + TREE_AREA[1].start)

    def _rendered_panel(self) -> Rgb:
        """The image viewer panel once the image is on it (dark pixels fill part of it)."""
        deadline = time.monotonic() + RENDER_TIMEOUT_S
        while True:
            panel = self.screen()[VIEWER_PANEL]
            if (panel.max(axis=2) < 40).mean() > 0.2:
                time.sleep(1.0)  # the graphic layers are drawn after the image
                return self.screen()[VIEWER_PANEL]
            if time.monotonic() > deadline:
                raise DicomScopeError("DICOMscope did not show the image in time")
            time.sleep(0.5)

    def _xdotool(self, *args: str) -> None:
        subprocess.run([self.tools["xdotool"], *args], env=self._env(), check=True,
                       capture_output=True, timeout=10)  # fmt: skip

    def _env(self) -> dict[str, str]:
        return {**os.environ, "DISPLAY": self.display}


def _private_config(text: str) -> str:
    """Debian's DICOMscope.cfg with the database (index.dat and instances) in the working
    directory instead of the system-wide /var/lib/dcmtk."""
    lines, section = [], ""
    for line in text.splitlines():
        if line.startswith("["):
            section = line.strip()
        elif section == "[DATABASE]" and line.split("=")[0].strip() == "Directory":
            line = "Directory = ."
        lines.append(line)
    return "\n".join(lines) + "\n"
