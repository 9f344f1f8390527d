"""`preview`: a before/after contact sheet of random views with each step's decision under it.

Left of each pair: the source radiograph in display space, as read from the archive, with the
part's box and the direction the preprocessing takes as "fingers up". Right: the model-input view.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pipeline.dicomio import DicomImageError, read_radiograph
from pipeline.preprocess.transforms import Affine
from train.dataset.records import read_png
from train.dataset.split import source_ref
from train.phantoms.contact_sheet import font

TILE = 256
CAPTION = 64


def write_preview(
    dataset: Path,
    archive: Path,
    out: Path,
    *,
    key: bytes,
    count: int = 12,
    seed: int = 0,
    columns: int = 3,
) -> int:
    """Write the sheet of `count` random views to `out`; returns how many were drawn."""
    with (dataset / "metadata.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    picks = random.Random(seed).sample(rows, min(count, len(rows)))
    sources = _resolve(archive, key, {row["source_ref"] for row in picks})
    n_rows = max(1, -(-len(picks) // columns))
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
        caption = (
            f"label {row['label']} {row['split']}  part {int(row['part']) + 1}/{row['n_parts']}\n"
            f"wrist: {row['wrist_rule']}   inverted: {row['inverted']} ({row['inversion_rule']})\n"
            f"rotated {float(row['rotation_deg']):+.0f} deg   fingers flipped: "
            f"{row['fingers_flipped']}"
        )
        draw.text((x + 4, y + TILE + 4), caption, fill=(230, 230, 230), font=text_font)
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return len(picks)


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
