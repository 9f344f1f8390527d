"""The projection renderer's detector chain: physics order, processing and randomisation."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from train.projection.detector import (
    PLAIN,
    PROCESSINGS,
    TONES,
    DetectorChain,
    chain_params,
    expose,
    sample_chain,
)

MM = 0.3  # mm per pixel of the test images
STEPS = (0.0, 0.5, 1.0, 1.5, 2.0)
STEP_W = 40


def wedge(height: int = 128, steps: tuple[float, ...] = STEPS) -> np.ndarray:
    """A step wedge: columns of constant attenuation, the first one air."""
    return np.repeat(np.asarray(steps, np.float32), STEP_W)[None, :].repeat(height, axis=0)


def step_means(img: np.ndarray, n: int = len(STEPS)) -> np.ndarray:
    """Mean display value of each wedge step, away from the step edges."""
    return np.array([img[8:-8, i * STEP_W + 10 : (i + 1) * STEP_W - 10].mean() for i in range(n)])


def run(
    a: np.ndarray, chain: DetectorChain, seed: int = 1, field: np.ndarray | None = None
) -> np.ndarray:
    return expose(a, field, chain, np.random.default_rng(seed), mm_per_px=MM)


def test_strength_zero_is_the_fixed_plain_chain() -> None:
    for seed in range(5):
        assert sample_chain(np.random.default_rng(seed), strength=0.0) == PLAIN
    with pytest.raises(ValueError, match="strength"):
        sample_chain(np.random.default_rng(0), strength=1.5)


def test_thicker_is_brighter_on_a_step_wedge_and_air_is_dark() -> None:
    means = step_means(run(wedge(), PLAIN))
    assert np.all(np.diff(means) > 0.02), means
    assert means[0] < 0.03  # air: direct exposure ends near black
    assert means[2] > means[0] + 0.2  # soft tissue clearly above air
    assert means[-1] < 0.98  # the window keeps headroom: the thickest step is not clipped


def test_output_is_float32_finite_in_unit_range_for_random_chains() -> None:
    a = wedge()
    field = np.zeros_like(a)
    field[10:-10, 15:-15] = 1.0
    for seed in range(25):
        chain = sample_chain(np.random.default_rng(seed))
        img = run(a, chain, seed, field if seed % 2 else None)
        assert img.dtype == np.float32 and img.shape == a.shape
        assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0


def test_same_seed_gives_identical_images_and_another_seed_other_noise() -> None:
    chain = sample_chain(np.random.default_rng(3))
    a = wedge()
    assert np.array_equal(run(a, chain, 7), run(a, chain, 7))
    assert not np.array_equal(run(a, chain, 7), run(a, chain, 8))


def test_more_photons_means_less_noise() -> None:
    a = wedge()
    flat = np.s_[10:-10, 2 * STEP_W + 5 : 3 * STEP_W - 5]  # the A = 1 step
    stds = [run(a, dataclasses.replace(PLAIN, photons=q))[flat].std() for q in (300.0, 6000.0)]
    assert stds[1] < 0.4 * stds[0], stds  # sqrt(20) ~ 4.5x fewer relative fluctuations


def test_noise_is_quantum_limited_behind_each_step() -> None:
    """Display noise follows Poisson statistics: std of log signal = 1 / sqrt(quanta)."""
    chain = dataclasses.replace(PLAIN, scatter_fraction=0.0, electronic_noise=0.0005)
    img = run(wedge(height=256), chain)
    means = step_means(img)
    scale = (means[4] - means[1]) / (STEPS[4] - STEPS[1])  # display units per unit of A
    for i in range(1, len(STEPS)):
        flat = img[8:-8, i * STEP_W + 10 : (i + 1) * STEP_W - 10]
        expected = scale / np.sqrt(chain.photons * np.exp(-STEPS[i]))
        assert flat.std() == pytest.approx(expected, rel=0.2), STEPS[i]


def test_scatter_lowers_the_contrast_of_thick_steps() -> None:
    a = wedge(steps=(*STEPS, 0.0))  # air on both sides: scatter from it veils the thick steps

    def thick_to_thin(fraction: float) -> float:
        m = step_means(run(a, dataclasses.replace(PLAIN, scatter_fraction=fraction)))
        return float((m[4] - m[3]) / (m[2] - m[1]))  # 2.0 vs 1.5 relative to 1.0 vs 0.5

    clean, veiled = thick_to_thin(0.0), thick_to_thin(0.6)
    assert clean > 0.8  # without scatter, equal steps in A give near-equal steps in log signal
    assert veiled < 0.8 * clean, (clean, veiled)


def test_unsharp_and_edge_processing_overshoot_at_a_step() -> None:
    a = np.full((96, 160), 0.5, np.float32)
    a[:, 80:] = 1.5
    quiet = dataclasses.replace(PLAIN, photons=8000.0, electronic_noise=0.0005)

    def overshoot(chain: DetectorChain) -> float:
        profile = run(a, chain).mean(axis=0)
        return float(profile[80:90].max() - profile[120:150].mean())

    plain = overshoot(quiet)
    sharp = overshoot(dataclasses.replace(quiet, processing="unsharp", unsharp_gain=2.0))
    edge = overshoot(dataclasses.replace(quiet, processing="edge", unsharp_gain=2.0))
    assert plain < 0.02
    assert sharp > plain + 0.04, (plain, sharp)
    assert edge > plain + 0.02, (plain, edge)


def test_tone_curves_change_midtones_but_keep_the_order() -> None:
    base = step_means(run(wedge(), PLAIN))
    for chain in (
        dataclasses.replace(PLAIN, tone="gamma", tone_gamma=0.5),
        dataclasses.replace(PLAIN, tone="s_curve", s_curve_slope=10.0),
    ):
        means = step_means(run(wedge(), chain))
        assert np.all(np.diff(means) > 0.0)
        assert np.abs(means - base).max() > 0.05


def test_heel_effect_brightens_the_anode_side() -> None:
    a = np.ones((64, 200), np.float32)
    img = run(a, dataclasses.replace(PLAIN, heel_strength=0.35, heel_angle_deg=0.0))
    left, right = img[:, 5:40].mean(), img[:, -40:-5].mean()
    assert right > left + 0.1  # fewer quanta on the anode side: more log signal, brighter


def test_grid_lines_show_as_stripes_of_the_grid_period() -> None:
    a = np.ones((128, 128), np.float32)
    chain = dataclasses.replace(PLAIN, grid=True, grid_period_px=4.0, grid_amplitude=0.02)
    profile = run(a, chain).mean(axis=0)
    spectrum = np.abs(np.fft.rfft(profile - profile.mean()))
    assert int(np.argmax(spectrum)) == 128 // 4
    rows = run(a, dataclasses.replace(chain, grid_angle_deg=90.0)).mean(axis=1)
    assert int(np.argmax(np.abs(np.fft.rfft(rows - rows.mean())))) == 128 // 4


def test_unexposed_region_outside_the_field_is_white() -> None:
    yy, xx = np.mgrid[0:160, 0:160]
    a = (1.2 * np.clip(1 - ((xx - 80) / 40.0) ** 2 - ((yy - 80) / 60.0) ** 2, 0, None)) ** 0.5
    field = np.zeros((160, 160), np.float32)
    field[20:-20, 20:-20] = 1.0
    img = run(a.astype(np.float32), dataclasses.replace(PLAIN, scatter_fraction=0.5), field=field)
    outside = np.ones_like(field, dtype=bool)
    outside[10:-10, 10:-10] = False  # beyond the scatter that leaks past the edge
    air = (field > 0) & (a == 0)
    assert img[outside].mean() > 0.9
    assert img[outside].mean() > img[air].mean() + 0.8


def test_chain_params_is_json_ready_with_every_field() -> None:
    chain = sample_chain(np.random.default_rng(11))
    params = chain_params(chain)
    assert set(params) == {f.name for f in dataclasses.fields(DetectorChain)}
    assert json.loads(json.dumps(params)) == params
    assert params["photons"] == pytest.approx(chain.photons, rel=1e-3)


def test_sample_chain_respects_its_ranges() -> None:
    rng = np.random.default_rng(2024)
    chains = [sample_chain(rng) for _ in range(200)]
    ranges = {
        "photons": (150.0, 8000.0), "electronic_noise": (0.0005, 0.01),
        "heel_strength": (0.0, 0.35), "heel_angle_deg": (0.0, 360.0),
        "scatter_fraction": (0.0, 0.6), "scatter_sigma_mm": (20.0, 80.0),
        "blur_mm": (0.05, 0.35), "unsharp_sigma_mm": (1.0, 12.0), "unsharp_gain": (0.0, 2.5),
        "tone_gamma": (0.5, 2.0), "s_curve_slope": (3.0, 12.0), "s_curve_center": (0.3, 0.7),
        "window_low_pct": (0.0, 5.0), "window_high_pct": (95.0, 99.9),
        "window_white": (0.8, 1.0), "grid_period_px": (2.2, 9.0),
        "grid_amplitude": (0.002, 0.02),
    }  # fmt: skip
    for name, (lo, hi) in ranges.items():
        values = np.array([getattr(c, name) for c in chains])
        assert values.min() >= lo * (1 - 1e-9) and values.max() <= hi * (1 + 1e-9), name
        assert values.max() - values.min() > 0.5 * (hi - lo), name  # sampled widely
    assert {c.processing for c in chains} == set(PROCESSINGS)
    assert {c.tone for c in chains} == set(TONES)
    assert {c.grid for c in chains} == {True, False}
    assert {c.grid_angle_deg for c in chains} == {0.0, 90.0}


def test_rejects_bad_inputs_with_a_message() -> None:
    with pytest.raises(ValueError, match="field shape"):
        expose(wedge(), np.ones((3, 3)), PLAIN, np.random.default_rng(0), mm_per_px=MM)
    with pytest.raises(ValueError, match="mm_per_px"):
        expose(wedge(), None, PLAIN, np.random.default_rng(0), mm_per_px=0.0)
    with pytest.raises(ValueError, match="processing"):
        run(wedge(), dataclasses.replace(PLAIN, processing="magic"))
