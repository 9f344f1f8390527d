"""What the radiographer and the system burn into a radiograph: collimation, shutter, marks.

`collimation_field` makes the exposed-area mask that `detector.expose` turns into white
(unexposed) borders; the other functions work in place on a display-space float32 image in
[0, 1] and return the box (x0, y0, x1, y1), end-exclusive, of the pixels they may have changed.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

FRAME_SHAPES = ("none", "full", "partial", "L", "tilted")
Box = tuple[int, int, int, int]
Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
_SIDES = ("left", "top", "right", "bottom")
_SUPER = 3  # supersampling of drawn shapes, for anti-aliased edges


def collimation_field(
    height: int,
    width: int,
    rng: np.random.Generator,
    *,
    shape: str,
    keep: tuple[int, int, int, int] | None = None,
) -> np.ndarray:
    """Float32 mask (1 = exposed) of a collimated field of one of `FRAME_SHAPES`.

    "full" insets all four sides by 3-15 %, "partial" one side or two opposite ones, "L" two
    adjacent ones, "tilted" is a rectangle rotated by 5-20 degrees. Insets shrink (a side
    may vanish) so that the `keep` box (x0, y0, x1, y1), end-exclusive, stays exposed.
    """
    if shape not in FRAME_SHAPES:
        raise ValueError(f"unknown frame shape {shape!r}; use one of {FRAME_SHAPES}")
    if shape == "none":
        return np.ones((height, width), np.float32)
    if shape == "tilted":
        return _tilted_field(height, width, rng, keep)
    if shape == "full":
        sides = list(_SIDES)
    elif shape == "L":
        first = int(rng.integers(4))
        sides = [_SIDES[first], _SIDES[(first + 1) % 4]]
    else:
        first = int(rng.integers(4))
        sides = [_SIDES[first]] + ([_SIDES[(first + 2) % 4]] if rng.random() < 0.5 else [])
    fractions = rng.uniform(0.03, 0.15, size=4)
    room = {"left": width, "top": height, "right": width, "bottom": height}
    if keep is not None:
        x0, y0, x1, y1 = keep
        room = {"left": x0, "top": y0, "right": width - x1, "bottom": height - y1}
    inset = {}
    for side, fraction in zip(_SIDES, fractions, strict=True):
        extent = width if side in ("left", "right") else height
        # Two pixels of spare room: the field's anti-aliased edge must not touch the box.
        inset[side] = min(fraction * extent, room[side] - 2.0) if side in sides else 0.0
    cols = _edge_ramp(width, inset["left"], width - inset["right"])
    rows = _edge_ramp(height, inset["top"], height - inset["bottom"])
    return np.asarray(rows[:, None] * cols[None, :], np.float32)


def _edge_ramp(n: int, start: float, stop: float) -> np.ndarray:
    """Share of each pixel [i, i + 1) inside [start, stop); an edge under 1 px in is dropped."""
    lo = start if start >= 1.0 else -math.inf
    hi = stop if n - stop >= 1.0 else math.inf
    i = np.arange(n, dtype=np.float32)
    return np.asarray(np.clip(np.minimum(i + 1 - lo, hi - i), 0.0, 1.0), np.float32)


def _tilted_field(
    height: int, width: int, rng: np.random.Generator, keep: Box | None
) -> np.ndarray:
    """A rectangle rotated by 5-20 degrees, its bounding box 80-105 % of the image."""
    theta = math.radians(float(rng.uniform(5.0, 20.0)) * (1 if rng.random() < 0.5 else -1))
    c, s = math.cos(theta), math.sin(theta)
    cx = width / 2 * (1 + float(rng.uniform(-0.05, 0.05)))
    cy = height / 2 * (1 + float(rng.uniform(-0.05, 0.05)))
    ex, ey = (float(v) for v in rng.uniform(0.8, 1.05, size=2) * (width / 2, height / 2))
    cos2 = c * c - s * s  # solve a*c + b*|s| = ex, a*|s| + b*c = ey for the half sides a, b
    a = max((ex * c - ey * abs(s)) / cos2, 0.3 * width / 2)
    b = max((ey * c - ex * abs(s)) / cos2, 0.3 * height / 2)
    if keep is not None:
        x0, y0, x1, y1 = keep
        xs, ys = np.array([x0, x1, x1, x0]) - cx, np.array([y0, y0, y1, y1]) - cy
        a = max(a, float(np.abs(xs * c + ys * s).max()) + 2.0)
        b = max(b, float(np.abs(-xs * s + ys * c).max()) + 2.0)
    x = np.arange(width, dtype=np.float32)[None, :] + 0.5 - cx
    y = np.arange(height, dtype=np.float32)[:, None] + 0.5 - cy
    u, v = np.abs(x * c + y * s), np.abs(-x * s + y * c)
    mask = np.clip(a + 0.5 - u, 0.0, 1.0) * np.clip(b + 0.5 - v, 0.0, 1.0)
    return mask.astype(np.float32)


def electronic_shutter(img: np.ndarray, field: np.ndarray, rng: np.random.Generator) -> None:
    """Black out everything outside the field, in place, with a value in 0..0.05."""
    level = np.float32(rng.uniform(0.0, 0.05))
    inside = np.clip(field, 0.0, 1.0).astype(np.float32)
    img *= inside
    img += (1.0 - inside) * level


def burn_marker(img: np.ndarray, rng: np.random.Generator, letter: str) -> Box:
    """A lead laterality marker: a bright letter in a plastic holder near a corner or edge."""
    h, w = img.shape
    size = max(12, round(min(h, w) * float(rng.uniform(0.05, 0.1))))
    box_w = max(size, round(size * float(rng.uniform(0.75, 1.0)) * max(len(letter), 1)))
    k = _SUPER
    holder, lead = Image.new("L", (box_w * k, size * k)), Image.new("L", (box_w * k, size * k))
    radius = round(size * k * float(rng.uniform(0.0, 0.3)))
    shape = (0, 0, box_w * k - 1, size * k - 1)
    ImageDraw.Draw(holder).rounded_rectangle(shape, radius=radius, fill=255)
    if rng.random() < 0.4:  # some holders carry a metal rim
        ImageDraw.Draw(lead).rounded_rectangle(shape, radius=radius, outline=255, width=2 * k)
    font = _font(round(size * k * 0.7))
    bold = max(k, round(size * k / 14))  # cast lead letters have thick strokes
    _centred_text(ImageDraw.Draw(lead), (box_w * k / 2, size * k / 2), letter, font, bold)
    if rng.random() < 0.15:  # a marker placed face down reads mirrored
        lead = lead.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    angle = float(rng.uniform(-20.0, 20.0)) if rng.random() < 0.5 else 0.0
    layers = [
        _shrink(im.rotate(angle, Image.Resampling.BILINEAR, expand=True)) for im in (holder, lead)
    ]
    x, y = _near_border(h, w, layers[0].shape, rng)
    holder_value, holder_alpha = float(rng.uniform(0.3, 0.8)), float(rng.uniform(0.05, 0.3))
    lead_value = float(rng.uniform(0.88, 1.0))
    return _composite(
        img, x, y, [(layers[0] * holder_alpha, holder_value), (layers[1], lead_value)]
    )


_VIEWS = ("PA", "LAT", "OBL", "AP", "R", "L", "ERECT", "SUPINE", "SITTING", "RIGHT", "LEFT")


def burn_text(img: np.ndarray, rng: np.random.Generator) -> Box:
    """One to three small lines of annotation, white or near-black, near a corner."""
    h, w = img.shape
    lines = [_annotation(rng) for _ in range(int(rng.integers(1, 4)))]
    font = _font(max(8, round(h * float(rng.uniform(0.025, 0.05)))))
    lefts, tops, rights, bottoms = zip(*(font.getbbox(t) for t in lines), strict=True)
    pitch = round((max(bottoms) - min(tops)) * 1.25) + 1
    width = round(max(rights) - min(lefts)) + 2
    layer = Image.new("L", (width, pitch * len(lines)))
    draw = ImageDraw.Draw(layer)
    right_aligned = rng.random() < 0.5
    for i, (text, right) in enumerate(zip(lines, rights, strict=True)):
        x = width - 1 - right if right_aligned else -min(lefts) + 1
        draw.text((x, i * pitch - min(tops)), text, fill=255, font=font)
    alpha = np.asarray(layer, np.float32) / 255.0
    x, y = _near_corner(h, w, alpha.shape, rng)
    value = float(rng.uniform(0.85, 1.0)) if rng.random() < 0.7 else float(rng.uniform(0.0, 0.08))
    return _composite(img, x, y, [(alpha, value)])


def _annotation(rng: np.random.Generator) -> str:
    kind = int(rng.integers(4))
    if kind == 0:
        return str(_VIEWS[int(rng.integers(len(_VIEWS)))])
    if kind == 1:
        y, m, d = int(rng.integers(2005, 2025)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        return f"{y}-{m:02d}-{d:02d}" if rng.random() < 0.5 else f"{d:02d}.{m:02d}.{y}"
    if kind == 2:
        return "".join(chr(65 + int(c)) for c in rng.integers(26, size=int(rng.integers(2, 4))))
    kv, mas = int(rng.integers(45, 66)), float(rng.uniform(1.0, 8.0))
    return f"{kv} kV {mas:.1f} mAs" if rng.random() < 0.5 else f"{kv}kV {mas:.2f}mAs"


def burn_ruler(img: np.ndarray, rng: np.random.Generator) -> Box:
    """A radiopaque ruler with mm/5 mm/cm ticks and cm numbers, along a side or across."""
    h, w = img.shape
    vertical = rng.random() < 0.5
    along, other = (h, w) if vertical else (w, h)
    length = max(20, round(along * float(rng.uniform(0.4, 0.9))))
    thick = max(10, round(other * float(rng.uniform(0.04, 0.08))))
    px_per_cm = length / float(rng.integers(4, 21))
    k = _SUPER
    body, marks = Image.new("L", (length * k, thick * k)), Image.new("L", (length * k, thick * k))
    ImageDraw.Draw(body).rectangle((0, 0, length * k - 1, thick * k - 1), fill=255)
    draw = ImageDraw.Draw(marks)
    step_mm = 1 if px_per_cm >= 25 else 5  # mm ticks only where they are 2.5 px apart
    font = _font(round(thick * k * 0.35))
    cm_count = int(length / px_per_cm)
    label_px = draw.textbbox((0, 0), str(cm_count), font=font)[2] / k
    every = next((n for n in (1, 2, 5, 10) if n * px_per_cm >= 1.5 * label_px), 0)
    for mm in range(0, cm_count * 10 + 1, step_mm):
        x = round((mm * px_per_cm / 10 + 1) * k)
        tick = 0.7 if mm % 10 == 0 else 0.45 if mm % 5 == 0 else 0.25
        draw.rectangle((x, 0, x + k - 1, round(tick * thick * k)), fill=255)
        if mm % 10 == 0 and thick >= 14 and every and (mm // 10) % every == 0:
            _centred_text(draw, (x, thick * k * 0.75), str(mm // 10), font)
    layers = [_shrink(im) for im in (body, marks)]
    if vertical:
        layers = [np.ascontiguousarray(np.rot90(a)) for a in layers]
    if rng.random() < 0.7:
        x, y = _near_border(h, w, layers[0].shape, rng, edges_only=True, vertical=vertical)
    else:
        x = round(float(rng.uniform(0.2, 0.8)) * w - layers[0].shape[1] / 2)
        y = round(float(rng.uniform(0.2, 0.8)) * h - layers[0].shape[0] / 2)
    body_alpha = float(rng.uniform(0.05, 0.25))
    return _composite(
        img, x, y, [(layers[0] * body_alpha, 0.9), (layers[1], float(rng.uniform(0.85, 1.0)))]
    )


@lru_cache(maxsize=64)
def _font(size: int) -> Font:
    try:
        return ImageFont.load_default(size=max(size, 4))
    except (TypeError, OSError, ImportError):  # Pillow without FreeType: the bitmap font
        return ImageFont.load_default()


def _centred_text(
    draw: ImageDraw.ImageDraw, at: tuple[float, float], text: str, font: Font, bold: int = 0
) -> None:
    """Text centred on `at` (anchors need FreeType; the fallback bitmap font has none)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=bold)
    xy = (at[0] - (left + right) / 2, at[1] - (top + bottom) / 2)
    draw.text(xy, text, fill=255, font=font, stroke_width=bold, stroke_fill=255)


def _shrink(layer: Image.Image) -> np.ndarray:
    """A supersampled 8-bit layer as float alpha at image resolution."""
    small = layer.reduce(_SUPER)
    return np.asarray(small, np.float32) / 255.0


def _near_border(
    h: int,
    w: int,
    shape: tuple[int, ...],
    rng: np.random.Generator,
    *,
    edges_only: bool = False,
    vertical: bool | None = None,
) -> tuple[int, int]:
    """Top-left corner for a patch near a corner or the middle of an edge."""
    ph, pw = shape
    mx, my = (round(float(rng.uniform(0.02, 0.1)) * v) for v in (w, h))
    xs = (mx, (w - pw) // 2, w - pw - mx)
    ys = (my, (h - ph) // 2, h - ph - my)
    if edges_only:  # a ruler lies along one side, centred or shifted along it
        shift = round(float(rng.uniform(-0.5, 0.5)) * (w - pw if not vertical else h - ph) / 2)
        if vertical:
            return xs[0 if rng.random() < 0.5 else 2], ys[1] + shift
        return xs[1] + shift, ys[0 if rng.random() < 0.5 else 2]
    spots = [(i, j) for i in range(3) for j in range(3) if (i, j) != (1, 1)]
    i, j = spots[int(rng.integers(len(spots)))]
    jitter = (
        round(float(rng.uniform(-0.1, 0.1)) * v) if idx == 1 else 0 for v, idx in ((w, i), (h, j))
    )
    dx, dy = jitter
    return xs[i] + dx, ys[j] + dy


def _near_corner(
    h: int, w: int, shape: tuple[int, ...], rng: np.random.Generator
) -> tuple[int, int]:
    ph, pw = shape
    mx, my = (round(float(rng.uniform(0.01, 0.05)) * v) for v in (w, h))
    x = mx if rng.random() < 0.5 else w - pw - mx
    y = my if rng.random() < 0.5 else h - ph - my
    return x, y


def _composite(img: np.ndarray, x: int, y: int, layers: list[tuple[np.ndarray, float]]) -> Box:
    """Blend alpha layers of one size with the value each carries onto img at (x, y), in place."""
    ph, pw = layers[0][0].shape
    h, w = img.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + pw, w), min(y + ph, h)
    if x0 >= x1 or y0 >= y1:
        return (x0, y0, x0, y0)
    region = img[y0:y1, x0:x1]
    for alpha, value in layers:
        a = np.clip(alpha[y0 - y : y1 - y, x0 - x : x1 - x], 0.0, 1.0)
        region *= 1.0 - a
        region += a * np.float32(value)
    return (x0, y0, x1, y1)
