"""Memory layouts: a channels-last CNN records the statistics of the same CNN laid out
contiguously (the layout mixed-precision CNN training and inductor choose)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import normviz


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True),
        nn.Conv2d(16, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )


def record(path, channels_last: bool) -> None:
    model = cnn()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    with normviz.Recorder(model, path) as rec:
        for _ in range(2):
            x = torch.randn(16, 3, 16, 16, generator=g).contiguous(memory_format=fmt)
            y = torch.randint(0, 3, (16,), generator=g)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            rec.step()


def test_channels_last_records_the_statistics_of_the_contiguous_model(tmp_path):
    record(tmp_path / "nchw.h5", channels_last=False)
    record(tmp_path / "nhwc.h5", channels_last=True)
    with normviz.open(tmp_path / "nchw.h5") as a, normviz.open(tmp_path / "nhwc.h5") as b:
        assert [(s.name, s.kind) for s in a.layers] == [(s.name, s.kind) for s in b.layers]
        for stat in ("mean", "std", "min", "max", "output_grad_norm", "numel"):
            np.testing.assert_allclose(a.stat_all(stat)[1], b.stat_all(stat)[1], rtol=1e-4, atol=1e-5, err_msg=stat)
        for layer in ("1", "4"):
            for role in ("input", "output"):
                for stat in ("channel_mean", "channel_var"):
                    np.testing.assert_allclose(a.stat(stat, layer, role), b.stat(stat, layer, role), rtol=1e-4,
                                               atol=1e-5, err_msg=f"{stat} {layer} {role}")
        for stat in ("grad_norm", "weight_norm", "update_ratio"):
            np.testing.assert_allclose(a.grad(stat)[1], b.grad(stat)[1], rtol=1e-4, err_msg=stat)
        # The samples take other positions, from the same values: their percentiles agree roughly.
        for layer, role in (("0", "output"), ("1", "output"), ("4", "input")):
            pa, pb = a.stat("percentiles", layer, role), b.stat("percentiles", layer, role)
            assert np.isfinite(pb).all()
            assert np.abs(np.median(pa - pb)) < 0.1 * float(b.stat_all("std")[1].max())
