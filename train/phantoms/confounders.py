"""Everything in a synthetic radiograph that is not a wrist: burnt-in markers, rulers,
collimation bands, dust specks, the photon/detector effects applied to the finished image, and
the non-wrist decoy bodies (chest, pelvis, skull) that a wrist filter must reject.

All functions work in display space (floats in [0, 1], background dark) and draw their
randomness from the generator they are given.
"""

from __future__ import annotations

import itertools
import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from train.phantoms.shapes import Placement, blob, ellipse_bone, soft_tube, tube


@lru_cache(maxsize=4)
def _glyph(letter: str) -> np.ndarray:
    """The letter rendered large once, as a float mask in [0, 1], cropped to its ink."""
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.load_default(size=96)
    except (TypeError, OSError, ImportError):  # old Pillow / no FreeType: bitmap fallback
        font = ImageFont.load_default()
    canvas = Image.new("L", (160, 160), 0)
    ImageDraw.Draw(canvas).text((20, 10), letter, fill=255, font=font)
    a = np.asarray(canvas, dtype=np.float32) / 255.0
    ys, xs = np.nonzero(a > 0.05)
    return a[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def draw_marker(img: np.ndarray, rng: np.random.Generator, letter: str) -> None:
    """Burn a laterality letter (with its lead-marker box) into a random corner, in place."""
    h, w = img.shape
    size = max(round(rng.uniform(0.03, 0.06) * max(h, w)), 7)
    g = _glyph(letter)
    gw = max(round(size * g.shape[1] / g.shape[0]), 4)
    mask = (
        np.asarray(
            Image.fromarray((g * 255).astype(np.uint8)).resize(
                (gw, size), Image.Resampling.BILINEAR
            ),
            dtype=np.float32,
        )
        / 255.0
    )
    pad = max(size // 5, 2)
    bh, bw = size + 2 * pad, gw + 2 * pad
    margin = int(rng.uniform(0.02, 0.06) * min(h, w))
    y0 = margin if rng.random() < 0.5 else h - margin - bh
    x0 = margin if rng.random() < 0.5 else w - margin - bw
    if y0 < 0 or x0 < 0 or y0 + bh > h or x0 + bw > w:
        return
    box = img[y0 : y0 + bh, x0 : x0 + bw]
    box[...] = np.maximum(box, rng.uniform(0.15, 0.3))  # faint plastic holder
    inner = box[pad : pad + size, pad : pad + gw]
    inner[...] = inner + (rng.uniform(0.92, 0.98) - inner) * mask


def draw_ruler(img: np.ndarray, rng: np.random.Generator) -> None:
    """A radiopaque ruler strip with minor/major tick marks along one random edge, in place."""
    along_rows = rng.random() < 0.5  # ruler runs along a vertical edge
    work = img if along_rows else img.T
    n, m = work.shape
    width = max(int(rng.uniform(0.025, 0.045) * m), 5)
    off = int(rng.uniform(0.0, 0.04) * m)
    c0 = off if rng.random() < 0.5 else m - off - width
    strip = work[:, c0 : c0 + width]
    strip[...] = np.maximum(strip, rng.uniform(0.18, 0.3))
    step = max(rng.uniform(0.012, 0.02) * n, 3.0)
    start = int(rng.uniform(0.05, 0.15) * n)
    stop = int(rng.uniform(0.85, 0.95) * n)
    thick = max(int(step / 3), 1)
    val = rng.uniform(0.85, 0.97)
    for k, r in enumerate(np.arange(start, stop, step).astype(int)):
        tick = width if k % 5 == 0 else width // 2
        strip[r : r + thick, :tick] = val


def draw_specks(img: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Tiny bright (dust on the plate) or dark (dead pixel clusters) dots, in place."""
    h, w = img.shape
    for _ in range(count):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        r = rng.uniform(0.6, 1.8) * max(h, w) / 512
        delta = rng.uniform(0.3, 0.6) * (1 if rng.random() < 0.6 else -1)
        y0, y1 = max(int(cy - r - 1), 0), min(int(cy + r + 2), h)
        x0, x1 = max(int(cx - r - 1), 0), min(int(cx + r + 2), w)
        yy, xx = np.ogrid[y0:y1, x0:x1]
        d2 = ((yy + 0.5 - cy) ** 2 + (xx + 0.5 - cx) ** 2) / (r * r)
        img[y0:y1, x0:x1] += delta * np.clip(1.5 - d2, 0, 1).astype(np.float32)


def apply_frame(img: np.ndarray, rng: np.random.Generator, kind: str) -> None:
    """Collimation/shutter band (3-12% of the side) on 2-4 sides: black ~0 or white ~1, in place."""
    h, w = img.shape
    n_sides = int(rng.integers(2, 5))
    sides = rng.permutation(4)[:n_sides]
    val = rng.uniform(0.0, 0.02) if kind == "black" else rng.uniform(0.97, 1.0)
    for side in sides:
        frac = rng.uniform(0.03, 0.12)
        if side == 0:
            img[: max(int(frac * h), 1)] = val
        elif side == 1:
            img[h - max(int(frac * h), 1) :] = val
        elif side == 2:
            img[:, : max(int(frac * w), 1)] = val
        else:
            img[:, w - max(int(frac * w), 1) :] = val


def contrast_heel(
    img: np.ndarray, rng: np.random.Generator, background: float, exposure: float, heel: float
) -> np.ndarray:
    """Exposure scales contrast around the background level; the heel effect is a linear ramp."""
    out = background + (img - background) * np.float32(exposure)
    if heel > 0:
        h, w = img.shape
        direction = int(rng.integers(4))
        n = h if direction < 2 else w
        ramp = np.linspace(-0.5, 0.5, n, dtype=np.float32)
        if direction % 2:
            ramp = ramp[::-1]
        ramp = ramp[:, None] if direction < 2 else ramp[None, :]
        out = out * (1 + np.float32(heel) * ramp)
    return out


def add_noise(img: np.ndarray, rng: np.random.Generator, std: float) -> np.ndarray:
    """Additive gaussian noise, stronger in dark (low-dose) regions as with quantum noise."""
    gain = np.float32(std) * (1.4 - 0.8 * np.clip(img, 0, 1))
    out: np.ndarray = img + gain * rng.standard_normal(img.shape, dtype=np.float32)
    return out


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian unsharpness (sigma in pixels of the array given)."""
    if sigma < 0.05:
        return img
    out: np.ndarray = ndimage.gaussian_filter(img, sigma, mode="nearest")
    return out


# ---------------------------------------------------------------------------------------------
# Non-wrist decoys (e.g. a chest wrongly tagged as ARM). Frame: u spans [-1, 1] across the
# width, v points up.


def decoy_density(part: str, h: int, w: int) -> np.ndarray:
    """Density map of a chest, pelvis or skull: wide, symmetric, filling the frame."""
    pl = Placement.make((w - 1) / 2, (h - 1) / 2, 0.0, flip=False, mirror=False, scale=w / 2)
    dens = np.zeros((h, w), np.float32)
    tis = np.zeros((h, w), np.float32)
    ar = h / w  # v extends over [-ar, ar]
    if part == "chest":
        ribs = np.zeros_like(dens)  # max-union so segment joints do not double up
        soft_tube(tis, pl, (0.0, -3 * ar), (0.0, 3 * ar), 0.93, 0.93, 1.3)
        for s in (-1.0, 1.0):
            blob(tis, pl, (s * 0.42, 0.05 * ar), 0.34, 0.66 * ar, s * 4.0, -1.1)
            for k in range(10):  # posterior ribs: arch out from the spine, then fall laterally
                vk = 0.6 * ar - k * 0.12 * ar
                xs = np.linspace(0.08, 0.88, 9)
                pts = [
                    (s * x, vk + 0.09 * math.sin(math.pi * (x - 0.08) / 0.85) - 0.15 * x)
                    for x in xs
                ]
                for p, q in itertools.pairwise(pts):
                    soft_tube(ribs, pl, p, q, 0.02, 0.02, 0.3)
            tube(
                dens,
                pl,
                (s * 0.08, 0.72 * ar),
                (s * 0.55, 0.8 * ar),
                0.03,
                0.025,
                cortex=0.3,
                wc=1.8,
                wm=0.3,
            )
        dens += ribs
        blob(tis, pl, (0.12, -0.3 * ar), 0.3, 0.27 * ar, 0.0, 0.55)
        tube(dens, pl, (0.0, -3 * ar), (0.0, 3 * ar), 0.07, 0.07, cortex=0.3, wc=1.6, wm=0.6)
    elif part == "pelvis":
        soft_tube(tis, pl, (-3.0, 0.0), (3.0, 0.0), 1.4 * ar, 1.4 * ar, 1.2)
        for s in (-1.0, 1.0):
            ellipse_bone(
                dens,
                pl,
                (s * 0.48, 0.3 * ar),
                0.36,
                0.34 * ar,
                s * 25.0,
                cortex=0.1,
                wc=2.2,
                wm=0.45,
            )
            ellipse_bone(
                dens, pl, (s * 0.45, -0.32 * ar), 0.11, 0.11, 0.0, cortex=0.2, wc=2.4, wm=0.6
            )
            tube(
                dens,
                pl,
                (s * 0.45, -0.32 * ar),
                (s * 0.62, -0.5 * ar),
                0.07,
                0.07,
                cortex=0.25,
                wc=2.0,
                wm=0.4,
            )
            tube(
                dens,
                pl,
                (s * 0.62, -0.45 * ar),
                (s * 0.6, -1.3 * ar),
                0.1,
                0.09,
                cortex=0.25,
                wc=2.5,
                wm=0.3,
            )
            blob(dens, pl, (s * 0.22, -0.45 * ar), 0.08, 0.1 * ar, 0.0, -0.3)
        ellipse_bone(dens, pl, (0.0, -0.2 * ar), 0.36, 0.3 * ar, 0.0, cortex=0.08, wc=2.6, wm=0.05)
        ellipse_bone(dens, pl, (0.0, 0.1 * ar), 0.13, 0.25 * ar, 0.0, cortex=0.2, wc=1.5, wm=0.6)
        tube(dens, pl, (0.0, 0.35 * ar), (0.0, 2.0 * ar), 0.1, 0.1, cortex=0.3, wc=1.8, wm=0.6)
    else:  # skull
        b = min(0.95 * ar, 1.05)
        blob(tis, pl, (0.0, 0.0), 0.85, b, 0.0, 1.4)
        ellipse_bone(dens, pl, (0.0, 0.0), 0.85, b, 0.0, cortex=0.08, wc=3.2, wm=0.5)
        for s in (-1.0, 1.0):
            blob(dens, pl, (s * 0.3, -0.15 * b), 0.17, 0.14 * b, 0.0, -0.35)
        blob(dens, pl, (0.0, -0.35 * b), 0.09, 0.12 * b, 0.0, -0.25)
        for s in (-1.0, 1.0):  # petrous ridges
            tube(
                dens,
                pl,
                (s * 0.7, -0.25 * b),
                (s * 0.15, -0.45 * b),
                0.035,
                0.025,
                cortex=0.3,
                wc=1.5,
                wm=0.5,
            )
    return dens + tis
