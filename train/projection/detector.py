"""The detector chain: an attenuation map through quanta, a logarithm and vendor processing.

`expose` follows the physics of a digital radiography detector: the heel-shaped incident
field is attenuated by the anatomy, scatter adds a low-frequency veil, the scintillator blurs,
quanta and read noise are counted, the signal is log-transformed and auto-ranged on the
anatomy's histogram, then one vendor's processing and tone curve make the display image. Every
appearance parameter lives in a `DetectorChain`, sampled widely so that no model learns one
vendor's look.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
from scipy import ndimage

PROCESSINGS = ("log", "unsharp", "edge")
TONES = ("linear", "gamma", "s_curve")


@dataclass(frozen=True)
class DetectorChain:
    """Every appearance parameter of one exposure and its processing."""

    photons: float  # mean quanta per pixel at the open field
    electronic_noise: float  # read-noise std relative to the open-field signal
    heel_strength: float  # intensity drop across the field
    heel_angle_deg: float  # direction of the drop
    scatter_fraction: float  # scatter-to-primary ratio
    scatter_sigma_mm: float
    blur_mm: float  # detector MTF as a Gaussian sigma
    processing: str  # one of PROCESSINGS
    unsharp_sigma_mm: float
    unsharp_gain: float
    tone: str  # one of TONES
    tone_gamma: float
    s_curve_slope: float
    s_curve_center: float
    window_low_pct: float  # anatomy percentile mapped to black
    window_high_pct: float  # anatomy percentile mapped to `window_white`
    window_white: float  # headroom: display level of the high percentile, before the tone curve
    grid: bool  # anti-scatter grid lines visible
    grid_period_px: float
    grid_angle_deg: float
    grid_amplitude: float


PLAIN = DetectorChain(
    photons=2000.0, electronic_noise=0.002, heel_strength=0.0, heel_angle_deg=0.0,
    scatter_fraction=0.1, scatter_sigma_mm=40.0, blur_mm=0.1, processing="log",
    unsharp_sigma_mm=4.0, unsharp_gain=0.0, tone="linear", tone_gamma=1.0, s_curve_slope=6.0,
    s_curve_center=0.5, window_low_pct=1.0, window_high_pct=99.5, window_white=0.9, grid=False,
    grid_period_px=4.0, grid_angle_deg=0.0, grid_amplitude=0.005,
)  # fmt: skip


def sample_chain(rng: np.random.Generator, *, strength: float = 1.0) -> DetectorChain:
    """A random chain; `strength` 1 spans the full ranges, 0 gives the fixed `PLAIN` chain.

    Every call draws the same number of variates, so a strength change never shifts the
    random stream of whatever is sampled after it.
    """
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")

    def lin(lo: float, hi: float, plain: float) -> float:
        drawn = float(rng.uniform(lo, hi))
        return plain if strength == 0.0 else plain + strength * (drawn - plain)

    def log(lo: float, hi: float, plain: float) -> float:
        drawn = float(rng.uniform(math.log(lo), math.log(hi)))
        return plain if strength == 0.0 else plain * math.exp(strength * (drawn - math.log(plain)))

    def pick(options: Sequence[str], weights: Sequence[float], plain: str) -> str:
        drawn = str(options[int(rng.choice(len(options), p=weights))])
        return drawn if rng.random() < strength else plain

    p = PLAIN
    return DetectorChain(
        photons=log(150.0, 8000.0, p.photons),
        electronic_noise=log(0.0005, 0.01, p.electronic_noise),
        heel_strength=lin(0.0, 0.35, p.heel_strength),
        heel_angle_deg=lin(0.0, 360.0, p.heel_angle_deg),
        scatter_fraction=lin(0.0, 0.6, p.scatter_fraction),
        scatter_sigma_mm=lin(20.0, 80.0, p.scatter_sigma_mm),
        blur_mm=lin(0.05, 0.35, p.blur_mm),
        processing=pick(PROCESSINGS, (0.25, 0.5, 0.25), p.processing),
        unsharp_sigma_mm=log(1.0, 12.0, p.unsharp_sigma_mm),
        unsharp_gain=lin(0.0, 2.5, p.unsharp_gain),
        tone=pick(TONES, (0.3, 0.3, 0.4), p.tone),
        tone_gamma=log(0.5, 2.0, p.tone_gamma),
        s_curve_slope=lin(3.0, 12.0, p.s_curve_slope),
        s_curve_center=lin(0.3, 0.7, p.s_curve_center),
        window_low_pct=lin(0.0, 5.0, p.window_low_pct),
        window_high_pct=lin(95.0, 99.9, p.window_high_pct),
        window_white=lin(0.8, 1.0, p.window_white),
        grid=bool(rng.random() < 0.3 * strength),
        grid_period_px=lin(2.2, 9.0, p.grid_period_px),
        grid_angle_deg=90.0 * float(rng.integers(2)) if rng.random() < strength else 0.0,
        grid_amplitude=log(0.002, 0.02, p.grid_amplitude),
    )


def chain_params(chain: DetectorChain) -> dict[str, float | str | bool]:
    """The chain as a flat, rounded, JSON-ready dict (one column per field in truth.csv)."""
    out: dict[str, float | str | bool] = {}
    for f in fields(chain):
        value = getattr(chain, f.name)
        out[f.name] = float(f"{value:.4g}") if isinstance(value, float) else value
    return out


def expose(
    attenuation: np.ndarray,
    field: np.ndarray | None,
    chain: DetectorChain,
    rng: np.random.Generator,
    *,
    mm_per_px: float,
) -> np.ndarray:
    """Radiograph of an attenuation map: float32 in [0, 1], air dark, bone bright.

    `field` is the collimated, exposed area in [0, 1] (None: everywhere); outside it only a
    little scatter arrives, so it ends white, like unexposed film.
    """
    a = np.asarray(attenuation, dtype=np.float32)
    if a.ndim != 2 or not np.isfinite(a).all():
        raise ValueError(f"attenuation must be a finite 2-D map, got shape {a.shape}")
    if mm_per_px <= 0:
        raise ValueError(f"mm_per_px must be positive, got {mm_per_px}")
    if field is None:
        mask = np.ones_like(a)
    elif field.shape != a.shape:
        raise ValueError(f"field shape {field.shape} differs from attenuation {a.shape}")
    else:
        mask = np.clip(field, 0.0, 1.0).astype(np.float32)
    a = np.maximum(a, 0.0)

    primary = _heel(a.shape, chain) * mask
    primary *= np.exp(-a)
    total = primary + chain.scatter_fraction * _smooth(primary, chain.scatter_sigma_mm / mm_per_px)
    if chain.grid:
        total *= _grid_lines(a.shape, chain)
    expected = _smooth(total, chain.blur_mm / mm_per_px)
    signal = _count(expected, chain, rng)
    d = np.float32(math.log(chain.photons)) - np.log(np.maximum(signal, np.float32(0.5)))
    shown = _process(_auto_range(d, a, mask, chain), chain, mm_per_px)
    return _f32(np.clip(_tone(shown, chain), 0.0, 1.0))


def _heel(shape: tuple[int, ...], chain: DetectorChain) -> np.ndarray:
    """Incident quanta per pixel: a smooth anode-heel fall-off along `heel_angle_deg`."""
    h, w = shape
    c, s = (
        math.cos(math.radians(chain.heel_angle_deg)),
        math.sin(math.radians(chain.heel_angle_deg)),
    )
    half = 0.5 * (abs(c) * w + abs(s) * h) + 1e-6
    xs = (np.arange(w, dtype=np.float32) - (w - 1) / 2) * np.float32(c / half)
    ys = (np.arange(h, dtype=np.float32) - (h - 1) / 2) * np.float32(s / half)
    u = (1.0 + xs[None, :] + ys[:, None]) / 2  # 0 at the cathode side, 1 at the anode side
    drop = chain.heel_strength * (0.6 * u + 0.4 * u * u)  # steeper towards the anode
    return (chain.photons * (1.0 - drop)).astype(np.float32)


def _grid_lines(shape: tuple[int, ...], chain: DetectorChain) -> np.ndarray:
    """Transmission of the anti-scatter grid's lead strips: a fine periodic stripe pattern."""
    h, w = shape
    across_x = chain.grid_angle_deg % 180 == 0  # lines run vertically, stripes vary along x
    phase = np.arange(w if across_x else h, dtype=np.float32)
    phase *= np.float32(2 * math.pi / chain.grid_period_px)
    line = 1.0 - chain.grid_amplitude * (0.5 + 0.5 * np.cos(phase))
    return _f32(line[None, :] if across_x else line[:, None])


def _count(expected: np.ndarray, chain: DetectorChain, rng: np.random.Generator) -> np.ndarray:
    """Quanta plus read noise: Gaussian where counts are large, Poisson where they are few."""
    read = np.float32(chain.electronic_noise * chain.photons)
    z = rng.standard_normal(expected.shape, dtype=np.float32)
    signal = np.sqrt(expected + read * read)
    signal *= z
    signal += expected
    few = expected < 25.0
    if few.any():
        signal[few] = rng.poisson(expected[few]).astype(np.float32) + z[few] * read
    return signal


def _auto_range(d: np.ndarray, a: np.ndarray, mask: np.ndarray, chain: DetectorChain) -> np.ndarray:
    """Map the window percentiles of the exposed anatomy's log signal to 0..window_white."""
    step = max(1, round(math.sqrt(d.size / 100_000)))  # a subsample is enough for percentiles
    sd, exposed = d[::step, ::step], mask[::step, ::step] > 0.5
    values = sd[exposed & (a[::step, ::step] > 0.02)]
    if values.size < 32:
        values = sd[exposed] if exposed.sum() >= 32 else sd.ravel()
    lo, hi = np.percentile(values, [chain.window_low_pct, chain.window_high_pct])
    scale = np.float32(chain.window_white / max(float(hi - lo), 1e-3))
    # Clipped before processing: vendors find the collimation first, so its white does not
    # ring into the anatomy through the unsharp mask.
    return _f32(np.clip((d - np.float32(lo)) * scale, 0.0, 1.0))


def _process(n: np.ndarray, chain: DetectorChain, mm_per_px: float) -> np.ndarray:
    """Vendor processing on the auto-ranged log image."""
    gain = np.float32(chain.unsharp_gain)
    sigma = chain.unsharp_sigma_mm / mm_per_px
    if chain.processing == "unsharp":
        coarse, fine = _smooth(n, sigma), _smooth(n, sigma / 4)
        return _f32(n + gain * (0.6 * (n - coarse) + 0.4 * (n - fine)))
    if chain.processing == "edge":
        s = min(max(sigma / 10, 0.7), 2.5)
        lap = ndimage.laplace(ndimage.gaussian_filter(n, s, mode="nearest", truncate=3.0))
        return _f32(n - gain * np.float32(s * s) * lap)
    if chain.processing != "log":
        raise ValueError(f"unknown processing {chain.processing!r}; use one of {PROCESSINGS}")
    return n


def _tone(n: np.ndarray, chain: DetectorChain) -> np.ndarray:
    """The vendor's tone (characteristic) curve on 0..1."""
    if chain.tone == "gamma":
        return _f32(np.power(np.clip(n, 0.0, 1.0), np.float32(chain.tone_gamma)))
    if chain.tone == "s_curve":
        k, c = chain.s_curve_slope, chain.s_curve_center
        lo, hi = 1 / (1 + math.exp(k * c)), 1 / (1 + math.exp(-k * (1 - c)))
        s = 1.0 / (1.0 + np.exp(np.float32(-k) * (n - np.float32(c))))
        return _f32((s - np.float32(lo)) * np.float32(1 / (hi - lo)))
    if chain.tone != "linear":
        raise ValueError(f"unknown tone {chain.tone!r}; use one of {TONES}")
    return n


def _smooth(x: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur; wide kernels run on a block-averaged copy and are upsampled bilinearly."""
    if sigma_px < 0.3:
        return x
    if sigma_px <= 8.0:
        return _f32(ndimage.gaussian_filter(x, sigma_px, mode="nearest", truncate=3.0))
    k = int(sigma_px // 4)
    h, w = x.shape
    padded = np.pad(x, ((0, -h % k), (0, -w % k)), mode="edge")
    small = padded.reshape(padded.shape[0] // k, k, padded.shape[1] // k, k)
    small = small.mean(axis=(1, 3), dtype=np.float32)
    rest = math.sqrt(max(sigma_px**2 - (k * k - 1) / 12, k * k / 4)) / k  # the mean blurs too
    small = ndimage.gaussian_filter(small, rest, mode="nearest", truncate=3.0)
    return _upsample(small, k, h, w)


def _upsample(small: np.ndarray, k: int, h: int, w: int) -> np.ndarray:
    """Separable bilinear upsampling of block means (block centres at (i + 0.5) * k - 0.5)."""
    i0, f = _lerp_weights(small.shape[1], k, w)
    step = np.diff(small, axis=1, append=small[:, -1:])
    cols = small[:, i0] + step[:, i0] * f[None, :]  # still a small number of rows
    i0, f = _lerp_weights(cols.shape[0], k, h)
    step = np.diff(cols, axis=0, append=cols[-1:])
    out = cols[i0]
    rise = step[i0]
    rise *= f[:, None]
    out += rise
    return _f32(out)


def _lerp_weights(m: int, k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Source index and fraction towards the next one for n outputs from m block means."""
    pos = np.clip((np.arange(n, dtype=np.float32) + 0.5) / k - 0.5, 0, m - 1)
    i0 = np.minimum(pos.astype(np.intp), max(m - 2, 0))
    return i0, _f32(pos - i0)


def _f32(x: object) -> np.ndarray:
    """A float32 view of an array expression (no copy when it already is float32)."""
    return np.asarray(x, dtype=np.float32)
