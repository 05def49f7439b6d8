"""massive_activations (Sun et al. 2024): a planted spike is found exactly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import normviz


def spiked(base: type[nn.Module], where: tuple[int, ...], value: float, *args) -> nn.Module:
    """A ``base`` layer (Linear: channels last; Conv2d: channels first) whose output holds one planted value."""

    class Spiked(base):  # type: ignore[misc, valid-type]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = super().forward(x).clone()
            y[where] = value
            return y

    return Spiked(*args)


@pytest.mark.parametrize("shape, where, channel, position", [
    ((4, 16, 32), (2, 5, 7), 7, 5),  # (batch, tokens, channels): the token
    ((4, 8, 6, 5), (1, 3, 2, 4), 3, 2 * 5 + 4),  # a convolution's (N, C, H, W): the pixel
])
def test_planted_spike_is_found_with_its_channel_position_and_ratio(tmp_path, shape, where, channel, position):
    torch.manual_seed(0)
    conv = len(shape) == 4
    layer = spiked(nn.Conv2d, where, -1000.0, shape[1], shape[1], 1) if conv else spiked(
        nn.Linear, where, -1000.0, shape[-1], shape[-1])
    model = nn.Sequential(nn.Linear(shape[-1], shape[-1]), layer) if not conv else nn.Sequential(
        nn.Conv2d(shape[1], shape[1], 1), layer)
    x = torch.randn(shape)
    with normviz.Recorder(model, tmp_path / "m.h5", statistics={"massive_activations": ["1"]}) as rec:
        model(x).square().mean().backward()
        rec.step()
    with torch.no_grad():
        out = model(x)
    with normviz.open(tmp_path / "m.h5") as run:
        v = run.stat("massive_activations", "1")[0]
        rows = run.layout.stat("act", "massive_activations").rows
        assert [run.sites[r].layer for r in rows] == ["1"]  # only where asked for
    assert v[0] == 1000.0 and v[3] == channel and v[6] == position
    top = np.sort(np.abs(out.numpy()).ravel())[::-1][:3]
    np.testing.assert_allclose(v[:3], top, rtol=1e-6)
    # the median |x| of a 4096-value sample: within a few percent of the tensor's
    assert v[9] == pytest.approx(float(np.median(np.abs(out.numpy()))), rel=0.1)
    assert v[0] / v[9] > 500


def test_a_vector_site_has_no_position(tmp_path):
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU())
    with normviz.Recorder(model, tmp_path / "v.h5", statistics=["massive_activations"]) as rec:
        model(torch.randn(16, 8)).sum().backward()
        rec.step()
    with normviz.open(tmp_path / "v.h5") as run:
        v = run.stat("massive_activations", "0")[0]
    assert np.isnan(v[6:9]).all() and np.isfinite(v[:6]).all() and (v[3:6] < 8).all()
