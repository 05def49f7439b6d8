"""bn_running_gap: batch against running statistics before the step's update, float64."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import normviz


def record(model: nn.Module, batches: list[torch.Tensor], path) -> np.ndarray:
    """The recorded gap of the BatchNorm ("1") at every step, and the float64 reference."""
    bn = model[1]
    want = []

    def before(module, args):  # the running statistics this forward starts from, and its batch
        x = args[0].detach().double()
        dims = [0] + list(range(2, x.dim()))
        n = x.numel() / x.shape[1]
        mean, var = x.mean(dims), x.var(dims, unbiased=False) * n / (n - 1)
        rm, rv = module.running_mean.double(), module.running_var.double()
        want.append([float(((mean - rm).abs() / (rv + module.eps).sqrt()).mean()),
                     float(((var + module.eps) / (rv + module.eps)).log().abs().mean())])

    bn.register_forward_pre_hook(before)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with normviz.Recorder(model, path, statistics=["bn_running_gap"]) as rec:
        for x in batches:
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
            rec.step()
    with normviz.open(path) as run:
        got = run.stat("bn_running_gap", "1", "input")
    return got, np.array(want)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_matches_float64_against_the_statistics_before_the_update(tmp_path, momentum):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, momentum=momentum), nn.ReLU())
    batches = [torch.randn(16, 3, 10, 10) * (1 + i) + i for i in range(4)]
    got, want = record(model, batches, tmp_path / "g.h5")
    if momentum is None:  # the cumulative average has nothing before the first batch
        got, want = got[1:], want[1:]
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_the_sampling_gap_shrinks_as_one_over_root_n(tmp_path):
    # Independent N(0, 1) values against running statistics (0, 1): E|mean gap| = sqrt(2/pi) / sqrt(n).
    gaps = {}
    for batch in (4, 64):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Identity(), nn.BatchNorm1d(256), nn.Linear(256, 1))
        got, _ = record(model, [torch.randn(batch, 256)], tmp_path / f"b{batch}.h5")
        gaps[batch] = got[0, 0]
        assert gaps[batch] == pytest.approx(math.sqrt(2 / math.pi) / math.sqrt(batch), rel=0.15)
    assert gaps[4] / gaps[64] == pytest.approx(4.0, rel=0.2)
