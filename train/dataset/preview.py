"""`preview`: a before/after contact sheet of random views with each step's decision under it.

Left of each pair: the source radiograph in display space, as read from the archive, with the
part's box and the direction the preprocessing takes as "fingers up". Right: the model-input view.
Under each pair, the cues that decided each step (`pipeline.preprocess.evidence`), as `prepare`
stored them. Refused instances, when asked for, follow: the source and the refusal's reason.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.dicomio import DicomImageError, read_radiograph
from pipeline.preprocess.transforms import Affine
from train.dataset.records import read_png
from train.dataset.split import source_ref
from train.phantoms.contact_sheet import font

TILE = 256
CAPTION = 64
CAPTION_LINES = 4
"""Lines of 12-point text that fit in CAPTION pixels."""
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def write_preview(
    dataset: Path,
    archive: Path,
    out: Path,
    *,
    key: bytes,
    count: int = 12,
    seed: int = 0,
    columns: int = 3,
    refused: int = 0,
) -> int:
    """Write the sheet of `count` random views and `refused` random refused instances to
    `out`; returns how many views were drawn."""
    with (dataset / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    picks = random.Random(seed).sample(rows, min(count, len(rows)))
    turned_away = _refused_rows(dataset, refused, seed)
    sources = _resolve(archive, key, {r["source_ref"] for r in (*picks, *turned_away)})
    n_rows = max(1, -(-(len(picks) + len(turned_away)) // columns))
    sheet = Image.new("RGB", (columns * 2 * TILE, n_rows * (TILE + CAPTION)), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    text_font = font(12)
    for i, row in enumerate(picks):
        x = (i % columns) * 2 * TILE
        y = (i // columns) * (TILE + CAPTION)
        try:
            if row["source_ref"] not in sources:
                raise FileNotFoundError("not in the archive (or another pseudonym key)")
            source = read_radiograph(sources[row["source_ref"]]).pixels
            sheet.paste(_before(source, row), (x, y))
        except (DicomImageError, FileNotFoundError) as exc:
            draw.text(
                (x + 4, y + TILE // 2),
                f"source unreadable: {exc}"[:60],
                fill=(255, 80, 80),
                font=text_font,
            )
        view = Image.fromarray((read_png(dataset / row["path"]) * 255).astype(np.uint8))
        view.thumbnail((TILE, TILE))
        sheet.paste(view.convert("RGB"), (x + TILE + (TILE - view.width) // 2, y))
        caption = "\n".join(caption_lines(row, text_font, 2 * TILE - 8))
        draw.text((x + 4, y + TILE + 4), caption, fill=(230, 230, 230), font=text_font)
    for i, row in enumerate(turned_away, start=len(picks)):
        x = (i % columns) * 2 * TILE
        y = (i // columns) * (TILE + CAPTION)
        if row["source_ref"] in sources:
            try:
                pixels = read_radiograph(sources[row["source_ref"]]).pixels
                sheet.paste(_thumbnail(pixels), (x, y))
            except DicomImageError:
                pass  # the source stays blank; the reason beside it is what matters
        reason = wrap(row["reason"], text_font, TILE - 8)[: TILE // 16]
        draw.text((x + TILE + 4, y + 4), "\n".join(["REFUSED", *reason]), fill=(255, 140, 90),
                  font=text_font)  # fmt: skip
        cue_lines = wrap(row.get("cues") or "", text_font, 2 * TILE - 8)[:CAPTION_LINES]
        draw.text((x + 4, y + TILE + 4), "\n".join(cue_lines), fill=(230, 230, 230),
                  font=text_font)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return len(picks)


def caption_lines(row: dict[str, str], text_font: Font, width: int) -> list[str]:
    """The caption of one view: label and part, then its cues wrapped to `width` pixels (or,
    for datasets prepared before cues were stored, the rule columns)."""
    head = f"label {row['label']} {row['split']}  part {int(row['part']) + 1}/{row['n_parts']}"
    cues = row.get("cues") or ""
    if not cues:
        cues = (
            f"wrist: {row['wrist_rule']} | inverted: {row['inverted']} ({row['inversion_rule']})"
            f" | rotated {float(row['rotation_deg']):+.0f} deg, fingers flipped: "
            f"{row['fingers_flipped']}"
        )
    lines = [head, *wrap(cues, text_font, width)]
    if len(lines) > CAPTION_LINES:
        lines = [*lines[: CAPTION_LINES - 1], lines[CAPTION_LINES - 1] + " …"]
    return lines


def wrap(text: str, text_font: Font, width: int) -> list[str]:
    """Greedy wrap to `width` pixels in `text_font`, breaking between " | " groups where it can
    (a step's cues stay together), else between words; a word wider than that stands alone."""
    lines: list[str] = []
    groups = text.split(" | ")
    for i, group in enumerate(groups):
        piece = group if i == len(groups) - 1 else f"{group} |"
        joined = f"{lines[-1]} {piece}" if lines else piece
        if lines and text_font.getlength(joined) <= width:
            lines[-1] = joined
            continue
        fresh = True  # a group that does not fit on the line starts a new one
        for word in piece.split():
            joined = f"{lines[-1]} {word}" if lines else word
            if lines and not fresh and text_font.getlength(joined) <= width:
                lines[-1] = joined
            else:
                lines.append(word)
            fresh = False
    return lines


def _refused_rows(dataset: Path, count: int, seed: int) -> list[dict[str, str]]:
    """Up to `count` random instances `prepare` refused (rows naming an instance)."""
    path = dataset / "rejected.csv"
    if count <= 0 or not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r["sop_instance_uid"] and r["source_ref"]]
    return random.Random(seed).sample(rows, min(count, len(rows)))


def _thumbnail(pixels: np.ndarray) -> Image.Image:
    """The source, whole, on a TILE-square canvas."""
    image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    image.thumbnail((TILE, TILE))
    canvas = Image.new("RGB", (TILE, TILE), (30, 30, 30))
    canvas.paste(image, ((TILE - image.width) // 2, (TILE - image.height) // 2))
    return canvas


def _resolve(archive: Path, key: bytes, refs: set[str]) -> dict[str, Path]:
    """Find the archive files behind `source_ref` digests by hashing the archive's paths."""
    found: dict[str, Path] = {}
    for path in archive.rglob("*"):
        ref = source_ref(key, path.relative_to(archive).as_posix())
        if ref in refs:
            found[ref] = path
            if len(found) == len(refs):
                break
    return found


def _before(pixels: np.ndarray, row: dict[str, str]) -> Image.Image:
    """The source thumbnail with the part box (green) and the view's up direction (orange)."""
    scale = TILE / max(pixels.shape)
    image = Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).convert("RGB")
    image = image.resize(
        (max(1, round(pixels.shape[1] * scale)), max(1, round(pixels.shape[0] * scale)))
    )
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = json.loads(row["bbox"])
    draw.rectangle([x0 * scale, y0 * scale, x1 * scale, y1 * scale], outline=(0, 220, 0), width=2)
    to_source = Affine(np.array(json.loads(row["to_source"])))
    centre_bottom = to_source.apply(np.array([[170.0, 400.0], [170.0, 100.0]])) * scale
    (bx, by), (tx, ty) = centre_bottom
    draw.line([bx, by, tx, ty], fill=(255, 150, 0), width=3)
    draw.ellipse([tx - 4, ty - 4, tx + 4, ty + 4], fill=(255, 150, 0))
    canvas = Image.new("RGB", (TILE, TILE), (30, 30, 30))
    canvas.paste(image, ((TILE - image.width) // 2, (TILE - image.height) // 2))
    return canvas
