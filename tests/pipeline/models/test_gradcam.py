"""Tests of Grad-CAM (pipeline.gradcam) on a constructed model and a briefly trained rx_lite."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.gradcam import grad_cam, grad_cam_batch
from pipeline.models import build_model


class IdentityCamModel(nn.Module):
    """Target layer = a 1x1 identity conv on the input; logit = sign * mean(ReLU(A)).

    Its Grad-CAM is ReLU(sign * ReLU(x)) up to scale, so it must peak where the input is bright.
    """

    def __init__(self, sign: float = 1.0) -> None:
        super().__init__()
        self.target_layer = nn.Conv2d(1, 1, kernel_size=1, bias=False)
        with torch.no_grad():
            self.target_layer.weight.fill_(1.0)
        self.sign = sign

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activations = torch.relu(self.target_layer(x))
        return self.sign * activations.mean(dim=(1, 2, 3))


def bright_square_image(height: int = 40, width: int = 30) -> torch.Tensor:
    image = torch.zeros(1, 1, height, width)
    image[0, 0, 5:12, 18:25] = 3.0
    return image


def test_constructed_model_peaks_where_the_input_is_bright() -> None:
    model = IdentityCamModel().eval()
    image = bright_square_image()
    logit, heatmap = grad_cam(model, image)
    assert heatmap.shape == (40, 30)
    assert heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0)
    assert logit == pytest.approx(3.0 * 49 / (40 * 30), rel=1e-5)
    row, col = np.unravel_index(int(heatmap.argmax()), heatmap.shape)
    assert 5 <= row < 12 and 18 <= col < 25
    assert heatmap[20:, :].max() == 0.0
    np.testing.assert_allclose(heatmap[6:11, 19:24], 1.0)


def test_three_dimensional_image_is_accepted() -> None:
    logit, heatmap = grad_cam(IdentityCamModel().eval(), bright_square_image()[0])
    assert heatmap.shape == (40, 30)
    assert logit > 0


def test_negative_evidence_gives_an_all_zero_map() -> None:
    _, heatmap = grad_cam(IdentityCamModel(sign=-1.0).eval(), bright_square_image())
    assert heatmap.shape == (40, 30)
    assert not heatmap.any()


def test_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError):
        grad_cam(IdentityCamModel(), torch.zeros(2, 1, 8, 8))
    with pytest.raises(TypeError, match="target_layer"):
        grad_cam(nn.Conv2d(1, 1, 1), torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize("arch", ["resnet18", "rx_lite"])
def test_real_models_leave_grads_and_hooks_untouched(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch=arch).eval()
    parameters_before = [p.detach().clone() for p in model.parameters()]
    image = torch.randn(1, 1, 64, 48)
    with torch.inference_mode():
        logit, heatmap = grad_cam(model, image)
    assert heatmap.shape == (64, 48)
    assert heatmap.dtype == np.float32
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    with torch.no_grad():
        assert logit == pytest.approx(float(model(image)), rel=1e-4, abs=1e-6)
    assert all(p.grad is None for p in model.parameters())
    assert all(
        torch.equal(p, q) for p, q in zip(model.parameters(), parameters_before, strict=True)
    )
    assert not model.target_layer._forward_hooks
    assert not image.requires_grad


def test_frozen_model_still_gets_a_map() -> None:
    model = IdentityCamModel().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    _, heatmap = grad_cam(model, bright_square_image())
    assert heatmap.max() == pytest.approx(1.0)


def test_existing_grads_are_not_modified() -> None:
    model = build_model(arch="rx_lite").eval()
    torch.autograd.backward(model(torch.randn(1, 1, 64, 48)).sum())
    grads_before = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    grad_cam(model, torch.randn(1, 1, 64, 48))
    grads_after = [p.grad for p in model.parameters() if p.grad is not None]
    assert all(torch.equal(a, b) for a, b in zip(grads_after, grads_before, strict=True))


def test_batch_matches_single_images() -> None:
    torch.manual_seed(1)
    model = build_model(arch="rx_lite").eval()
    images = torch.randn(3, 1, 64, 48)
    logits, heatmaps = grad_cam_batch(model, images)
    assert logits.shape == (3,) and heatmaps.shape == (3, 64, 48)
    for i in range(3):
        logit, heatmap = grad_cam(model, images[i : i + 1])
        assert logit == pytest.approx(float(logits[i]), rel=1e-4, abs=1e-6)
        np.testing.assert_allclose(heatmap, heatmaps[i], atol=1e-4)


SIDE = 96


def top_left_square_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """First half positive: a bright 12x12 square somewhere in the top-left quadrant."""
    images = torch.randn(n, 1, SIDE, SIDE, generator=generator) * 0.3
    labels = torch.zeros(n)
    labels[: n // 2] = 1.0
    for i in range(n // 2):
        row, col = torch.randint(2, SIDE // 2 - 14, (2,), generator=generator).tolist()
        images[i, 0, row : row + 12, col : col + 12] += 2.0
    return images, labels


def test_trained_rx_lite_looks_at_the_bright_square() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = build_model(arch="rx_lite")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images, labels = top_left_square_images(16, generator)
    for _ in range(15):
        loss = nn.functional.binary_cross_entropy_with_logits(model(images), labels)
        optimizer.zero_grad()
        torch.autograd.backward(loss)
        optimizer.step()
    model.eval()
    test_images, _ = top_left_square_images(8, generator)
    logits, heatmaps = grad_cam_batch(model, test_images[:4])
    with torch.no_grad():
        negative_logits = model(test_images[4:])
    assert logits.min() > float(negative_logits.max())
    half = SIDE // 2
    for heatmap in heatmaps:
        quadrants = np.array(
            [
                heatmap[:half, :half].sum(),
                heatmap[:half, half:].sum(),
                heatmap[half:, :half].sum(),
                heatmap[half:, half:].sum(),
            ]
        )
        fractions = quadrants / quadrants.sum()
        assert fractions[0] > 0.5, fractions


def test_large_models_heat_maps_are_not_uniform_at_the_model_input() -> None:
    """The last Large block is 1x1 at 341x512; the CAM layer must keep a spatial extent."""
    from pipeline.gradcam import grad_cam as cam
    from pipeline.models import build_model as build

    torch.manual_seed(0)
    model = build(arch="rx_large_bn").eval()
    image = torch.zeros(1, 1, 512, 341)
    image[..., 100:160, 50:120] = 3.0
    _, heatmap = cam(model, image)
    assert heatmap.shape == (512, 341)
    assert float(heatmap.std()) > 0.01
