"""Test-time flip averaging (pipeline.models.FlipAveraged): its logit and its Grad-CAM map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.gradcam import grad_cam, grad_cam_batch
from pipeline.models import (
    FlipAveraged,
    build_model,
    build_view_model,
    with_test_time_flip,
    without_test_time_flip,
)
from tests.pipeline.models.test_gradcam import IdentityCamModel, bright_square_image


@pytest.mark.parametrize("arch", ["rx_lite_bn", "ensemble:rx_lite_bn+resnet18_slim"])
def test_logit_is_the_mean_over_the_view_and_its_mirror_image(arch: str) -> None:
    torch.manual_seed(1)
    model = build_view_model(arch=arch).eval()
    flipped = with_test_time_flip(model, True)
    assert isinstance(flipped, FlipAveraged) and without_test_time_flip(flipped) is model
    assert with_test_time_flip(flipped, True) is flipped  # never wrapped twice
    assert with_test_time_flip(model, False) is model and without_test_time_flip(model) is model
    x = torch.randn(3, 1, 64, 48)
    mirrored = torch.flip(x, dims=(-1,))
    with torch.no_grad():
        plain, on_mirror = model(x), model(mirrored)
        assert not torch.allclose(plain, on_mirror)  # the model itself is not symmetric
        torch.testing.assert_close(flipped(x), (plain + on_mirror) / 2)
        torch.testing.assert_close(flipped(mirrored), flipped(x))
    # The wrapper holds no weights of its own: the bundle's weights file is the plain model's.
    assert {k.removeprefix("model.") for k in flipped.state_dict()} == set(model.state_dict())


def test_heat_map_is_mirrored_back_into_the_view() -> None:
    # The inner map of the mirror image lies at the mirrored place; averaged without mirroring
    # it back, the map would show a second square at columns 5-11.
    model = FlipAveraged(IdentityCamModel().eval())
    logit, heatmap = grad_cam(model, bright_square_image())
    assert heatmap.shape == (40, 30) and heatmap.max() == pytest.approx(1.0)
    np.testing.assert_allclose(heatmap[6:11, 19:24], 1.0)
    assert heatmap[:, :15].max() == 0.0
    assert logit == pytest.approx(3.0 * 49 / (40 * 30), rel=1e-5)


def test_heat_map_is_the_renormalised_mean_of_both_maps() -> None:
    torch.manual_seed(4)
    inner = build_model(arch="rx_lite_bn").eval()
    x = torch.randn(2, 1, 128, 96)  # large enough for a target layer more than a column wide
    logits, maps = grad_cam_batch(FlipAveraged(inner), x)
    plain_logits, plain_maps = grad_cam_batch(inner, x)
    mirror_logits, mirror_maps = grad_cam_batch(inner, torch.flip(x, dims=(-1,)))
    with torch.no_grad():
        np.testing.assert_allclose(logits, FlipAveraged(inner)(x).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(logits, (plain_logits + mirror_logits) / 2, rtol=1e-5, atol=1e-6)
    mean = (plain_maps + mirror_maps[:, :, ::-1]) / 2
    assert plain_maps.max() > 0 and not np.allclose(mirror_maps, mirror_maps[:, :, ::-1])
    for i in range(2):
        np.testing.assert_allclose(maps[i], mean[i] / mean[i].max(), rtol=1e-5, atol=1e-6)
