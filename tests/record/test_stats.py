"""On-device reductions against float64 NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normviz.datatypes import NormSpec
from normviz.record import stats as S
from normviz.record.deferred import var_from_invstd


@pytest.mark.parametrize("shape,cd", [((8, 5, 4, 3), 1), ((6, 7, 9), -1), ((30, 4), 1), ((30, 4), -1)])
def test_channel_moments_match_float64(shape, cd):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 3 + 50  # |mean|/std ~ 17: needs the shift
    mean, var = S.channel_moments(x, cd)
    ref = x.double().movedim(cd % x.dim(), 0).reshape(x.shape[cd], -1).numpy()
    np.testing.assert_allclose(mean.numpy(), ref.mean(1), rtol=1e-4)
    np.testing.assert_allclose(var.numpy(), ref.var(1), rtol=1e-4)


@pytest.mark.parametrize("shape,cd", [((64, 16, 8), -1), ((500, 12), 1), ((64, 16, 8), 1)])
def test_channel_moments_offset_100_constant_and_nonfinite_channels(shape, cd):
    """Both paths ((values, channels) matrices through the batch-norm kernel, the rest
    through shifted sums): |mean|/std = 100 within 1e-4, a constant channel has variance
    exactly 0, NaN and inf stay visible."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(shape, generator=gen) + 100.0
    index = [slice(None)] * len(shape)
    index[cd] = 0
    x[tuple(index)] = 7.0
    mean, var = S.channel_moments(x, cd)
    ref = x.double().movedim(cd % x.dim(), 0).reshape(x.shape[cd], -1).numpy()
    np.testing.assert_allclose(mean.numpy(), ref.mean(1), rtol=1e-6)
    np.testing.assert_allclose(var.numpy()[1:], ref.var(1)[1:], rtol=1e-4)
    assert var[0] == 0 and mean[0] == 7.0
    index[cd] = 1
    x[tuple(index)] = float("nan")
    index[cd] = 2
    x[tuple(index)] = float("inf")
    mean, var = S.channel_moments(x, cd)
    assert torch.isnan(mean[1]) and not torch.isfinite(mean[2]) and torch.isfinite(mean[3:]).all()


def test_channel_moments_large_offset_and_bf16():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 16, 8, generator=gen) + 100.0  # |mean|/std = 100: the accuracy bound's edge
    mean, var = S.channel_moments(x, 1)
    ref = x.double().transpose(0, 1).reshape(16, -1).numpy()
    np.testing.assert_allclose(var.numpy(), ref.var(1), rtol=1e-4)
    xb = x.to(torch.bfloat16)
    mean_b, var_b = S.channel_moments(xb, 1)
    ref_b = xb.double().transpose(0, 1).reshape(16, -1).numpy()
    np.testing.assert_allclose(var_b.numpy(), ref_b.var(1), rtol=1e-4)
    assert mean_b.dtype == torch.float32


def instance_moments(x):
    """Per-(sample, channel) mean and variance as the recorder computes them, flat."""
    mean, invstd = S.instance_mean_invstd(x)
    return mean.reshape(-1), var_from_invstd(invstd, 0.0).reshape(-1)


@pytest.mark.parametrize("shape", [(8, 5, 4, 3), (4, 16, 32), (2, 3, 7)])
def test_instance_moments_offset_100_constant_and_nonfinite_rows(shape):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen) * 0.5 + 50.0  # |mean|/std = 100
    x[0, 0] = -3.0  # a constant row
    mean, var = instance_moments(x)
    ref = x.double().reshape(shape[0] * shape[1], -1).numpy()
    np.testing.assert_allclose(mean.numpy(), ref.mean(1), rtol=1e-6)
    np.testing.assert_allclose(var.numpy()[1:], ref.var(1)[1:], rtol=1e-4)
    assert var[0] == 0 and mean[0] == -3.0
    x[1, 0].view(-1)[0] = float("nan")
    x[1, 1].view(-1)[0] = float("inf")
    mean, var = instance_moments(x)
    flat_mean = mean.view(shape[0], shape[1])
    assert not torch.isfinite(flat_mean[1, :2]).any()
    assert torch.isfinite(flat_mean[0]).all() and torch.isfinite(flat_mean[1, 2:]).all()


@pytest.mark.parametrize("shape,cd,contiguous", [
    ((30, 4), 1, True), ((30, 4), -1, True), ((6, 7, 9), -1, True),  # (values, channels)
    ((8, 5, 16, 16), 1, True),  # channels first, large maps: reduce dims (0, 2, 3)
    ((8, 5, 3, 3), 1, True), ((8, 5, 7), 1, True),  # small maps: (n, c) rows first
    ((8, 5, 3, 3), 1, False), ((8, 5, 1, 1), 1, True),
])
def test_channel_extrema_match_numpy_on_every_path(shape, cd, contiguous):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=gen)
    if not contiguous:
        x = x.transpose(2, 3)
    lo, hi = S.channel_extrema(x, cd)
    ref = x.double().movedim(cd % x.dim(), 0).reshape(x.shape[cd], -1).numpy()
    np.testing.assert_array_equal(lo.numpy(), ref.min(1).astype(np.float32))
    np.testing.assert_array_equal(hi.numpy(), ref.max(1).astype(np.float32))
    x = x.clone()
    index = [0] * x.dim()
    index[cd] = 1
    x[tuple(index)] = float("nan")
    lo, hi = S.channel_extrema(x, cd)
    assert torch.isnan(lo[1]) and torch.isnan(hi[1]) and not torch.isnan(lo[[0, 2]]).any()


def test_pooled_moments():
    x = torch.randn(10, 6, 5, dtype=torch.float32) * 2 + 1
    m, s = S.pooled_moments(*S.channel_moments(x, 1))
    assert m.item() == pytest.approx(x.double().mean().item(), rel=1e-5)
    assert s.item() == pytest.approx(x.double().std(unbiased=False).item(), rel=1e-5)


@pytest.mark.parametrize("n", [1, 2, 7, 4096])
def test_quantiles_match_numpy_linear(n):
    v = torch.randn(n, generator=torch.Generator().manual_seed(n))
    levels = torch.tensor(S.PERCENTILE_LEVELS)
    np.testing.assert_allclose(S.quantiles(v, levels).numpy(), np.percentile(v.numpy(), S.PERCENTILE_LEVELS), rtol=1e-6, atol=1e-6)


def test_quantiles_ignore_nan_and_all_nan():
    v = torch.tensor([1.0, float("nan"), 3.0, 2.0])
    q = S.quantiles(v, torch.tensor([0.0, 50.0, 100.0]))
    assert q.tolist() == [1.0, 2.0, 3.0]
    assert torch.isnan(S.quantiles(torch.full((3,), float("nan")), torch.tensor([50.0]))).all()


def test_histogram_counts_with_under_and_overflow():
    sample = torch.tensor([-5.0, 0.0, 0.5, 0.99, 1.0, 2.0, float("inf"), float("-inf"), float("nan")])
    edges = torch.tensor([0.0, 0.5, 1.0])
    counts = S.histogram(sample, edges).tolist()
    # underflow: -5, -inf; [0, .5): 0; [.5, 1): .5, .99; overflow: 1.0, 2.0, inf; NaN not counted
    assert counts == [2.0, 1.0, 2.0, 3.0]


def test_first_edges_cover_range_and_handle_constant_and_nan():
    e = S.first_edges(torch.tensor(-1.0), torch.tensor(3.0), 8)
    assert e.numel() == 9 and e[0] < -1 and e[-1] > 3 and torch.all(e[1:] > e[:-1])
    e = S.first_edges(torch.tensor(2.0), torch.tensor(2.0), 4)
    assert torch.all(e[1:] > e[:-1])
    e = S.first_edges(torch.tensor(float("nan")), torch.tensor(float("nan")), 4)
    assert torch.isfinite(e).all()


def _groups_ref(x: np.ndarray, how: str, g: int = 1) -> np.ndarray:
    if how == "trailing":
        return x.reshape(-1, x.shape[-1])
    if how == "sample-channel":
        return x.reshape(x.shape[0] * x.shape[1], -1)
    if how == "group":
        return x.reshape(x.shape[0] * g, -1)
    if how == "channel":
        return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])
    raise AssertionError(how)


@pytest.mark.parametrize(
    "spec,shape",
    [
        (NormSpec("layer", -1, "trailing"), (4, 6, 10)),
        (NormSpec("rms", -1, "trailing", centered=False), (4, 6, 10)),
        (NormSpec("instance", 1, "sample-channel"), (3, 4, 5, 5)),
        (NormSpec("group", 1, "group", num_groups=2), (3, 4, 5, 5)),
        (NormSpec("layer", 1, "channel"), (3, 4, 5, 5)),
    ],
)
def test_group_moments(spec, shape):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen) * 2 + 5
    mean_c, var_c = S.channel_moments(x, spec.channel_dim)
    means, scales = S.group_moments(x, spec, mean_c, var_c, gen)
    rows = _groups_ref(x.double().numpy(), spec.group_dims, spec.num_groups)
    np.testing.assert_allclose(means.numpy(), rows.mean(1), rtol=1e-4)
    ref_scale = rows.std(1) if spec.centered else np.sqrt((rows**2).mean(1))
    np.testing.assert_allclose(scales.numpy(), ref_scale, rtol=1e-4)


def test_group_moments_batch_uses_channels():
    x = torch.randn(20, 3, 4)
    mean_c, var_c = S.channel_moments(x, 1)
    means, scales = S.group_moments(x, NormSpec("batch"), mean_c, var_c, torch.Generator())
    assert torch.equal(means, mean_c) and torch.allclose(scales, var_c.sqrt())


def test_draw_sample_noncontiguous_uses_own_generator():
    x = torch.arange(24.0).reshape(2, 3, 4).transpose(0, 2)
    state = torch.get_rng_state()
    s = S.draw_sample(x, 100, torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)
    assert set(s.tolist()) <= set(range(24))


@pytest.mark.parametrize("shape", [
    (64, 16, 16, 16),  # 16 channels: the narrow (values, channels) matrix is folded
    (8, 3, 5, 7),  # 3 channels, rows not a multiple of the fold: reduced unfolded
    (16, 32, 8, 8), (4, 64, 3, 3),  # wide enough as they are
])
def test_channels_last_images_match_float64(shape):
    """Inductor and mixed-precision CNNs lay convolution outputs out channels-last: read as a
    (values, channels) matrix, same numbers as the contiguous tensor (moments to float64,
    extrema exactly, a constant channel at variance 0, NaN visible)."""
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(shape, generator=gen) * 0.5 + 50).contiguous(memory_format=torch.channels_last)  # |mean|/std 100
    x[:, 1] = 7.0  # a constant channel
    assert not x.is_contiguous()
    ref = x.double().transpose(0, 1).reshape(shape[1], -1).numpy()
    mean, var = S.channel_moments(x, 1)
    np.testing.assert_allclose(mean.numpy(), ref.mean(1), rtol=1e-6)
    np.testing.assert_allclose(var.numpy()[[0, *range(2, shape[1])]], ref.var(1)[[0, *range(2, shape[1])]], rtol=1e-4)
    assert var[1] == 0 and mean[1] == 7.0
    lo, hi = S.channel_extrema(x, 1)
    np.testing.assert_array_equal(lo.numpy(), ref.min(1).astype(np.float32))
    np.testing.assert_array_equal(hi.numpy(), ref.max(1).astype(np.float32))
    x[2, 0, 1, 1] = float("nan")
    lo, hi = S.channel_extrema(x, 1)
    mean, _ = S.channel_moments(x, 1)
    assert torch.isnan(lo[0]) and torch.isnan(hi[0]) and torch.isnan(mean[0]) and not torch.isnan(lo[1:]).any()


def test_channels_innermost_in_memory_are_read_as_a_matrix():
    """An (N, C, L) tensor transposed from (N, L, C) (attention and 1-D conv code) is a free
    (values, channels) view, channels-last images too; a channels-first tensor is not."""
    x = torch.randn(4, 9, 6).transpose(1, 2)  # (N, C=6, L=9), channel stride 1
    flat = S._channels_last_2d(x, 1)
    assert flat is not None and flat.shape == (36, 6) and flat.data_ptr() == x.data_ptr()
    mean, var = S.channel_moments(x, 1)
    ref = x.double().transpose(0, 1).reshape(6, -1).numpy()
    np.testing.assert_allclose(mean.numpy(), ref.mean(1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var.numpy(), ref.var(1), rtol=1e-4)
    assert S._channels_last_2d(torch.randn(4, 6, 9), 1) is None
    assert S._channels_last_2d(torch.randn(2, 5, 3, 3).contiguous(memory_format=torch.channels_last), 1) is not None


@pytest.mark.parametrize("channels", [8, 40])
def test_instances_of_channels_last_images_match_float64(channels):
    """|mean|/std = 100: the group-norm kernel's channels-last path loses the variance (1e-2)."""
    gen = torch.Generator().manual_seed(6)
    x = (torch.randn(6, channels, 16, 16, generator=gen) * 0.5 + 50).contiguous(memory_format=torch.channels_last)
    x[0, 1] = -3.0  # a constant (sample, channel)
    assert S.reads_instances(x) and not x.is_contiguous()
    rows = x.contiguous()  # as the recorder reads them
    mean, invstd = S.instance_mean_invstd(rows)
    lo, hi = S.row_extrema(rows.view(6 * channels, -1))
    lo, hi = lo.view(6, channels), hi.view(6, channels)
    ref = x.double().reshape(6, channels, -1).numpy()
    np.testing.assert_allclose(mean.numpy(), ref.mean(2), rtol=1e-6)
    var = var_from_invstd(invstd, 0.0).numpy()
    np.testing.assert_allclose(var.reshape(-1)[2:], ref.var(2).reshape(-1)[2:], rtol=1e-4)
    assert var[0, 1] == 0
    np.testing.assert_array_equal(lo.numpy(), ref.min(2).astype(np.float32))
    np.testing.assert_array_equal(hi.numpy(), ref.max(2).astype(np.float32))
    assert not S.reads_instances(x[:, :, ::2])  # strided: not read without a copy
