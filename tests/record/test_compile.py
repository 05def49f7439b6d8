"""torch.compile: a compiled model records the same statistics as eager.

Measured on torch 2.13, CPU, backend "aot_eager" (see docs/integrations.md):
- ``Recorder(model)`` then ``torch.compile(model)``: works, same statistics, but dynamo
  traces into the recorder's hooks: 13 graph breaks and 27 graphs for a 6-layer model on
  the first recorded step (RNG generator creation, ``manual_seed``, Python bookkeeping),
  and ``_observe`` hits the recompile limit (one guard per layer name). Slow to compile,
  eager-like to run.
- Switching to the eager module on recorded steps (``model if rec.steps_seen % rec.every
  == 0 else compiled``): 0 graph breaks, 1 graph, no recompile when recording turns on
  and off.
- ``Recorder(torch.compile(model))`` (hooks on the OptimizedModule): dynamo fails with an
  internal AssertionError; attach to the original module instead.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import normviz

torch_dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402

BACKEND = "aot_eager"


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 3))


def train(path, *, steps: int, every: int = 1, how: str = "eager"):
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    rec = normviz.Recorder(model, path, every=every)  # hooks first, then compile
    compiled = torch.compile(model, backend=BACKEND) if how != "eager" else model
    losses = []
    for _ in range(steps):
        x = torch.randn(32, 8, generator=g)
        y = torch.randint(0, 3, (32,), generator=g)
        if how == "switch":  # eager module on recorded steps, compiled one otherwise
            fn = model if rec.steps_seen % rec.every == 0 else compiled
        else:
            fn = compiled
        opt.zero_grad()
        loss = nn.functional.cross_entropy(fn(x), y)
        loss.backward()
        opt.step()
        rec.step(loss=loss.detach())
        losses.append(loss.item())
    rec.close()
    return losses


def assert_same_run(a_path, b_path):
    with normviz.open(a_path) as a, normviz.open(b_path) as b:
        assert list(a.steps) == list(b.steps)
        assert [(l.name, l.kind, l.calls) for l in a.layers] == [(l.name, l.kind, l.calls) for l in b.layers]
        for stat in ("mean", "std", "min", "max", "output_grad_norm"):
            np.testing.assert_allclose(a.stat_all(stat)[1], b.stat_all(stat)[1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a.stat("channel_var", "1", "input"), b.stat("channel_var", "1", "input"), rtol=1e-5)
        for stat in ("grad_norm", "weight_norm", "update_ratio"):
            np.testing.assert_allclose(a.grad(stat)[1], b.grad(stat)[1], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(a.scalar("loss"), b.scalar("loss"), rtol=1e-6)


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch_dynamo.reset()
    counters.clear()
    yield
    torch_dynamo.reset()


def test_compiled_model_records_like_eager(tmp_path):
    eager = train(tmp_path / "eager.h5", steps=2)
    torch_dynamo.reset()
    counters.clear()
    compiled = train(tmp_path / "compiled.h5", steps=2, how="compiled")
    np.testing.assert_allclose(eager, compiled, rtol=1e-6)
    assert_same_run(tmp_path / "eager.h5", tmp_path / "compiled.h5")
    # Dynamo traces into the recorder's hooks: it works, at the cost of graph breaks.
    assert counters["stats"]["unique_graphs"] >= 1


def test_switching_to_eager_on_recorded_steps_has_no_break_and_no_recompile(tmp_path):
    train(tmp_path / "eager.h5", steps=4, every=2)
    torch_dynamo.reset()
    counters.clear()
    train(tmp_path / "switch.h5", steps=4, every=2, how="switch")
    assert sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] == 1  # compiled once, never again as recording turns on/off
    assert_same_run(tmp_path / "eager.h5", tmp_path / "switch.h5")


def test_compiled_model_with_recording_turning_on_and_off_records_like_eager(tmp_path):
    # The recorder's forward hooks come and go with `every`; the compiled model must still
    # record on exactly the recorded steps.
    eager = train(tmp_path / "eager.h5", steps=5, every=2)
    torch_dynamo.reset()
    compiled = train(tmp_path / "compiled.h5", steps=5, every=2, how="compiled")
    np.testing.assert_allclose(eager, compiled, rtol=1e-6)
    assert_same_run(tmp_path / "eager.h5", tmp_path / "compiled.h5")


def test_recorder_on_the_compiled_module(tmp_path):
    model = make_model()
    compiled = torch.compile(model, backend=BACKEND)
    with normviz.Recorder(compiled, tmp_path / "on-compiled.h5") as rec:
        loss = compiled(torch.randn(4, 8)).square().mean()
        loss.backward()
        rec.step()
    with normviz.open(tmp_path / "on-compiled.h5") as run:
        assert run.norm_kind == "mixed"
