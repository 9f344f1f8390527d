"""Fixtures of the training tests: a tiny prepared dataset and a short run on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.train.tiny_dataset import HEIGHT, WIDTH, make_tiny_dataset
from train.data.augment import AugmentParams
from train.export import export
from train.fit import FitConfig, fit

TINY = AugmentParams(height=HEIGHT, width=WIDTH)


def tiny_fit(dataset: Path, run: Path, *, arch: str = "rx_lite_bn", seed: int = 0) -> Path:
    """Four epochs of `arch` on a tiny dataset: enough to separate its two classes."""
    config = FitConfig(dataset=str(dataset), arch=arch, epochs=4, batch_size=8, lr=3e-3,
                       workers=0, seed=seed, augment=TINY)  # fmt: skip
    fit(config, run)
    return run


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"), studies=45)


@pytest.fixture(scope="module")
def tiny_run(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_fit(tiny, tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def member_bundles(
    tiny: Path, tiny_run: Path, tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    """Two exported members of different architectures trained on the same tiny dataset."""
    root = tmp_path_factory.mktemp("members")
    other_run = tiny_fit(tiny, root / "run-slim", arch="resnet18_slim", seed=1)
    bundles = []
    for run in (tiny_run, other_run):
        bundle = root / f"bundle-{run.name}"
        export(run, bundle, name="member", version="0.0.1", synthetic=True, n_boot=50)
        bundles.append(bundle)
    return bundles


@pytest.fixture(scope="module")
def calibration_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("calibration"), studies=30, seed=5)
