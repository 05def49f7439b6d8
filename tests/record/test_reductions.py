"""The per-tensor reductions of the gradient statistics and output-gradient taps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from normviz.record.reductions import dense_flat, sq_norm, sq_norms


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
