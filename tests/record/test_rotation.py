"""update_angle (Kosson et al. 2024's angular update): known rotations, float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import normviz
from normviz.analysis.shards import angle_between as angle_np
from normviz.record.reductions import angle_between


def rotated(w: torch.Tensor, theta: float, scale: float, gen: torch.Generator) -> torch.Tensor:
    """``w`` turned by ``theta`` in a random plane through it, its norm times ``scale`` (float64)."""
    w = w.double()
    u = torch.randn(w.shape, generator=gen, dtype=torch.float64)
    u -= (u * w).sum() / (w * w).sum() * w
    u *= w.norm() / u.norm()
    return scale * (math.cos(theta) * w + math.sin(theta) * u)


@pytest.mark.parametrize("theta", [1e-3, 1e-2, 0.3, 2.0])
def test_angle_from_three_norms(theta):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(256, 64, generator=gen, dtype=torch.float64)
    w2 = rotated(w, theta, 1 - 1e-4, gen)
    a, b, c = (t.norm().reshape(1) for t in (w, w2, w2 - w))
    assert float(angle_between(a, b, c)) == pytest.approx(theta, rel=1e-9)
    assert float(angle_np(a.numpy(), b.numpy(), c.numpy())[0]) == pytest.approx(theta, rel=1e-9)
    # float32 norms, as the recorder has them: 1e-6 absolute at a realistic step
    a32, b32, c32 = (t.float() for t in (a, b, c))
    assert float(angle_between(a32, b32, c32)) == pytest.approx(theta, abs=1e-6)


class Rotate(torch.optim.Optimizer):
    """Turns every parameter by a fixed angle (and shrinks it a little), whatever the gradient."""

    def __init__(self, params, theta: float) -> None:
        super().__init__(params, {"theta": theta})
        self.gen = torch.Generator().manual_seed(1)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.copy_(rotated(p, group["theta"], 1 - 1e-4, self.gen).float())


def test_recorded_angle_of_a_known_rotation(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64, bias=False), nn.LayerNorm(64, elementwise_affine=False),
                          nn.Linear(64, 4, bias=False))
    opt = Rotate(model.parameters(), 2e-3)
    with normviz.Recorder(model, tmp_path / "r.h5") as rec:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(16, 32)).square().mean().backward()
            opt.step()
            rec.step()
    with normviz.open(tmp_path / "r.h5") as run:
        names, angle = run.grad("update_angle")
        assert names == ["0", "2"]
        np.testing.assert_allclose(angle, 2e-3, atol=2e-6)
