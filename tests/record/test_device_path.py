"""The ops chosen for GPUs (``reductions.device_kernels``: aminmax, ``_foreach_norm``, layer-norm
kernels for groups), forced on the CPU, record what the CPU's own choices record."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import normviz
from normviz.experiments import models
from normviz.record import reductions

ACT = ("channel_mean", "channel_var", "mean", "std", "min", "max", "rms_kurtosis", "percentiles", "hist",
       "group_mean", "group_scale", "nonfinite", "numel")
GRAD = ("grad_norm", "grad_abs_mean", "grad_abs_max", "weight_norm", "update_ratio", "update_angle")


def mixed_cnn() -> nn.Module:
    """BatchNorm and GroupNorm layers of several widths and group counts, a LayerNorm over the
    last dim, one GroupNorm without affine parameters, and a GroupNorm right after a BatchNorm."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 12, 3, padding=1), nn.GroupNorm(3, 12), nn.ReLU(),
        nn.Conv2d(12, 16, 3, padding=1), nn.GroupNorm(8, 16, affine=False), nn.ReLU(),
        nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.GroupNorm(4, 16),
        nn.Flatten(2), nn.LayerNorm(64), nn.Flatten(), nn.Linear(16 * 64, 5))


CASES = {
    "mlp-bn": (lambda: models.seed_mlp("batch"), lambda g: torch.randn(64, 10, generator=g) * 2 + 3),
    "cnn-mixed": (mixed_cnn, lambda g: torch.randn(16, 3, 8, 8, generator=g) * 3 + 5),
    "transformer-rms": (lambda: models.transformer("rms", d_model=32, n_heads=2, n_layers=1, seq_len=8, vocab=16),
                        lambda g: torch.randint(0, 16, (4, 8), generator=g)),
    "transformer-ln": (lambda: models.transformer("layer", d_model=32, n_heads=2, n_layers=1, seq_len=8, vocab=16),
                       lambda g: torch.randint(0, 16, (4, 8), generator=g)),
}


def record(path, case: str, steps: int = 3) -> list[float]:
    build, data = CASES[case]
    torch.manual_seed(0)
    model = build()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(1)
    losses = []
    with normviz.Recorder(model, path) as rec:
        for step in range(steps):
            x = data(gen)
            if step == steps - 1:
                x = x[: x.shape[0] // 2]  # a smaller last batch: the sampler's sizes change
            opt.zero_grad()
            out = model(x)
            loss = out.float().square().mean()
            loss.backward()
            opt.step()
            rec.step(loss=loss)
            losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("case", list(CASES))
def test_the_gpu_choices_record_what_the_cpu_ones_do(tmp_path, monkeypatch, case):
    cpu = record(tmp_path / "cpu.h5", case)
    monkeypatch.setattr(reductions, "FORCE_DEVICE_PATH", True)
    assert record(tmp_path / "gpu.h5", case) == cpu  # training unchanged
    with normviz.open(tmp_path / "cpu.h5") as a, normviz.open(tmp_path / "gpu.h5") as b:
        assert [s.key for s in a.sites] == [s.key for s in b.sites]
        for site in a.sites:
            for stat in ACT:
                try:
                    want = a.stat(stat, site.layer, site.role)
                except normviz.errors.MissingDataError:
                    continue
                got = b.stat(stat, site.layer, site.role)
                # Percentiles and histograms of the same samples; group percentiles of scales
                # computed by another kernel (layer-norm against shifted sums) differ in rounding.
                np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6, err_msg=f"{stat} {site.key}")
        for stat in GRAD:
            names, want = a.grad(stat)
            assert b.grad(stat)[0] == names
            np.testing.assert_allclose(b.grad(stat)[1], want, rtol=2e-5, atol=1e-7, err_msg=stat)
