"""Tests of the single-view models (pipeline.models) and the study aggregator."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from pipeline.models import (
    ARCHITECTURES,
    MultiViewAggregator,
    ResNet18Classifier,
    RxNet,
    build_aggregator,
    build_model,
    gradient_norms,
    min_input_side,
)

# Tiny inputs keep the suite fast; rx_large* needs its minimum side (computed, 286 px).
SMALL_SIZE = {
    "resnet18": (64, 48),
    "resnet18_slim": (64, 48),
    "rx_lite": (64, 48),
    "rx_lite_bn": (64, 48),
    "rx_large": None,
    "rx_large_bn": None,
}


def small_size(arch: str) -> tuple[int, int]:
    size = SMALL_SIZE[arch]
    if size is None:
        side = min_input_side(arch)
        return side, side
    return size


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def test_architectures_are_the_documented_ones() -> None:
    assert set(ARCHITECTURES) >= {"resnet18", "rx_lite", "rx_large", "rx_large_bn"}


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_forward_shape_features_and_first_conv_gradient(arch: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch=arch)
    x = torch.randn(2, 1, *small_size(arch))
    logits = model(x)
    assert logits.shape == (2,)
    assert logits.dtype == torch.float32
    features = model.features(x)
    assert features.shape == (2, model.feature_dim)
    assert any(m is model.target_layer for m in model.modules())
    assert first_conv(model).in_channels == 1
    torch.autograd.backward(logits.sum())
    grad = first_conv(model).weight.grad
    assert grad is not None
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_thesis_input_size_512x341(arch: str) -> None:
    model = build_model(arch=arch).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 512, 341)).shape == (2,)


@pytest.mark.parametrize(("arch", "side"), [("rx_lite", 46), ("rx_large", 286)])
def test_rx_min_input_side_is_exact(arch: str, side: int) -> None:
    assert min_input_side(arch) == side
    model = build_model(arch=arch).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, side, side)).shape == (1,)
        with pytest.raises(ValueError, match=str(side)):
            model(torch.randn(1, 1, side - 1, side + 20))


def test_resnet18_head_and_stem() -> None:
    model = build_model(arch="resnet18", dropout=0.3)
    assert isinstance(model, ResNet18Classifier)
    conv1 = first_conv(model)
    assert (conv1.kernel_size, conv1.stride, conv1.padding) == ((7, 7), (2, 2), (3, 3))
    assert conv1.bias is None
    assert model.fc.out_features == 1 and model.fc.in_features == 512
    assert model.target_layer is model.layer4
    assert model.dropout.p == 0.3
    # Kaiming (fan_out, relu): std = sqrt(2 / (64 * 7 * 7)) ~ 0.0253.
    assert 0.02 < float(conv1.weight.detach().std()) < 0.031


def test_rx_structure() -> None:
    lite = build_model(arch="rx_lite")
    large = build_model(arch="rx_large")
    large_bn = build_model(arch="rx_large_bn")
    assert isinstance(lite, RxNet) and isinstance(large, RxNet)
    assert len(lite.blocks) == 4 and lite.feature_dim == 128
    assert len(large.blocks) == 8 and large.feature_dim == 256
    assert not any(isinstance(m, nn.BatchNorm2d) for m in large.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in large_bn.modules()) == 8
    convs = [m for m in lite.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.kernel_size == (3, 3) and c.padding == (0, 0) for c in convs)
    linears = [m for m in lite.classifier if isinstance(m, nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [
        (128, 128),
        (128, 32),
        (32, 1),
    ]
    assert lite.target_layer is lite.blocks[-1]


def test_dropout_is_active_only_in_training() -> None:
    torch.manual_seed(0)
    model = build_model(arch="rx_lite", dropout=0.5)
    x = torch.randn(2, 1, 64, 48)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_in_channels() -> None:
    for arch in ("resnet18", "rx_lite"):
        model = build_model(arch=arch, in_channels=3).eval()
        assert first_conv(model).in_channels == 3
        assert model(torch.randn(1, 3, 64, 48)).shape == (1,)


def test_unknown_arch_names_the_valid_ones() -> None:
    with pytest.raises(ValueError) as info:
        build_model(arch="nope")
    for arch in ARCHITECTURES:
        assert arch in str(info.value)
    with pytest.raises(ValueError, match="rx_lite"):
        min_input_side("nope")


def test_build_model_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        build_model("rx_lite")  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        build_aggregator("rx_lite")  # type: ignore[call-arg]


def test_rx_large_first_layer_gradient_vanishes_without_batchnorm() -> None:
    """Thesis 6.2.3: Rx Large never learned. At initialisation the first conv's gradient of
    rx_large is ~5 orders of magnitude below rx_large_bn's (measured ~1e-4 vs ~2e1)."""
    torch.manual_seed(0)
    x = torch.randn(4, 1, 286, 286)
    y = torch.tensor([0, 1, 0, 1])
    plain = gradient_norms(build_model(arch="rx_large"), x, y)
    normed = gradient_norms(build_model(arch="rx_large_bn"), x, y)
    first = "blocks.0.conv.weight"
    assert plain[first] > 0
    assert plain[first] < 1e-3 * normed[first]


def test_gradient_norms_leave_grads_untouched() -> None:
    model = build_model(arch="rx_lite")
    norms = gradient_norms(model, torch.randn(2, 1, 64, 48), torch.tensor([0, 1]))
    assert set(norms) == {name for name, _ in model.named_parameters()}
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- aggregator


def make_aggregator(trunk_arch: str = "rx_lite", **kwargs: object) -> MultiViewAggregator:
    torch.manual_seed(0)
    return build_aggregator(trunk_arch=trunk_arch, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_padded_views_do_not_change_the_output(mode: str) -> None:
    # resnet18 has BatchNorm: in train mode padded views must not enter the batch statistics.
    model = make_aggregator("resnet18")
    model.train(mode == "train")
    torch.manual_seed(1)
    real = torch.randn(2, 2, 1, 64, 48)
    garbage = torch.randn(2, 2, 1, 64, 48) * 100
    padded = torch.cat([real, garbage], dim=1)
    mask = torch.tensor([[True, True, False, False], [True, True, False, False]])
    with torch.no_grad():
        alone = model(real, torch.ones(2, 2, dtype=torch.bool))
        with_padding = model(padded, mask)
        other_garbage = model(torch.cat([real, -garbage], dim=1), mask)
    assert alone.shape == (2,)
    torch.testing.assert_close(with_padding, alone)
    torch.testing.assert_close(other_garbage, alone)


def test_padding_position_and_view_count_per_study() -> None:
    model = make_aggregator().eval()
    torch.manual_seed(2)
    views = torch.randn(2, 3, 1, 64, 48)
    mask = torch.tensor([[True, False, True], [False, True, False]])
    with torch.no_grad():
        both = model(views, mask)
        first = model(views[:1, [0, 2]], torch.ones(1, 2, dtype=torch.bool))
        second = model(views[1:, [1]], torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(both, torch.cat([first, second]))


def test_output_is_invariant_to_view_order() -> None:
    model = make_aggregator().eval()
    torch.manual_seed(3)
    views = torch.randn(2, 4, 1, 64, 48)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    order = torch.tensor([3, 1, 0, 2])
    with torch.no_grad():
        original = model(views, mask)
        permuted = model(views[:, order], mask[:, order])
        different = model(views.flip(0), mask.flip(0))
    torch.testing.assert_close(permuted, original)
    assert not torch.allclose(different, original)


def test_study_without_views_and_bad_mask_are_rejected() -> None:
    model = make_aggregator().eval()
    views = torch.randn(2, 2, 1, 64, 48)
    with pytest.raises(ValueError, match="at least one real view"):
        model(views, torch.tensor([[True, False], [False, False]]))
    with pytest.raises(ValueError, match="mask shape"):
        model(views, torch.ones(2, 3, dtype=torch.bool))


def test_build_aggregator_validates_trunk() -> None:
    with pytest.raises(ValueError, match="rx_lite"):
        build_aggregator(trunk_arch="nope")
    with pytest.raises(ValueError, match="trunk_arch"):
        build_aggregator(trunk_arch="resnet18", trunk=build_model(arch="rx_lite"))
    with pytest.raises(TypeError):
        build_aggregator(trunk_arch="rx_lite", trunk=nn.Linear(2, 2))


def test_frozen_trunk_stays_fixed_while_the_classifier_learns() -> None:
    torch.manual_seed(4)
    trunk = build_model(arch="resnet18")
    model = build_aggregator(trunk_arch="resnet18", trunk=trunk, freeze_trunk=True)
    assert model.trunk is trunk
    model.train()
    assert not model.trunk.training
    assert all(not m.training for m in model.trunk.modules())
    assert model.classifier.training
    assert all(not p.requires_grad for p in trunk.parameters())
    trunk_before = copy.deepcopy(trunk.state_dict())  # includes BatchNorm running stats
    head_before = copy.deepcopy(model.classifier.state_dict())

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    views = torch.randn(2, 3, 1, 64, 48)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss = nn.functional.binary_cross_entropy_with_logits(
        model(views, mask), torch.tensor([0.0, 1.0])
    )
    optimizer.zero_grad()
    torch.autograd.backward(loss)
    optimizer.step()

    for key, value in trunk.state_dict().items():
        assert torch.equal(value, trunk_before[key]), key
    assert any(
        not torch.equal(value, head_before[key])
        for key, value in model.classifier.state_dict().items()
    )


def test_unfrozen_transfer_trunk_trains() -> None:
    trunk = build_model(arch="rx_lite")
    model = build_aggregator(trunk_arch="rx_lite", trunk=trunk)
    model.train()
    assert model.trunk.training
    assert all(p.requires_grad for p in trunk.parameters())


def bright_square_studies(
    n: int, views: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positive study: one random real view holds a bright square; the others are noise."""
    x = torch.randn(n, views, 1, 48, 48, generator=generator) * 0.3
    counts = torch.randint(1, views + 1, (n,), generator=generator)
    mask = torch.arange(views)[None, :] < counts[:, None]
    y = (torch.arange(n) % 2).to(torch.float32)
    for i in range(n):
        if y[i]:
            v = int(torch.randint(0, int(counts[i]), (1,), generator=generator))
            r, c = torch.randint(4, 30, (2,), generator=generator).tolist()
            x[i, v, 0, r : r + 12, c : c + 12] += 2.0
    return x, mask, y


def test_aggregator_learns_a_separable_toy_problem() -> None:
    generator = torch.Generator().manual_seed(5)
    model = make_aggregator()
    views, mask, y = bright_square_studies(12, 3, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)

    def loss() -> torch.Tensor:
        return nn.functional.binary_cross_entropy_with_logits(model(views, mask), y)

    with torch.no_grad():
        initial = float(loss())
    for _ in range(8):
        optimizer.zero_grad()
        value = loss()
        torch.autograd.backward(value)
        optimizer.step()
    with torch.no_grad():
        final = float(loss())
    assert final < 0.8 * initial
