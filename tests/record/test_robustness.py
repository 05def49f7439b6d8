"""Recording never stops training unless asked: a tensor the statistics cannot read, a module that
replaces its parameters, a gradient of another type — each disables what it touches, with one
warning naming it, and the run file keeps everything else."""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normviz


def _called_by_normviz() -> bool:
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith("normviz."):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


class Hostile(torch.Tensor):
    """A tensor subclass that trains like a tensor but raises on every operation normviz runs on
    it (its attributes — shape, dtype, requires_grad — can be read, as with float8 or quantized
    tensors whose kernels are missing)."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") != "__get__" and _called_by_normviz():
            raise RuntimeError(f"hostile tensor: {getattr(func, '__name__', func)} is not for you")
        return super().__torch_function__(func, types, args, kwargs or {})


class HostileOut(nn.Module):
    """A layer whose output is a Hostile tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 16) / 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight).as_subclass(Hostile)


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.ReLU(), HostileOut(), nn.Linear(16, 4))


def _train(model: nn.Module, rec: normviz.Recorder | None, steps: int = 4) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x, y = torch.randn(6, 8, generator=g), torch.randn(6, 4, generator=g)
        loss = F.mse_loss(model(x).as_subclass(torch.Tensor), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if rec is not None:
            rec.step(loss=loss.detach().as_subclass(torch.Tensor))


def test_hostile_subclass_disables_its_layer_with_one_warning_and_training_is_unchanged(tmp_path):
    reference = _model()
    _train(reference, None)
    model = _model()
    # A parameter of the hostile class too: its gradient statistics cannot be read either.
    model[4].weight = nn.Parameter(model[4].weight.detach().as_subclass(Hostile))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with normviz.Recorder(model, tmp_path / "run.h5") as rec:
            _train(model, rec)
    said = [str(w.message) for w in caught if "normviz" in str(w.message)]
    assert any("layer '3' failed" in m for m in said), said  # the hostile output's layer is named
    assert any("layer '4' has no gradient statistics" in m and "Hostile" in m for m in said), said
    assert len(said) == len(set(said)) <= 3, said  # one warning each, not one per step
    for a, b in zip(reference.parameters(), model.parameters()):
        assert torch.equal(a.as_subclass(torch.Tensor), b.as_subclass(torch.Tensor))
    with normviz.open(tmp_path / "run.h5") as run:
        assert list(run.steps) == [0, 1, 2, 3] and run.status["clean"] == 1
        assert np.isfinite(run.stat("channel_var", "1", "input")).all()
        assert np.isfinite(run.stat("mean", "0")).all()
        names, norms = run.grad("grad_norm")
        assert np.isfinite(norms[:, names.index("0")]).all()
        assert np.isfinite(norms[:, names.index("3")]).all()  # a plain parameter: its gradient is read
        assert np.isnan(norms[:, names.index("4")]).all()


def test_on_error_raise_raises_what_a_hook_raises(tmp_path):
    model = _model()
    with normviz.Recorder(model, tmp_path / "run.h5", on_error="raise") as rec:
        with pytest.raises(RuntimeError, match="hostile tensor"):
            _train(model, rec, steps=1)


class Swapping(nn.Module):
    """A layer that replaces its weight by a new parameter (another shape's worth of values,
    the same shape) between steps, as weight surgery or re-initialisation does."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_a_module_that_replaces_its_parameters_keeps_being_measured(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(Swapping(), nn.LayerNorm(8), nn.Linear(8, 2))
    g = torch.Generator().manual_seed(2)
    expected = []
    with normviz.Recorder(model, tmp_path / "run.h5") as rec:
        for step in range(4):
            if step == 2:  # new parameters: a new optimizer, as a user would make
                model[0].fc.weight = nn.Parameter(torch.randn(8, 8, generator=g))
                model[0].fc.bias = nn.Parameter(torch.zeros(8, dtype=torch.float32))
            opt = torch.optim.SGD(model.parameters(), lr=0.1)
            loss = model(torch.randn(5, 8, generator=g)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            fc = model[0].fc
            expected.append(torch.cat([fc.weight.grad.double().ravel(), fc.bias.grad.double().ravel()]).norm().item())
            opt.step()
            rec.step()
    with normviz.open(tmp_path / "run.h5") as run:
        names, norms = run.grad("grad_norm")
        np.testing.assert_allclose(norms[:, names.index("0.fc")], expected, rtol=1e-5)
        assert np.isfinite(run.grad("update_ratio")[1][:, names.index("0.fc")]).all()
