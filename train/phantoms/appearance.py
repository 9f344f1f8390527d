"""Domain randomisation of the phantom renderer's finished images (`synth --randomise`).

The phantom renderer draws every image with one look: the same tone curve, the same kind of
noise, no vendor processing. A model trained on that learns the look. This step redraws the
look of a finished display-space image over wide ranges, independently per image: exposure and
contrast, gamma or an S-shaped tone curve, unsharp masking (the halo of vendor edge
enhancement), extra blur, noise of a random grain, and faint anti-scatter grid lines. The
anatomy, the geometry and the ground truth are untouched.

Every drawn parameter is returned so `truth.csv` can say what made each image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import ndimage


def randomise(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict[str, Any]]:
    """A new look for a display-space image in [0, 1] (float32); returns it and its parameters."""
    h, w = image.shape
    scale = max(h, w) / 512.0  # parameters are stated at 512 px and scaled with the image
    params: dict[str, Any] = {"renderer": "phantom"}
    out = image.astype(np.float32, copy=True)

    blur = float(rng.uniform(0.0, 1.2))
    if blur > 0.05:
        out = ndimage.gaussian_filter(out, blur * scale)
    params["blur_px"] = round(blur, 3)

    processing = str(rng.choice(["none", "unsharp", "multiscale"], p=[0.3, 0.4, 0.3]))
    gain = float(rng.uniform(0.3, 2.0))
    sigma = float(math.exp(rng.uniform(math.log(2.0), math.log(25.0))))
    if processing == "unsharp":
        out = out + gain * (out - ndimage.gaussian_filter(out, sigma * scale))
    elif processing == "multiscale":
        for level in (sigma / 4, sigma):
            out = out + 0.5 * gain * (out - ndimage.gaussian_filter(out, level * scale))
    params |= {"processing": processing, "gain": round(gain, 3), "sigma_px": round(sigma, 2)}

    low, high = np.percentile(out, [rng.uniform(0.0, 3.0), rng.uniform(97.0, 100.0)])
    contrast = float(rng.uniform(0.7, 1.3))
    offset = float(rng.uniform(-0.08, 0.08))
    out = (out - low) / max(float(high - low), 1e-6) * contrast + offset
    params |= {"contrast": round(contrast, 3), "offset": round(offset, 3)}

    tone = str(rng.choice(["linear", "gamma", "s_curve"]))
    out = np.clip(out, 0.0, 1.0)
    gamma = float(math.exp(rng.uniform(math.log(0.55), math.log(1.8))))
    slope = float(rng.uniform(4.0, 12.0))
    centre = float(rng.uniform(0.35, 0.65))
    if tone == "gamma":
        out = out**gamma
    elif tone == "s_curve":
        lo, hi = (1.0 / (1.0 + math.exp(-slope * (v - centre))) for v in (0.0, 1.0))
        out = (1.0 / (1.0 + np.exp(-slope * (out - centre))) - lo) / (hi - lo)
    params |= {
        "tone": tone,
        "gamma": round(gamma, 3),
        "s_slope": round(slope, 2),
        "s_centre": round(centre, 3),
    }

    noise = float(math.exp(rng.uniform(math.log(0.002), math.log(0.05))))
    grain = float(rng.uniform(0.0, 1.5))
    field = rng.standard_normal((h, w)).astype(np.float32)
    if grain > 0.1:
        field = ndimage.gaussian_filter(field, grain * scale)
        field /= float(field.std()) + 1e-6
    out = out + noise * field
    params |= {"noise": round(noise, 4), "grain_px": round(grain, 3)}

    grid = bool(rng.random() < 0.3)
    params["grid"] = grid
    if grid:
        period = float(rng.uniform(2.2, 8.0))
        amplitude = float(rng.uniform(0.003, 0.02))
        axis = np.arange(w if rng.random() < 0.5 else h, dtype=np.float32)
        stripes = amplitude * np.sin(2 * np.pi * axis / period)
        out = out + (stripes[None, :] if axis.size == w else stripes[:, None])
        params |= {"grid_period_px": round(period, 2), "grid_amplitude": round(amplitude, 4)}
    result: np.ndarray = np.clip(out, 0.0, 1.0).astype(np.float32)
    return result, params
