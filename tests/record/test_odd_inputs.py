"""Odd modules, odd training loops, non-finite values: recorded or skipped, never breaking training."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import normviz


class TupleOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x), None


class DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return {"y": self.fc(x), "aux": 1}


class Odd(nn.Module):
    def __init__(self):
        super().__init__()
        self.t = TupleOut()
        self.d = DictOut()
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.unused = nn.Linear(4, 4)  # never called: no grad, no activations
        self.norm = nn.LayerNorm(4)
        self.emb = nn.Embedding(10, 4)

    def forward(self, x, idx):
        y, _ = self.t(x)
        y = self.d(y)["y"]
        y = self.frozen(y)
        return self.norm(y + self.emb(idx)).relu_()


def test_odd_modules_are_recorded_or_skipped_cleanly(tmp_path):
    torch.manual_seed(0)
    model = Odd()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    path = tmp_path / "odd.h5"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing here deserves a warning
        with normviz.Recorder(model, path) as rec:
            for _ in range(3):
                opt.zero_grad()
                out = model(torch.randn(5, 4), torch.randint(0, 10, (5,)))
                out.sum().backward()
                opt.step()
                rec.step()
    with normviz.open(path) as run:
        names = {layer.name for layer in run.layers}
        assert {"t.fc", "d.fc", "frozen", "norm", "emb", "unused"} <= names
        assert np.isfinite(run.stat("mean", "t.fc")).all()
        grad_names, gnorm = run.grad("grad_norm")
        assert "frozen" not in grad_names  # no trainable parameters
        assert np.isnan(gnorm[:, grad_names.index("unused")]).all()  # never had a gradient
        assert np.isfinite(gnorm[:, grad_names.index("emb")]).all()
        assert "unused|output|0" not in {s.key for s in run.sites}


def test_zero_size_batch_and_gradient_accumulation(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Linear(6, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "acc.h5"
    batches = [torch.randn(8, 3) for _ in range(3)]
    with normviz.Recorder(model, path) as rec:
        opt.zero_grad()
        for b in batches:  # three micro-batches, one optimizer step
            (model(b).sum() / 3).backward()
        accumulated = [p.grad.detach().clone() for p in model.parameters()]
        with torch.no_grad():
            last_input_mean = model[0](batches[-1]).mean().item()
        opt.step()
        rec.step()
        model.eval()
        model(torch.zeros(0, 3))  # an empty evaluation batch
        model.train()
        opt.zero_grad()
        model[0](torch.zeros(0, 3))  # an empty training call of one layer
        rec.step()
    with normviz.open(path) as run:
        names, gnorm = run.grad("grad_norm")
        expected = torch.cat([accumulated[0].reshape(-1), accumulated[1].reshape(-1)]).norm().item()
        assert gnorm[0, names.index("0")] == pytest.approx(expected, rel=1e-5)
        # the last micro-batch's activations
        assert run.stat("mean", "1", "input")[0] == pytest.approx(last_input_mean, rel=1e-4, abs=1e-6)
        # the empty call is skipped: that layer's row of the second step is missing (NaN)
        assert np.isnan(run.stat("mean", "0")[1]) and np.isnan(run.stat("nonfinite", "0")[1])
        assert len(run.steps) == 2


def test_nan_and_inf_activations_are_counted_and_training_untouched(tmp_path):
    class Spiky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 8)
            self.norm = nn.LayerNorm(8)

        def forward(self, x):
            return self.norm(self.fc(x))

    torch.manual_seed(0)
    model = Spiky()
    path = tmp_path / "nan.h5"
    with normviz.Recorder(model, path) as rec:
        for step in range(4):
            x = torch.randn(16, 4)
            if step == 2:
                x[0, 0] = math.nan
            if step == 3:
                x[1, 1] = math.inf
            out = model(x)
            out.nansum().backward()
            rec.step(loss=out.nansum())
    with normviz.open(path) as run:
        nonfinite = run.stat("nonfinite", "fc")
        assert nonfinite[0] == 0 and nonfinite[1] == 0
        assert nonfinite[2] >= 1 and nonfinite[3] >= 1
        assert np.isfinite(run.stat("mean", "fc")[:2]).all()


def test_statistic_that_raises_is_disabled_with_one_warning(tmp_path):
    from normviz.datatypes import Statistic
    from normviz.hookspecs import hookimpl
    from normviz.plugins import get_plugin_host

    class Broken:
        @hookimpl
        def normviz_register_statistics(self, register):
            register(Statistic("broken", lambda ctx: 1 / 0, lambda site: 1, "raises"))

    host = get_plugin_host(entrypoints=False, extra=[Broken()])
    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3))
    path = tmp_path / "broken.h5"
    with pytest.warns(RuntimeWarning, match="'broken'.*ZeroDivisionError") as caught:
        with normviz.Recorder(model, path, plugins=host) as rec:
            for _ in range(3):
                model(torch.randn(4, 3)).sum().backward()
                rec.step()
    assert sum("broken" in str(w.message) for w in caught) == 1
    with normviz.open(path) as run:
        assert np.isfinite(run.stat("mean", "1", "output")).all()  # the others are kept
        assert np.isnan(run.stat("broken", "1", "output")).all()


def test_every_zero_and_bad_on_error_are_rejected(tmp_path):
    with pytest.raises(normviz.errors.UsageError):
        normviz.Recorder(nn.Linear(2, 2), tmp_path / "a.h5", every=0)
    with pytest.raises(normviz.errors.UsageError):
        normviz.Recorder(nn.Linear(2, 2), tmp_path / "a.h5", on_error="ignore")
    with pytest.raises(normviz.errors.UsageError, match="unknown statistic"):
        normviz.Recorder(nn.Linear(2, 2), tmp_path / "a.h5", statistics=["nope"])


def test_bf16_autocast_statistics_in_float32(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 2))
    path = tmp_path / "bf16.h5"
    seen = {}

    def capture(module, args, output):
        seen["out"] = output.detach().double().clone()

    model[0].register_forward_hook(capture)
    with normviz.Recorder(model, path) as rec:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(torch.randn(32, 8) + 100)
        out.float().sum().backward()
        rec.step()
    with normviz.open(path) as run:
        ref = seen["out"].numpy()
        np.testing.assert_allclose(run.stat("channel_var", "0")[0], ref.var(0)[run.channel_index("0")], rtol=1e-4)


def test_closure_optimizer_steps_read_the_closures_gradients(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Linear(5, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(16, 3), torch.randn(16, 1)
    seen = []

    def closure():
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        seen.append(torch.cat([p.grad.reshape(-1) for p in model[0].parameters()]).norm().item())
        return loss

    path = tmp_path / "closure.h5"
    with normviz.Recorder(model, path) as rec:
        for _ in range(3):
            opt.step(closure)
            rec.step()
    with normviz.open(path) as run:
        names, gnorm = run.grad("grad_norm")
        np.testing.assert_allclose(gnorm[:, names.index("0")], seen, rtol=1e-5)
        assert np.all(run.grad("update_ratio")[1] > 0)


def test_recorder_on_a_compiled_model_hooks_the_original(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    compiled = torch.compile(model, backend="eager")
    with normviz.Recorder(compiled, tmp_path / "c.h5") as rec:
        model(torch.randn(2, 3)).sum().backward()
        rec.step()
    assert not model[1]._forward_hooks
    with normviz.open(tmp_path / "c.h5") as run:
        assert [layer.name for layer in run.layers] == ["0", "1"]
