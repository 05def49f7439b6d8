"""Tests for the experiment model builders and synthetic data helpers."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normviz.experiments import models
from normviz.experiments.models import (
    NORM_KINDS,
    ChannelsFirstLayerNorm,
    ChannelsFirstRMSNorm,
    deep_mlp,
    image_classification_data,
    make_norm,
    resnet8,
    seed_cnn,
    seed_mlp,
    seed_regression_data,
    token_data,
    transformer,
)

VECTOR_KINDS = [k for k in NORM_KINDS if k != "instance"]
TRANSFORMER_KINDS = ["layer", "rms", "none"]

EXPECTED_1D: dict[str, type[nn.Module]] = {
    "batch": nn.BatchNorm1d,
    "layer": nn.LayerNorm,
    "group": nn.GroupNorm,
    "rms": nn.RMSNorm,
    "none": nn.Identity,
}
EXPECTED_2D: dict[str, type[nn.Module]] = {
    "batch": nn.BatchNorm2d,
    "layer": ChannelsFirstLayerNorm,
    "instance": nn.InstanceNorm2d,
    "group": nn.GroupNorm,
    "rms": ChannelsFirstRMSNorm,
    "none": nn.Identity,
}


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    """Seed, and use one thread: small ops are no slower, and a busy machine stays fast."""
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _forward_backward(model: nn.Module, x: Tensor) -> Tensor:
    model.train()
    out = model(x)
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    return out


def _norm_modules(model: nn.Module, cls: type[nn.Module]) -> list[nn.Module]:
    return [m for m in model.modules() if type(m) is cls]


# --------------------------------------------------------------------------- make_norm


@pytest.mark.parametrize("kind", VECTOR_KINDS)
def test_make_norm_vectors(kind: str) -> None:
    norm = make_norm(kind, 8, dims=1)
    assert type(norm) is EXPECTED_1D[kind]
    assert norm(torch.randn(5, 8)).shape == (5, 8)


@pytest.mark.parametrize("kind", NORM_KINDS)
def test_make_norm_images(kind: str) -> None:
    norm = make_norm(kind, 8, dims=2)
    assert type(norm) is EXPECTED_2D[kind]
    assert norm(torch.randn(2, 8, 3, 3)).shape == (2, 8, 3, 3)


def test_make_norm_details() -> None:
    inorm = make_norm("instance", 16, dims=2)
    assert isinstance(inorm, nn.InstanceNorm2d) and inorm.affine
    gnorm = make_norm("group", 16, dims=2)
    assert isinstance(gnorm, nn.GroupNorm) and gnorm.num_groups == 4
    assert make_norm("group", 2, dims=1).num_groups == 2  # type: ignore[union-attr]
    assert make_norm("group", 6, dims=2).num_groups == 3  # type: ignore[union-attr]
    lnorm = make_norm("layer", 16, dims=2)
    assert lnorm.weight.shape == (16,) and lnorm.bias.shape == (16,)  # type: ignore[union-attr]
    assert make_norm("rms", 16, dims=2).weight.shape == (16,)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("kind", "dims"),
    [("instance", 1), ("bogus", 1), ("bogus", 2), ("batch", 3), ("layer", 0), ("Batch", 1)],
)
def test_make_norm_rejects(kind: str, dims: int) -> None:
    with pytest.raises(ValueError):
        make_norm(kind, 8, dims=dims)


def test_make_norm_rejects_bad_channels() -> None:
    with pytest.raises(ValueError):
        make_norm("batch", 0, dims=1)


# --------------------------------------------------------------------------- channels-first look-alikes


def _reference_layer_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
    x64 = x.double()
    mean = x64.mean(dim=1, keepdim=True)
    var = ((x64 - mean) ** 2).mean(dim=1, keepdim=True)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x64 - mean) / torch.sqrt(var + eps) * weight.double().view(shape) + bias.double().view(shape)


def _reference_rms_norm(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    x64 = x.double()
    rms = torch.sqrt((x64**2).mean(dim=1, keepdim=True) + eps)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return x64 / rms * weight.double().view(shape)


def test_channels_first_layer_norm_matches_reference() -> None:
    norm = ChannelsFirstLayerNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6))
        norm.bias.copy_(torch.randn(6))
    x = torch.randn(3, 6, 5, 4) * 3 + 2
    expected = _reference_layer_norm(x, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-5, atol=1e-5)
    # the same as nn.LayerNorm applied channels-last
    permuted = F.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(norm(x), permuted.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_channels_first_rms_norm_matches_reference() -> None:
    norm = ChannelsFirstRMSNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(6))
    x = torch.randn(3, 6, 5, 4) * 3 + 2
    expected = _reference_rms_norm(x, norm.weight, norm.eps)
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-5, atol=1e-5)
    permuted = F.rms_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.eps)
    torch.testing.assert_close(norm(x), permuted.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


def test_channels_first_norms_have_no_mean_shortcut() -> None:
    """LayerNorm removes the per-position mean; RMSNorm keeps it."""
    x = torch.randn(2, 8, 3, 3) + 5
    assert _max_channel_mean(ChannelsFirstLayerNorm(8)(x)) < 1e-5
    assert _max_channel_mean(ChannelsFirstRMSNorm(8)(x)) > 0.5


def _max_channel_mean(y: Tensor) -> float:
    return float(y.detach().mean(dim=1).abs().max())


# --------------------------------------------------------------------------- builders

BuilderCase = tuple[Callable[[str], nn.Module], Callable[[], Tensor], tuple[int, ...], dict[str, type[nn.Module]]]

BUILDERS: dict[str, BuilderCase] = {
    "seed_mlp": (seed_mlp, lambda: torch.randn(8, 10), (8, 1), EXPECTED_1D),
    "seed_cnn": (seed_cnn, lambda: torch.randn(4, 3, 8, 8), (4, 4), EXPECTED_2D),
    "deep_mlp": (
        lambda k: deep_mlp(k, width=32, depth=3, in_features=12, num_classes=5),
        lambda: torch.randn(6, 12),
        (6, 5),
        EXPECTED_1D,
    ),
    "resnet8": (resnet8, lambda: torch.randn(2, 3, 32, 32), (2, 10), EXPECTED_2D),
}
CASES = [(name, kind) for name, case in BUILDERS.items() for kind in case[3]]


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_builder_forward_backward(name: str, kind: str) -> None:
    build, make_input, out_shape, expected = BUILDERS[name]
    model = build(kind)
    out = _forward_backward(model, make_input())
    assert out.shape == out_shape
    if kind != "none":
        assert _norm_modules(model, expected[kind])


# ResNet-8: the stem, two per block and two in the downsampling shortcuts.
@pytest.mark.parametrize(("name", "n_norms"), [("seed_mlp", 1), ("seed_cnn", 1), ("resnet8", 9)])
def test_builder_norm_counts(name: str, n_norms: int) -> None:
    build, _, _, expected = BUILDERS[name]
    assert len(_norm_modules(build("batch"), expected["batch"])) == n_norms


def test_seed_mlp_layout() -> None:
    model = seed_mlp("batch")
    assert [type(m) for m in model] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (model[0].in_features, model[0].out_features) == (10, 64)
    assert (model[3].in_features, model[3].out_features) == (64, 1)
    assert type(seed_mlp("none")[1]) is nn.Identity


def test_seed_cnn_layout() -> None:
    model = seed_cnn("group")
    conv1, norm, _, conv2 = model[:4]
    assert isinstance(conv1, nn.Conv2d) and (conv1.in_channels, conv1.out_channels) == (3, 16)
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 4
    assert isinstance(conv2, nn.Conv2d) and (conv2.in_channels, conv2.out_channels) == (16, 32)
    assert seed_cnn("none", num_classes=7)(torch.randn(1, 3, 8, 8)).shape == (1, 7)


def test_deep_mlp_layout() -> None:
    model = deep_mlp("batch")
    assert len(_norm_modules(model, nn.BatchNorm1d)) == 8
    assert model(torch.randn(4, 512)).shape == (4, 10)
    with pytest.raises(ValueError):
        deep_mlp("batch", depth=0)


def test_resnet8_inplace_relu_after_norms() -> None:
    model = resnet8("batch")
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert relus and all(m.inplace for m in relus)
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 9  # 7 main + 2 shortcuts


@pytest.mark.parametrize(
    ("build", "kind"),
    [(deep_mlp, "instance"), (seed_mlp, "instance"), (seed_mlp, "nope"), (resnet8, "nope")],
)
def test_builders_reject_kinds(build: Callable[[str], nn.Module], kind: str) -> None:
    with pytest.raises(ValueError):
        build(kind)


# --------------------------------------------------------------------------- transformer


def _small_transformer(kind: str, pre_ln: bool = True) -> nn.Module:
    return transformer(kind, d_model=32, n_heads=4, n_layers=2, seq_len=16, vocab=20, pre_ln=pre_ln)


@pytest.mark.parametrize("pre_ln", [True, False])
@pytest.mark.parametrize("kind", TRANSFORMER_KINDS)
def test_transformer_forward_backward(kind: str, pre_ln: bool) -> None:
    model = _small_transformer(kind, pre_ln)
    idx = torch.randint(20, (3, 16))
    out = _forward_backward(model, idx)
    assert out.shape == (3, 16, 20)
    expected = {"layer": nn.LayerNorm, "rms": nn.RMSNorm, "none": nn.Identity}[kind]
    n_norms = 2 * 2 + (1 if pre_ln else 0)
    if kind != "none":
        assert len(_norm_modules(model, expected)) == n_norms


def test_transformer_default_size_and_short_input() -> None:
    model = transformer("layer")
    assert len(model.blocks) == 4  # type: ignore[arg-type]
    assert model(torch.randint(256, (2, 10))).shape == (2, 10, 256)
    with pytest.raises(ValueError):
        model(torch.randint(256, (1, 65)))


def test_transformer_is_causal() -> None:
    model = _small_transformer("layer").eval()
    idx = torch.randint(20, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 20
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[:, :10], model(changed)[:, :10])


@pytest.mark.parametrize("kind", ["batch", "instance", "group", "bogus"])
def test_transformer_rejects_kinds(kind: str) -> None:
    with pytest.raises(ValueError):
        transformer(kind)


def test_transformer_rejects_bad_heads() -> None:
    with pytest.raises(ValueError):
        transformer("layer", d_model=30, n_heads=4)


# --------------------------------------------------------------------------- data


def test_seed_regression_data() -> None:
    x, y = seed_regression_data(_gen())
    assert x.shape == (1000, 10) and y.shape == (1000, 1)
    assert float((y - x[:, :1]).std()) == pytest.approx(0.1, rel=0.15)
    x2, y2 = seed_regression_data(_gen())
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_image_classification_data() -> None:
    x, y = image_classification_data(64, _gen(), num_classes=4, size=8)
    assert x.shape == (64, 3, 8, 8) and x.dtype == torch.float32
    assert y.shape == (64,) and y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) < 4
    x2, y2 = image_classification_data(64, _gen())
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_image_classification_data_is_learnable() -> None:
    x_all, y_all = image_classification_data(512, _gen(1))
    x, y, xt, yt = x_all[:256], y_all[:256], x_all[256:], y_all[256:]
    model = seed_cnn("batch")
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(20):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(xt).argmax(1) == yt).float().mean())
    assert accuracy > 0.6  # chance is 0.25


def test_token_data() -> None:
    inputs, targets = token_data(4, 32, 50, _gen())
    assert inputs.shape == targets.shape == (4, 32)
    assert inputs.dtype == targets.dtype == torch.int64
    assert int(inputs.max()) < 50 and int(inputs.min()) >= 0
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    # every row is periodic with a period of at most 8
    full = torch.cat([inputs, targets[:, -1:]], dim=1)
    for row in full:
        assert any(torch.equal(row[p:], row[:-p]) for p in range(2, 9))


def test_module_exports() -> None:
    for name in models.__all__:
        assert hasattr(models, name)
