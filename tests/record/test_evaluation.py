"""Eval passes as series of their own (Recorder.evaluating), against float64, and the files they make."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

import normviz
from normviz.errors import MissingDataError, NormvizError, UsageError
from normviz.folders import collect_runs


def cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))


def train(model: nn.Module, path, *, evals: dict[int, list[torch.Tensor]] | None = None, train_mode_eval=False,
          every: int = 1) -> list[dict[str, np.ndarray]]:
    """Six SGD steps; after step i, an eval pass over ``evals[i]`` (eval mode unless ``train_mode_eval``).
    Returns the float64 reference of each eval pass's first batch: BatchNorm output moments and gap."""
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    want = []
    with normviz.Recorder(model, path, every=every, statistics=["bn_running_gap"]) as rec:
        for i in range(6):
            x = torch.randn(16, 3, 8, 8, generator=gen)
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
            rec.step()
            if evals and i in evals:
                model.train(train_mode_eval)
                bn = model[1]
                first = evals[i][0].double()
                with torch.no_grad():
                    z = nn.functional.conv2d(first, model[0].weight.double(), model[0].bias.double())
                rm, rv = bn.running_mean.double(), bn.running_var.double()
                w, b = bn.weight.detach().double()[:, None, None], bn.bias.detach().double()[:, None, None]
                y = (z - rm[:, None, None]) / (rv[:, None, None] + bn.eps).sqrt() * w + b
                n = z.numel() / z.shape[1]
                mean_b = z.mean((0, 2, 3))
                var_b = z.var((0, 2, 3), unbiased=False) * n / (n - 1)
                want.append({
                    "mean": y.mean((0, 2, 3)).numpy(), "var": y.var((0, 2, 3), unbiased=False).numpy(),
                    "gap": np.array([float(((mean_b - rm).abs() / (rv + bn.eps).sqrt()).mean()),
                                     float(((var_b + bn.eps) / (rv + bn.eps)).log().abs().mean())]),
                })
                # A training-mode pass would update the running statistics: they are put back after it.
                saved = [t.clone() for t in bn.buffers()]
                with torch.no_grad(), rec.evaluating():
                    for batch in evals[i]:
                        model(batch)
                    for t, value in zip(bn.buffers(), saved):
                        t.copy_(value)
                model.train()
    return want


def eval_batches(n: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(32, 3, 8, 8, generator=gen) for _ in range(n)]


def test_an_eval_pass_is_a_row_of_its_series_at_the_step_it_ran_in(tmp_path):
    evals = {1: eval_batches(3, 10), 4: eval_batches(2, 11)}
    want = train(cnn(), tmp_path / "run.h5", evals=evals)
    with normviz.open(tmp_path / "run.h5") as run:
        assert run.eval_series() == ["eval"]
        ev = run.eval()
        # Evaluated after steps 1 and 4: the weights after 2 and 5 updates, the steps of those rows.
        assert ev.steps.tolist() == [2, 5]
        assert ev.meta["series"] == "eval" and ev.meta["series_of"] == "run.h5"
        assert ev.label == "run (eval)"
        # The first batch of each pass, through the BatchNorm in eval mode (running statistics).
        got_mean = ev.stat("channel_mean", "1", "output")
        got_var = ev.stat("channel_var", "1", "output")
        gap = ev.stat("bn_running_gap", "1", "input")
        for row, ref in enumerate(want):
            np.testing.assert_allclose(got_mean[row], ref["mean"], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(got_var[row], ref["var"], rtol=1e-4)
            np.testing.assert_allclose(gap[row], ref["gap"], rtol=1e-4)
        assert ev.layers and not any(layer.has_grads for layer in ev.layers)


def test_training_statistics_are_those_of_a_run_without_eval_passes(tmp_path):
    # Even with the model left in training mode inside the block, the training rows are untouched.
    train(cnn(), tmp_path / "plain.h5")
    train(cnn(), tmp_path / "evald.h5", evals={i: eval_batches(2, i) for i in range(6)}, train_mode_eval=True)
    with normviz.open(tmp_path / "plain.h5") as a, normviz.open(tmp_path / "evald.h5") as b:
        assert a.steps.tolist() == b.steps.tolist()
        for stat, layer, role in [("channel_mean", "1", "input"), ("std", "4", "output"),
                                  ("bn_running_gap", "1", "input")]:
            np.testing.assert_array_equal(a.stat(stat, layer, role), b.stat(stat, layer, role))
        np.testing.assert_array_equal(a.grad("grad_norm")[1], b.grad("grad_norm")[1])
        assert b.eval().steps.tolist() == [1, 2, 3, 4, 5, 6]


def test_one_pass_per_step_and_series_and_named_series_have_their_own_file(tmp_path):
    model = cnn()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with normviz.Recorder(model, tmp_path / "run.h5") as rec:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(8, 3, 8, 8)).sum().backward()
            opt.step()
            rec.step()
            model.eval()
            with torch.no_grad():
                for series in ("eval", "eval", "test"):
                    with rec.evaluating(series):
                        model(torch.randn(4, 3, 8, 8))
            model.train()
        with pytest.raises(UsageError, match="nest"), rec.evaluating(), rec.evaluating():
            pass
        with pytest.raises(UsageError, match="series name"), rec.evaluating("a/b"):
            pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.eval-test.h5", "run.eval.h5", "run.h5"]
    with normviz.open(tmp_path / "run.h5") as run:
        assert run.eval_series() == ["eval", "test"]
        assert run.eval().steps.tolist() == [1, 2, 3]
        assert run.eval("test").steps.tolist() == [1, 2, 3]
        with pytest.raises(MissingDataError, match="no eval series 'val'"):
            run.eval("val")
    # A folder of runs lists the training run only; its series come with it.
    paths, _ = collect_runs([str(tmp_path)])
    assert [p.name for p in paths] == ["run.h5"]
    proc = subprocess.run([sys.executable, "-m", "normviz", "info", str(tmp_path / "run.h5"), "--json"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["eval_series"] == ["eval", "test"]


def test_a_marked_pass_that_ran_nothing_leaves_no_series_file(tmp_path):
    model = cnn()
    with normviz.Recorder(model, tmp_path / "run.h5") as rec:
        model(torch.randn(4, 3, 8, 8)).sum().backward()
        rec.step()
        with rec.evaluating():
            pass  # no forward pass of the model
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]
    with normviz.open(tmp_path / "run.h5") as run:
        assert run.eval_series() == []


def test_stale_series_files_are_refused_or_replaced_with_the_run(tmp_path):
    (tmp_path / "run.eval.h5").write_bytes(b"stale")
    with pytest.raises(NormvizError, match="run.eval.h5: file exists"):
        normviz.Recorder(cnn(), tmp_path / "run.h5")
    rec = normviz.Recorder(cnn(), tmp_path / "run.h5", overwrite=True)
    rec.close()
    assert not (tmp_path / "run.eval.h5").exists()


def test_precise_bn_probe_forwards_are_not_recorded(tmp_path):
    # A train-mode probe inside a recorded step leaves the training row as it was.
    def run(path, probe: bool) -> np.ndarray:
        model = cnn()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        gen = torch.Generator().manual_seed(3)
        with normviz.Recorder(model, path) as rec:
            for _ in range(3):
                opt.zero_grad()
                model(torch.randn(8, 3, 8, 8, generator=gen)).sum().backward()
                opt.step()
                rec.step()
                if probe:
                    with normviz.precise_bn(model, eval_batches(3, 5)):
                        pass
        with normviz.open(path) as r:
            return r.stat("channel_mean", "1", "input")

    np.testing.assert_array_equal(run(tmp_path / "a.h5", False), run(tmp_path / "b.h5", True))
