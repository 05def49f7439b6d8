"""AMP: bf16 autocast statistics are computed in float32; with GradScaler the recorded
gradients are the unscaled ones (the recorder reads them in the optimizer step pre-hook,
which GradScaler.step reaches only after unscaling)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import normviz


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 16), nn.BatchNorm1d(16), nn.Linear(16, 3))


def batches(n: int):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(32, 8, generator=g) * 3 + 50, torch.randint(0, 3, (32,), generator=g)) for _ in range(n)]


def test_bf16_autocast_stats_are_float32_of_the_bf16_activations(tmp_path):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen: list[torch.Tensor] = []
    model[0].register_forward_hook(lambda m, a, out: seen.append(out.detach().clone()))
    with normviz.Recorder(model, tmp_path / "bf16.h5") as rec:
        for x, y in batches(3):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
                loss = nn.functional.cross_entropy(out, y)
            assert seen[-1].dtype == torch.bfloat16
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss=loss.detach())
    with normviz.open(tmp_path / "bf16.h5") as run:
        for stat in ("mean", "std"):
            values = run.stat(stat, "0", "output")
            assert values.dtype == np.float32 and np.isfinite(values).all()
        expected_mean = [float(t.double().mean()) for t in seen]
        expected_std = [float(t.double().std(unbiased=False)) for t in seen]
        np.testing.assert_allclose(run.stat("mean", "0", "output"), expected_mean, rtol=1e-5)
        # the bf16 activations, reduced in float32
        np.testing.assert_allclose(run.stat("std", "0", "output"), expected_std, rtol=1e-3)
        names, gn = run.grad("grad_norm")
        assert gn.dtype == np.float32 and np.isfinite(gn).all()


@pytest.mark.parametrize("clip", [False, True])
def test_grad_scaler_gradients_are_recorded_unscaled(tmp_path, clip):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    applied: list[float] = []
    with normviz.Recorder(model, tmp_path / f"scaler-{clip}.h5") as rec:
        for x, y in batches(4):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            scaler.scale(loss).backward()
            if clip:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.5)
            scaled = float(model[0].weight.grad.double().norm())
            scaler.step(opt)  # unscales (if not done yet), then optimizer.step()
            scaler.update()
            # after the step .grad holds what the optimizer applied: unscaled (and clipped)
            g = torch.cat([model[0].weight.grad.flatten(), model[0].bias.grad.flatten()])
            applied.append(float(g.double().norm()))
            if not clip:
                assert scaled > 100 * float(model[0].weight.grad.double().norm())  # it was scaled
            rec.step(loss=loss.detach())
    with normviz.open(tmp_path / f"scaler-{clip}.h5") as run:
        names, gn = run.grad("grad_norm")
        np.testing.assert_allclose(gn[:, names.index("0")], applied, rtol=1e-5)
        if clip:
            total = np.sqrt((gn.astype(np.float64) ** 2).sum(axis=1))
            assert (total <= 0.5 * 1.0001).all()
