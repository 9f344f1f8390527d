"""A contact sheet of one synthetic instance per situation, read back through `read_radiograph`.

It shows what the pipeline will see (display space), so a person can check at a glance that the
images look like wrists and that every photometric and geometric situation is present.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.dicomio import DicomImageError, read_radiograph
from train.phantoms.archive import read_truth

Row = dict[str, str]
SITUATIONS: tuple[tuple[str, Callable[[Row], bool]], ...] = (
    ("PA", lambda r: r["view"] == "PA" and r["body_part"] == "wrist" and r["parts"] == "1"),
    ("lateral", lambda r: r["view"] == "LAT" and r["body_part"] == "wrist"),
    ("fracture", lambda r: r["fracture_visible"] == "1" and r["fracture_subtle"] == "0"),
    ("subtle fracture", lambda r: r["fracture_subtle"] == "1" and r["fracture_visible"] == "1"),
    ("implant", lambda r: r["implant"] == "1"),
    ("cast", lambda r: r["cast"] == "1"),
    ("two parts", lambda r: r["parts"] == "2"),
    ("rotated", lambda r: r["arm_angle_deg"] != "nan" and abs(float(r["arm_angle_deg"])) > 45),
    ("fingers down", lambda r: r["fingers_down"] == "1" and r["body_part"] == "wrist"),
    ("MONOCHROME1", lambda r: r["photometric"] == "monochrome1"),
    ("inverted by workstation", lambda r: r["photometric"] == "inverted"),
    ("white frame", lambda r: r["frame"] == "white"),
    ("ruler", lambda r: r["ruler"] == "1"),
    ("RGB screenshot", lambda r: r["sop_kind"] == "SC_RGB"),
    ("chest", lambda r: r["body_part"] == "chest"),
    ("pelvis", lambda r: r["body_part"] == "pelvis"),
    ("skull", lambda r: r["body_part"] == "skull"),
    (
        "non-wrist tagged as arm",
        lambda r: (
            r["body_part"] != "wrist"
            and r["body_part_tag"] in ("ARM", "BRAZO", "FOREARM", "ANTEBRAZO")
        ),
    ),
    ("JPEG 2000", lambda r: r["transfer_syntax"].startswith("j2k")),
    ("JPEG baseline", lambda r: r["transfer_syntax"] == "jpeg_baseline"),
    # Situations only the projection world draws (absent ones are skipped).
    ("oblique", lambda r: r["view"] == "OBL" and r["body_part"] == "wrist"),
    ("child, open physes", lambda r: _drawn(r).get("age") == "child" and r["parts"] == "1"),
    ("comminuted", lambda r: r["fracture_kind"] == "comminuted" and r["fracture_visible"] == "1"),
    (
        "ulnar styloid",
        lambda r: r["fracture_kind"] == "ulnar_styloid" and r["fracture_visible"] == "1",
    ),
    ("L-shaped frame", lambda r: r.get("frame_shape") == "L"),
    ("tilted frame", lambda r: r.get("frame_shape") == "tilted"),
    ("frame on one or two sides", lambda r: r.get("frame_shape") == "partial"),
    ("not-a-fracture lines", lambda r: bool(_drawn(r).get("mimics"))),
    ("edge-enhanced", lambda r: _drawn(r).get("processing") in ("edge", "unsharp", "multiscale")),
    ("decoy tagged as a wrist", lambda r: r["body_part"] != "wrist" and _wrist_tag(r)),
    *(
        (part.replace("_", " "), lambda r, part=part: r["body_part"] == part)
        for part in ("foot", "ankle", "knee", "lower_leg", "elbow", "shoulder", "spine")
    ),
)


def _drawn(row: Row) -> dict[str, Any]:
    """The appearance parameters recorded for the instance (empty for plain phantom images)."""
    text = row.get("appearance") or "{}"
    drawn: dict[str, Any] = json.loads(text)
    return drawn


def _wrist_tag(row: Row) -> bool:
    tag = row["body_part_tag"].upper()
    return any(
        word in tag
        for word in (
            "WRIST",
            "MUNECA",
            "MUÑECA",
            "POIGNET",
            "CANELL",
            "PUNHO",
            "HANDGELENK",
            "WRSIT",
            "MUNYECA",
            "MUÑEKA",
        )
    )


def write_contact_sheet(
    archive: Path, out: Path, *, tile: int = 256, columns: int = 5, renderer: str | None = None
) -> int:
    """Write a PNG sheet of one instance per situation found in `archive` (only those drawn by
    `renderer` when given); returns tiles drawn."""
    rows = [r for r in read_truth(archive) if not r["corrupt"]]
    if renderer is not None:
        rows = [r for r in rows if r.get("renderer", "phantom") == renderer]
    picks: list[tuple[str, Row]] = []
    used: set[str] = set()
    for name, matches in SITUATIONS:
        candidates = [r for r in rows if matches(r)]
        found = next((r for r in candidates if r["path"] not in used), None)
        found = found or next(iter(candidates), None)
        if found is not None:
            picks.append((name, found))
            used.add(found["path"])
    caption = 34
    n_rows = max(1, -(-len(picks) // columns))
    sheet = Image.new("L", (columns * tile, n_rows * (tile + caption)), color=40)
    draw = ImageDraw.Draw(sheet)
    text_font = font(13)
    for i, (name, row) in enumerate(picks):
        x, y = (i % columns) * tile, (i // columns) * (tile + caption)
        try:
            pixels = read_radiograph(archive / row["path"]).pixels
            thumb = _thumbnail(pixels, tile)
            sheet.paste(thumb, (x + (tile - thumb.width) // 2, y + (tile - thumb.height) // 2))
        except DicomImageError as exc:
            draw.text((x + 4, y + tile // 2), f"unreadable: {exc}"[:40], fill=255, font=text_font)
        label = f"{name}\n{row['body_part_tag'] or '(no tag)'} {row['transfer_syntax']}"
        draw.text((x + 4, y + tile + 2), label, fill=230, font=text_font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return len(picks)


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """DejaVu Sans, which matplotlib ships, draws every Latin accent (MUÑECA, CRÁNEO)."""
    from matplotlib import font_manager

    path = font_manager.findfont("DejaVu Sans", fallback_to_default=True)
    return ImageFont.truetype(path, size)


def _thumbnail(pixels: np.ndarray, size: int) -> Image.Image:
    image = Image.fromarray(np.clip(pixels * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    image.thumbnail((size, size), Image.Resampling.BILINEAR)
    return image
