"""Recorder(compile=True): the one-pass compiled site reductions, against float64 and the eager path."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import normviz
from normviz.record import fused as F
from normviz.record.fused import FusedReductions


def reference(x: torch.Tensor, dims: tuple[int, ...]) -> list[torch.Tensor]:
    d = x.double()
    return [d.mean(dims), d.var(dims, unbiased=False), d.amin(dims), d.amax(dims)]


def check(got, want, rtol=1e-4):
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.double().numpy(), w.numpy(), rtol=rtol, atol=1e-6)


@pytest.fixture(scope="module")
def fusedr():
    return FusedReductions()


def test_channels_last_and_channels_first_match_float64(fusedr):
    gen = torch.Generator().manual_seed(0)
    # |mean| / std = 100 in one channel: the shifted sums keep float32's precision.
    x = torch.randn(4, 64, 200, generator=gen) * torch.linspace(0.1, 3, 200) + torch.linspace(-50, 100, 200)
    check(fusedr.channels(x, -1), reference(x, (0, 1)))
    y = torch.randn(16, 8, 20, 20, generator=gen) * 2 + 200
    check(fusedr.channels(y, 1), reference(y, (0, 2, 3)))
    rows = fusedr.rows(y)
    flat = y.reshape(16 * 8, -1)
    check(rows, reference(flat, (1,)))
    assert set(fusedr.summary()["layouts"]) == {"columns", "channels_first", "rows"}
    assert fusedr.summary()["failed"] is None and fusedr.compile_seconds > 0


def test_constant_and_non_finite_channels(fusedr):
    x = torch.randn(512, 4, 32)
    x[:, 1] = 3.0  # a constant channel: variance exactly 0
    x[7, 2, 5] = float("nan")  # a NaN shows in every statistic of its channel
    mean, var, lo, hi = fusedr.channels(x, 1)
    assert var[1] == 0 and mean[1] == 3.0 and lo[1] == hi[1] == 3.0
    assert torch.isnan(mean[2]) and torch.isnan(lo[2]) and torch.isnan(hi[2])
    assert torch.isfinite(torch.stack([mean[0], var[3]])).all()


def test_what_is_left_to_the_eager_path(fusedr):
    assert fusedr.channels(torch.randn(64, 64), -1) is None  # small: a compiled call costs more
    assert fusedr.channels(torch.randn(256, 256, dtype=torch.float64), -1) is None
    assert fusedr.channels(torch.randn(256, 256).t(), -1) is None  # not contiguous
    assert fusedr.channels(torch.randn(8, 256, 32), 0) is None  # channel dim 0: eager
    assert fusedr.rows(torch.randn(2, 3, 4)) is None


def cnn_ln() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1),
                         nn.GroupNorm(4, 32), nn.ReLU(), nn.Conv2d(32, 8, 1), nn.Flatten(2),
                         nn.LayerNorm(256), nn.Linear(256, 256), nn.Flatten(), nn.Linear(8 * 256, 4))


def record(path, compile: bool) -> list[float]:
    model = cnn_ln()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(1)
    losses = []
    with normviz.Recorder(model, path, compile=compile) as rec:
        for _ in range(3):
            x = torch.randn(32, 3, 16, 16, generator=gen) * 3 + 5
            opt.zero_grad()
            loss = model(x).square().mean()
            loss.backward()
            opt.step()
            rec.step(loss=loss)
            losses.append(float(loss.detach()))
    return losses


def test_a_compiled_run_records_what_the_eager_one_does(tmp_path):
    assert record(tmp_path / "eager.h5", False) == record(tmp_path / "compiled.h5", True)  # training unchanged
    with normviz.open(tmp_path / "eager.h5") as a, normviz.open(tmp_path / "compiled.h5") as b:
        compiled = b.meta["compiled_statistics"]
        assert compiled["failed"] is None and "columns" in compiled["layouts"] and "channels_first" in compiled["layouts"]
        assert "compiled_statistics" not in a.meta
        for site in a.sites:
            for stat in ("channel_mean", "channel_var", "mean", "std", "min", "max", "rms_kurtosis"):
                np.testing.assert_allclose(b.stat(stat, site.layer, site.role), a.stat(stat, site.layer, site.role),
                                           rtol=2e-5, atol=1e-6, err_msg=f"{stat} {site.key}")


def test_a_compiler_that_fails_leaves_the_eager_path_with_one_warning(tmp_path, monkeypatch):
    def broken(fn, **kwargs):
        def call(x):
            raise RuntimeError("no C++ compiler\nmore detail")
        return call

    monkeypatch.setattr(F.torch, "compile", broken)
    with pytest.warns(RuntimeWarning, match="compiled statistics are off for this run \\(RuntimeError: no C\\+\\+ compiler\\)"):
        record(tmp_path / "broken.h5", True)
    with normviz.open(tmp_path / "broken.h5") as run:
        assert run.meta["compiled_statistics"]["failed"] == "RuntimeError: no C++ compiler"
        assert np.isfinite(run.stat("channel_var", "2", "output")).all()


def test_record_compile_option(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "normviz", "record", "-e", "seed-cnn", "--norm", "group", "--steps", "2",
                           "--compile", "-q", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    with normviz.open(tmp_path / "seed-cnn-group.h5") as run:
        compiled = run.meta["compiled_statistics"]
        assert compiled["failed"] is None and compiled["layouts"] == ["channels_first"]


def test_gradient_reductions_batched_as_off_the_cpu_equal_the_per_tensor_ones():
    from normviz.record import reductions

    gen = torch.Generator().manual_seed(2)
    tensors = [torch.randn(64, 64, 3, 3, generator=gen), torch.randn(64, generator=gen), torch.zeros(0),
               torch.randn(300, 300, generator=gen).t(), torch.randn(50, generator=gen).to(torch.bfloat16)]
    np.testing.assert_allclose(reductions.sq_norms(tensors, batch=True), reductions.sq_norms(tensors, batch=False),
                               rtol=1e-5)
    for a, b in zip(reductions.abs_norms(tensors, batch=True), reductions.abs_norms(tensors, batch=False)):
        np.testing.assert_allclose(a, b, rtol=1e-5)
    assert not reductions.use_foreach(tensors, None)  # on CPU the per-tensor ops are faster


def test_a_run_with_the_batched_gradient_reductions_records_the_same(tmp_path, monkeypatch):
    from normviz.record import reductions

    record(tmp_path / "per_tensor.h5", False)
    monkeypatch.setattr(reductions, "use_foreach", lambda tensors, batch: True)  # as on a GPU
    record(tmp_path / "batched.h5", False)
    with normviz.open(tmp_path / "per_tensor.h5") as a, normviz.open(tmp_path / "batched.h5") as b:
        for stat in ("grad_norm", "grad_abs_mean", "grad_abs_max", "weight_norm", "update_ratio", "update_angle"):
            names, want = a.grad(stat)
            assert b.grad(stat)[0] == names
            np.testing.assert_allclose(b.grad(stat)[1], want, rtol=2e-5, atol=1e-7, err_msg=stat)
