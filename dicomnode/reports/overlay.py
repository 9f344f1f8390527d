"""Heat map and banner rendering for the Secondary Captures: pure array work, no DICOM."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from matplotlib import colormaps, font_manager
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from pipeline.preprocess.study import View

MAX_SIDE = 2048
"""Longest side of a Secondary Capture; larger sources are downscaled (aspect kept)."""
HEAT_FLOOR = 0.2
"""Heat at or below this is not painted: low Grad-CAM values are noise, not explanation."""
MAX_ALPHA = 0.45
COLORMAP = "jet"
BANNER_FRACTION = 0.06
YELLOW = (255, 220, 0)
WHITE = (255, 255, 255)


def output_shape(shape: tuple[int, int], max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(rows, columns) of the rendered image: `shape` downscaled so its long side is at most
    `max_side`."""
    rows, columns = shape
    factor = min(1.0, max_side / max(rows, columns))
    return max(1, round(rows * factor)), max(1, round(columns * factor))


def grey_to_rgb(pixels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Display pixels in [0, 1] as 8-bit RGB, resized to `shape` (rows, columns)."""
    grey = np.clip(np.asarray(pixels, dtype=np.float32), 0.0, 1.0)
    image = Image.fromarray(np.rint(grey * 255.0).astype(np.uint8))
    if (image.height, image.width) != shape:
        image = image.resize((shape[1], shape[0]), Image.Resampling.LANCZOS)
    return np.repeat(np.asarray(image)[..., None], 3, axis=2)


def heat_on_grid(
    views: Sequence[tuple[View, np.ndarray]],
    source_shape: tuple[int, int],
    shape: tuple[int, int],
) -> np.ndarray:
    """Each view's heat map (model-input coordinates) sampled on an output grid of `shape` that
    covers the source image of `source_shape`; the maximum where views overlap, 0 outside."""
    rows, columns = shape
    sy, sx = source_shape[0] / rows, source_shape[1] / columns
    # Pixel centres of the output grid, in source pixels (pixel-centre convention).
    ys, xs = np.mgrid[0:rows, 0:columns].astype(np.float64)
    points = np.stack([(xs.ravel() + 0.5) * sx - 0.5, (ys.ravel() + 0.5) * sy - 0.5], axis=1)
    heat = np.zeros(rows * columns, dtype=np.float32)
    for view, heatmap in views:
        at = view.from_source(points)
        sampled = ndimage.map_coordinates(
            np.asarray(heatmap, dtype=np.float32),
            [at[:, 1], at[:, 0]],
            order=1,
            mode="constant",
            cval=0.0,
        )
        np.maximum(heat, sampled, out=heat)
    return heat.reshape(rows, columns)


def blend_heat(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """Alpha-blend a colour-mapped heat map onto `rgb` where heat exceeds HEAT_FLOOR."""
    heat = np.clip(heat, 0.0, 1.0)
    colours = colormaps[COLORMAP](heat)[..., :3] * 255.0
    alpha = np.where(heat > HEAT_FLOOR, MAX_ALPHA * heat, 0.0)[..., None]
    blended = rgb.astype(np.float64) * (1.0 - alpha) + colours * alpha
    out: np.ndarray = np.clip(np.rint(blended), 0, 255).astype(np.uint8)
    return out


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def _fitting_font(text: str, size: int, width: int) -> ImageFont.FreeTypeFont:
    """The largest font up to `size` (at least 8 px) in which `text` fits `width` pixels."""
    while size > 8 and _font(size).getlength(text) > width:
        size -= 1
    return _font(size)


def draw_banner(rgb: np.ndarray, headline: str, lines: Sequence[str]) -> np.ndarray:
    """`rgb` below a black strip added above it, with `headline` in yellow and `lines` in white.

    The strip is added, not painted over the image, so it never hides anatomy (fingers lie at the
    top of a wrist radiograph); the image's own rows follow it unchanged. The font scales with
    the image (about 6 % of its height for the strip) and shrinks further only where a line would
    not fit the width; the strip grows to hold every line.
    """
    height, width = rgb.shape[:2]
    margin = max(2, width // 100)
    size = max(10, round(min(height * BANNER_FRACTION / 2.4, width / 30)))
    fonts = [_fitting_font(headline, round(size * 1.2), width - 2 * margin)]
    fonts += [_fitting_font(line, size, width - 2 * margin) for line in lines]
    steps = [round(font.size * 1.2) for font in fonts]
    strip = np.zeros((sum(steps) + 2 * margin, width, 3), dtype=np.uint8)
    image = Image.fromarray(strip)
    draw = ImageDraw.Draw(image)
    y = margin
    for text, font, step, colour in zip(
        [headline, *lines], fonts, steps, [YELLOW] + [WHITE] * len(lines), strict=True
    ):
        draw.text((margin, y), text, font=font, fill=colour)
        y += step
    return np.concatenate([np.asarray(image), np.asarray(rgb, dtype=np.uint8)], axis=0)
