"""The per-tensor reductions of the gradient statistics and output-gradient taps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normviz.record.reductions import (
    Scratch,
    abs_norms,
    copy_sq_norms,
    dense_flat,
    sq_norm,
    sq_norms,
    update_sq_norms,
)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "channels_last_3d"])
def test_dense_flat_views_every_value_once_without_copying(layout):
    if layout == "channels_last_3d":
        x = torch.randn(2, 3, 4, 5, 6).contiguous(memory_format=torch.channels_last_3d)
    elif layout == "channels_last":
        x = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    else:
        x = torch.randn(2, 3, 4, 5)
    flat = dense_flat(x)
    assert flat is not None and flat.dim() == 1 and flat.numel() == x.numel()
    assert flat.data_ptr() == x.data_ptr()  # a view: nothing copied
    np.testing.assert_array_equal(np.sort(flat.numpy()), np.sort(x.reshape(-1).numpy()))


def test_dense_flat_refuses_tensors_with_gaps_or_repeats():
    assert dense_flat(torch.randn(4, 6)[:, :3]) is None  # gaps
    assert dense_flat(torch.randn(1, 6).expand(4, 6)) is None  # one value read 4 times


def test_squared_norms_of_channels_last_gradients_match_float64():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(8, 16, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last)
    ref = float((g.double() ** 2).sum())
    assert sq_norm(g).item() == pytest.approx(ref, rel=1e-5)
    assert sq_norms([g, g[:, :3]]).numpy() == pytest.approx([ref, float((g[:, :3].double() ** 2).sum())], rel=1e-5)


def _mixed(gen: torch.Generator) -> list[torch.Tensor]:
    """Tensors of every kind the gradient statistics meet: large (BLAS dot) and small (one
    _foreach_norm), channels-last, with gaps, bf16, empty (a shard of nothing); |mean| >> std."""
    return [
        torch.randn(256, 512, generator=gen) + 30.0,
        torch.randn(1100, 1000, generator=gen),  # more than one piece of abs_norms

        torch.randn(64, generator=gen),
        torch.randn(8, 16, 32, 32, generator=gen).contiguous(memory_format=torch.channels_last),
        torch.randn(300, 200, generator=gen)[:, :150],
        torch.randn(128, 160, generator=gen).bfloat16(),
        torch.zeros(0),
    ]


@pytest.mark.parametrize("batch", [False, True])
def test_abs_norms_match_float64_and_reuse_one_scratch_buffer(batch):
    rel = 1e-4 if batch else 1e-5  # see test_copy_and_update_norms_match_float64
    tensors = _mixed(torch.Generator().manual_seed(1))
    scratch = Scratch()
    for _ in range(2):  # the second call reuses the buffer the first one grew
        sq, l1, linf = abs_norms(tensors, batch=batch, scratch=scratch)
        for i, t in enumerate(tensors):
            d = t.double()
            assert sq[i].item() == pytest.approx(float((d**2).sum()), rel=rel, abs=1e-30)
            assert l1[i].item() == pytest.approx(float(d.abs().sum()), rel=rel, abs=1e-30)
            assert linf[i].item() == pytest.approx(float(d.abs().max()) if t.numel() else 0.0, rel=1e-6)
    if not batch:  # the CPU path: one kept buffer per dtype, never larger than a piece
        assert sorted(str(dtype) for _, dtype in scratch._buffers) == ["torch.bfloat16", "torch.float32"]
        assert scratch._buffers[(torch.device("cpu"), torch.float32)].numel() == 1 << 18


@pytest.mark.parametrize("batch", [False, True])
def test_copy_and_update_norms_match_float64(batch):
    # _foreach_norm (the batched path) sums in float32 on CPU: 1.5e-5 relative for an update's
    # 131,072 squares here, 2.4e-5 for 1.1M values; the CPU path's BLAS dots over pieces of
    # 2**18 values keep 1e-5.
    rel = 1e-4 if batch else 1e-5
    gen = torch.Generator().manual_seed(2)
    weights = _mixed(gen)
    before = [w.clone() for w in weights]
    buffers = [torch.empty_like(w, memory_format=torch.contiguous_format) for w in weights]
    w_sq = copy_sq_norms(buffers, weights, batch=batch)
    for w, b, sq in zip(weights, buffers, w_sq):
        assert torch.equal(b, w)
        assert sq.item() == pytest.approx(float((w.double() ** 2).sum()), rel=rel, abs=1e-30)
    for w in weights:  # an optimizer step
        w.add_(torch.randn(w.shape, generator=gen).to(w.dtype), alpha=1e-3)
    delta_sq, after_sq = update_sq_norms(buffers, weights, batch=batch)
    for old, new, b, d_sq, a_sq in zip(before, weights, buffers, delta_sq, after_sq):
        assert torch.equal(b, old - new)  # the buffer now holds old - new
        assert d_sq.item() == pytest.approx(float(((old - new).double() ** 2).sum()), rel=rel, abs=1e-30)
        assert a_sq.item() == pytest.approx(float((new.double() ** 2).sum()), rel=rel, abs=1e-30)
