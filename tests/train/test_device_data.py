"""Device-resident training data (`fit --preload`) and the learning-rate schedule."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from pipeline.models import build_model
from tests.train.tiny_dataset import HEIGHT, WIDTH
from train.data.augment import AugmentParams
from train.data.datasets import read_views
from train.data.device_data import (
    CropWindows,
    DeviceViews,
    augment_on_device,
    crop_resize,
    predict_device_views,
    random_windows,
)
from train.fit import FitConfig, fit, learning_rate_schedule, predict_views

TINY = AugmentParams(height=HEIGHT, width=WIDTH, mean=0.32, std=0.12)
CPU = torch.device("cpu")


def window(top: int, left: int, height: int, width: int, mirror: float) -> CropWindows:
    def one(value: float) -> torch.Tensor:
        return torch.tensor([float(value)])

    return CropWindows(one(top), one(left), one(height), one(width), one(mirror))


@pytest.mark.parametrize("mirror", [1.0, -1.0])
def test_crop_resize_matches_torchvision_resized_crop(mirror: float) -> None:
    torch.manual_seed(0)
    image = torch.rand(1, 1, 60, 40)
    out = crop_resize(image, window(5, 3, 54, 36, mirror))[0]
    expected = TF.resized_crop(image[0], 5, 3, 54, 36, [60, 40], antialias=True)
    if mirror < 0:
        expected = TF.horizontal_flip(expected)
    # Equal inside; the outermost pixels differ (grid_sample reads the pixel beyond the crop).
    assert torch.allclose(out[:, 1:-1, 1:-1], expected[:, 1:-1, 1:-1], atol=1e-5)
    assert not torch.allclose(out, crop_resize(image, window(0, 0, 54, 36, mirror))[0])


def test_full_window_is_the_identity() -> None:
    images = torch.randint(0, 256, (3, 1, 20, 14), dtype=torch.uint8)
    out = crop_resize(images, window(0, 0, 20, 14, 1.0))
    assert torch.allclose(out, images.float() / 255, atol=1e-6)


def test_random_windows_stay_inside_and_follow_the_preset() -> None:
    generator = torch.Generator().manual_seed(1)
    params = replace(TINY, crop_min=0.9, flip=0.5)
    w = random_windows(4000, 512, 341, params, generator)
    assert (w.top >= 0).all() and (w.left >= 0).all()
    assert (w.top + w.height <= 512).all() and (w.left + w.width <= 341).all()
    assert w.height.min() >= round(0.9 * 512) and w.height.max() == 512
    assert 0.45 < float((w.mirror < 0).float().mean()) < 0.55
    # Crops are placed anywhere the window fits, not only at the origin.
    assert len(set(w.top.tolist())) > 40
    again = random_windows(4000, 512, 341, params, torch.Generator().manual_seed(1))
    assert torch.equal(w.top, again.top)  # seeded: an epoch's augmentation is reproducible


def test_augment_on_device_normalises_and_inverts() -> None:
    images = torch.full((64, 1, 16, 12), 51, dtype=torch.uint8)  # 0.2 everywhere
    plain = augment_on_device(images, TINY, torch.Generator().manual_seed(0))
    assert plain.shape == (64, 1, 16, 12)
    assert torch.allclose(plain, torch.full_like(plain, (0.2 - 0.32) / 0.12), atol=1e-5)
    inverted = augment_on_device(images, replace(TINY, invert=True), torch.Generator())
    means = inverted.mean(dim=(1, 2, 3))
    high = torch.isclose(means, torch.tensor((0.8 - 0.32) / 0.12), atol=1e-4)
    low = torch.isclose(means, torch.tensor((0.2 - 0.32) / 0.12), atol=1e-4)
    assert (high | low).all() and high.any() and low.any()


def test_device_views_predict_like_the_dataloader_path(tiny: Path) -> None:
    rows = read_views(tiny, ("val",))
    views = DeviceViews(rows, TINY, CPU, threads=2)
    assert views.images.dtype == torch.uint8 and views.images.shape == (len(rows), 1, 64, 48)
    assert views.labels.tolist() == [float(r.label) for r in rows]
    torch.manual_seed(0)
    model = build_model(arch="rx_lite_bn").eval()
    expected = predict_views(model, rows, TINY, CPU)
    assert np.allclose(predict_device_views(model, views, TINY, batch_size=3), expected, atol=1e-4)
    order = [4, 0, 2]
    batches = list(views.batches(order, batch_size=2, params=TINY, generator=torch.Generator()))
    assert [len(labels) for _, labels in batches] == [2, 1]
    assert torch.cat([labels for _, labels in batches]).tolist() == [rows[i].label for i in order]


def test_fit_with_preload_and_cosine_schedule_learns(tiny: Path, tmp_path: Path) -> None:
    config = FitConfig(dataset=str(tiny), arch="rx_lite_bn", epochs=4, batch_size=8, lr=3e-3,
                       workers=0, augment=TINY, preload=True, schedule="cosine",
                       warmup_epochs=1)  # fmt: skip
    fit(config, tmp_path / "run")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert max(r["val_auc_study"] for r in rows) > 0.8
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-9)  # cosine ends at zero
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["preload"] is True and saved["schedule"] == "cosine"


def test_learning_rate_schedule_warms_up_then_decays() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimiser = torch.optim.Adam([parameter], lr=1.0)
    config = FitConfig(dataset="-", arch="rx_lite", epochs=5, schedule="cosine", warmup_epochs=1)
    scheduler = learning_rate_schedule(optimiser, config, steps_per_epoch=4)
    rates = []
    for _ in range(20):
        rates.append(scheduler.get_last_lr()[0])
        optimiser.step()
        scheduler.step()
    assert rates[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert rates[4] == pytest.approx(1.0) and rates[-1] < 0.02
    assert all(a >= b for a, b in pairwise(rates[3:]))
    constant = FitConfig(dataset="-", arch="rx_lite", epochs=5)
    flat = learning_rate_schedule(torch.optim.Adam([parameter], lr=1.0), constant, 4)
    assert flat.get_last_lr() == [1.0]


def test_fit_config_refuses_bad_combinations() -> None:
    with pytest.raises(ValueError, match="schedule"):
        FitConfig(dataset="-", arch="rx_lite", schedule="linear")
    with pytest.raises(ValueError, match="warmup"):
        FitConfig(dataset="-", arch="rx_lite", epochs=2, warmup_epochs=2)
    with pytest.raises(ValueError, match="preload"):
        FitConfig(dataset="-", arch="aggregator", preload=True)


def test_git_commit_marks_uncommitted_changes(tmp_path: Path) -> None:
    from train.fit import git_commit_of_code

    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    assert git_commit_of_code(tmp_path) == "unknown"  # not a repository
    git("init", "-q")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", "code.py")
    git("-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-q", "-m", "c")
    clean = git_commit_of_code(tmp_path)
    assert len(clean) == 40 and "+" not in clean
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit_of_code(tmp_path) == clean + "+dirty"
