"""torch.compile: a compiled model records the same statistics as eager.

On torch 2.13, CPU (see docs/integrations.md):
- ``Recorder(model)`` then ``torch.compile(model, fullgraph=True)``: no graph break, one
  graph per arming state (recorded / not recorded), on ``aot_eager`` and ``inductor``;
  the hooks' work runs in normviz's custom operators (normviz/record/compiled.py).
- Switching to the eager module on recorded steps (``model if rec.steps_seen % rec.every
  == 0 else compiled``): 0 graph breaks, 1 graph, no recompile when recording turns on
  and off.
- ``Recorder(torch.compile(model))``: the hooks go on the original module.
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


def make_cnn() -> nn.Module:
    """Convolutions with BatchNorm, an in-place ReLU and GroupNorm, then LayerNorm."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.Conv2d(8, 8, 3), nn.GroupNorm(2, 8),
        nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.LayerNorm(16), nn.Linear(16, 3),
    )


def train(path, *, steps: int, every: int = 1, how: str = "eager", backend: str = BACKEND, fullgraph: bool = False,
          model_fn=make_model, micro: int = 1):
    model = model_fn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    rec = normviz.Recorder(model, path, every=every)  # hooks first, then compile
    compiled = torch.compile(model, backend=backend, fullgraph=fullgraph) if how != "eager" else model
    conv = model_fn is make_cnn
    losses = []
    for _ in range(steps):
        if how == "switch":  # eager module on recorded steps, compiled one otherwise
            fn = model if rec.steps_seen % rec.every == 0 else compiled
        else:
            fn = compiled
        opt.zero_grad()
        for _ in range(micro):  # gradient accumulation: several forward passes per step
            x = torch.randn(4, 3, 8, 8, generator=g) if conv else torch.randn(32, 8, generator=g)
            y = torch.randint(0, 3, (x.shape[0],), generator=g)
            loss = nn.functional.cross_entropy(fn(x), y)
            loss.backward()
        opt.step()
        rec.step(loss=loss.detach())
        losses.append(loss.item())
    rec.close()
    return losses


def assert_same_run(a_path, b_path, layer: str = "1", rtol: float = 1e-5):
    with normviz.open(a_path) as a, normviz.open(b_path) as b:
        assert list(a.steps) == list(b.steps)
        assert [(l.name, l.kind, l.calls) for l in a.layers] == [(l.name, l.kind, l.calls) for l in b.layers]
        # Sites in program order: inductor schedules the observing operators by their data
        # unless they are chained (normviz.record.compiled._chain).
        assert [(s.layer, s.role, s.call) for s in a.sites] == [(s.layer, s.role, s.call) for s in b.sites]
        for stat in ("mean", "std", "min", "max", "output_grad_norm"):
            np.testing.assert_allclose(a.stat_all(stat)[1], b.stat_all(stat)[1], rtol=rtol, atol=1e-6)
        np.testing.assert_allclose(a.stat("channel_var", layer, "input"), b.stat("channel_var", layer, "input"),
                                   rtol=rtol)
        for stat in ("grad_norm", "weight_norm", "update_ratio"):
            np.testing.assert_allclose(a.grad(stat)[1], b.grad(stat)[1], rtol=rtol, atol=1e-7)
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
    assert sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] == 1  # every step recorded: one arming state


@pytest.mark.parametrize("micro", [1, 2])
def test_fullgraph_records_with_no_break_and_one_graph_per_arming_state(tmp_path, micro):
    # Recorded and unrecorded steps alternate; an in-place ReLU follows a recorded
    # convolution; with micro=2 each step runs two forward passes (calls count per pass).
    train(tmp_path / "eager.h5", steps=5, every=2, model_fn=make_cnn, micro=micro)
    torch_dynamo.reset()
    counters.clear()
    train(tmp_path / "compiled.h5", steps=5, every=2, how="compiled", fullgraph=True, model_fn=make_cnn, micro=micro)
    assert sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] == 2  # recorded, not recorded: never again after
    assert_same_run(tmp_path / "eager.h5", tmp_path / "compiled.h5", layer="1")
    assert_recorded(tmp_path / "compiled.h5")


def test_inductor_fullgraph_smoke(tmp_path):
    # The real compiler (C++ kernels on CPU): reordered, fused kernels and reused buffers
    # must still hand every site's tensor to the recorder as the program computed it.
    train(tmp_path / "eager.h5", steps=3, every=2, model_fn=make_cnn)
    torch_dynamo.reset()
    counters.clear()
    train(tmp_path / "compiled.h5", steps=3, every=2, how="compiled", backend="inductor", fullgraph=True,
          model_fn=make_cnn)
    assert sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] == 2
    assert_same_run(tmp_path / "eager.h5", tmp_path / "compiled.h5", layer="1", rtol=1e-4)
    assert_recorded(tmp_path / "compiled.h5")


def assert_recorded(path):
    """Every site and every tap has values (equal NaNs would pass assert_same_run)."""
    with normviz.open(path) as run:
        for stat in ("mean", "std", "min", "max", "output_grad_norm"):
            assert np.isfinite(run.stat_all(stat)[1]).all(), stat
        assert np.isfinite(run.grad("grad_norm")[1]).all()


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


def test_a_model_compiled_before_the_recorder_is_reported_not_silently_unrecorded(tmp_path, monkeypatch):
    # Dynamo does not guard on module hooks by default: a graph compiled before the Recorder
    # existed never calls its hooks. The recorder says so instead of writing an empty run;
    # with hook guards on, the hooks are traced in and the run is recorded.
    def run(path):
        model = make_model()
        net = torch.compile(model, backend=BACKEND, fullgraph=True)
        net(torch.randn(4, 8))  # compiled before the recorder exists
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with normviz.Recorder(model, path) as rec:
            for _ in range(2):
                opt.zero_grad()
                net(torch.randn(4, 8)).square().mean().backward()
                opt.step()
                rec.step()
        with normviz.open(path) as r:
            return len(r.sites)

    with pytest.warns(RuntimeWarning, match="compiled graph does not call the recorder's hooks"):
        assert run(tmp_path / "stale.h5") == 0
    torch_dynamo.reset()
    monkeypatch.setattr(torch._dynamo.config, "skip_nnmodule_hook_guards", False)
    assert run(tmp_path / "guarded.h5") > 0
