"""End-to-end: what the Recorder writes equals float64 computations on the same tensors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

import normviz
from normviz.default_plugins.norm_kinds import normviz_classify_module


class HandRMSNorm(nn.Module):
    """An RMSNorm written by hand, as real models do: weight only."""

    def __init__(self, d: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


class ChannelsFirstLayerNorm(nn.Module):
    """ConvNeXt-style LayerNorm over C of (N, C, H, W)."""

    def __init__(self, c: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(c))
        self.bias = nn.Parameter(torch.zeros(c))
        self.eps = eps

    def forward(self, x):
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


def image_model(norm: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), norm, nn.ReLU(inplace=True), nn.Conv2d(8, 4, 3, padding=1))


def seq_model(norm: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Linear(6, 12), norm, nn.GELU(), nn.Linear(12, 3))


CASES = {
    "batch": (lambda: image_model(nn.BatchNorm2d(8)), "image", 1, "batch"),
    "instance": (lambda: image_model(nn.InstanceNorm2d(8, affine=True)), "image", 1, "sample-channel"),
    "group": (lambda: image_model(nn.GroupNorm(4, 8)), "image", 1, "group"),
    "layer-cf": (lambda: image_model(ChannelsFirstLayerNorm(8)), "image", 1, "channel"),
    "layer": (lambda: seq_model(nn.LayerNorm(12)), "seq", -1, "trailing"),
    "rms": (lambda: seq_model(nn.RMSNorm(12)), "seq", -1, "trailing"),
    "rms-hand": (lambda: seq_model(HandRMSNorm(12)), "seq", -1, "trailing"),
}


def _batch(kind: str, gen: torch.Generator) -> torch.Tensor:
    if kind == "image":
        return torch.randn(6, 3, 5, 5, generator=gen) * 2 + 3
    return torch.randn(4, 5, 6, generator=gen) * 2 + 3


def _groups(x: np.ndarray, how: str, g: int = 4) -> np.ndarray:
    if how == "batch":
        return np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    if how == "trailing":
        return x.reshape(-1, x.shape[-1])
    if how == "sample-channel":
        return x.reshape(x.shape[0] * x.shape[1], -1)
    if how == "group":
        return x.reshape(x.shape[0] * g, -1)
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


@pytest.mark.parametrize("case", list(CASES))
def test_site_statistics_equal_float64_reference(case, tmp_path):
    """Three steps: the first computes every statistic directly; later ones borrow what
    PyTorch's BatchNorm/GroupNorm/LayerNorm computed and leave the preceding layer's
    channel moments to it. Every step must equal float64."""
    build, data, cd, groups = CASES[case]
    torch.manual_seed(0)
    model = build()
    norm = model[1]
    seen: list[dict[str, np.ndarray]] = []

    def capture(module, args, output):
        seen.append({"input": args[0].detach().clone().double().numpy(), "output": output.detach().clone().double().numpy()})

    norm.register_forward_hook(capture)
    gen = torch.Generator().manual_seed(5)
    path = tmp_path / "r.h5"
    grads = {}
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with normviz.Recorder(model, path, statistics=["sample"]) as rec:
        for k in range(3):
            opt.zero_grad()
            model(_batch(data, gen) * (1 + k)).square().mean().backward()
            if k == 0:
                for name, p in model.named_parameters():
                    grads[name] = p.grad.detach().clone().double()
            opt.step()
            rec.step()
    with normviz.open(path) as run:
        layer = run.layers[1]
        assert layer.kind == ("layer" if case == "layer-cf" else case.split("-")[0])
        for k, step in enumerate(seen):
            for layer_name, role, ref in (("0", "output", step["input"]), ("1", "input", step["input"]), ("1", "output", step["output"])):
                chans = np.moveaxis(ref, cd % ref.ndim, 0).reshape(ref.shape[cd], -1)
                msg = f"step {k}, {layer_name} {role}"
                np.testing.assert_allclose(run.stat("channel_mean", layer_name, role)[k], chans.mean(1), rtol=1e-4, atol=1e-6, err_msg=msg)
                np.testing.assert_allclose(run.stat("channel_var", layer_name, role)[k], chans.var(1), rtol=1e-4, atol=1e-6, err_msg=msg)
                assert run.stat("mean", layer_name, role)[k] == pytest.approx(ref.mean(), rel=1e-4, abs=1e-6), msg
                assert run.stat("std", layer_name, role)[k] == pytest.approx(ref.std(), rel=1e-4), msg
                # a BatchNorm's output extrema are derived from its input's: float32 rounding
                assert run.stat("min", layer_name, role)[k] == pytest.approx(ref.min(), rel=1e-5, abs=1e-6), msg
                assert run.stat("max", layer_name, role)[k] == pytest.approx(ref.max(), rel=1e-5, abs=1e-6), msg
                assert run.stat("nonfinite", layer_name, role)[k] == 0
                assert run.stat("numel", layer_name, role)[k] == ref.size
                if layer_name == "0":
                    continue
                # normalization groups: percentiles over all groups of their mean and std/RMS
                rows = _groups(ref, groups)
                scale = rows.std(1) if not case.startswith("rms") else np.sqrt((rows**2).mean(1))
                levels = run.layout.group_levels
                np.testing.assert_allclose(run.stat("group_mean", "1", role)[k], np.percentile(rows.mean(1), levels), rtol=1e-4, atol=1e-5, err_msg=msg)
                np.testing.assert_allclose(run.stat("group_scale", "1", role)[k], np.percentile(scale, levels), rtol=1e-4, atol=1e-5, err_msg=msg)
                # percentiles and histogram are exact on the recorded sample
                sample = run.stat("sample", "1", role)[k].astype(np.float64)
                assert np.isin(sample.astype(np.float32), ref.astype(np.float32).ravel()).all()
                np.testing.assert_allclose(run.stat("percentiles", "1", role)[k], np.percentile(sample, run.layout.percentile_levels), rtol=1e-5, atol=1e-6)
                edges = run.hist_edges("1", role).astype(np.float64)
                hist = run.stat("hist", "1", role)[k]
                inner, _ = np.histogram(sample[(sample >= edges[0]) & (sample < edges[-1])], bins=edges)
                assert hist[0] == np.sum(sample < edges[0]) and hist[-1] == np.sum(sample >= edges[-1])
                np.testing.assert_array_equal(hist[1:-1], inner)
                assert hist.sum() == len(sample) == run.layout.sample_size
        # gradients of every layer with parameters
        names, gnorm = run.grad("grad_norm")
        _, gmean = run.grad("grad_abs_mean")
        _, gmax = run.grad("grad_abs_max")
        for j, lname in enumerate(names):
            gs = [g for n, g in grads.items() if n.rsplit(".", 1)[0] == lname]
            flat = torch.cat([g.reshape(-1) for g in gs])
            assert gnorm[0, j] == pytest.approx(flat.norm().item(), rel=1e-4)
            assert gmean[0, j] == pytest.approx(flat.abs().mean().item(), rel=1e-4)
            assert gmax[0, j] == pytest.approx(flat.abs().max().item(), rel=1e-5)


def test_batchnorm_running_stats_and_affine_params(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 1))
    x = torch.randn(100, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "bn.h5"
    with normviz.Recorder(model, path, max_channels=64) as rec:
        for _ in range(3):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
            rec.step()
    with normviz.open(path) as run:
        bn = model[1]
        np.testing.assert_allclose(run.module_stat("running_mean", "1")[-1], bn.running_mean.numpy(), rtol=1e-6)
        np.testing.assert_allclose(run.module_stat("running_var", "1")[-1], bn.running_var.numpy(), rtol=1e-6)
        np.testing.assert_allclose(run.module_stat("weight", "1")[-1], bn.weight.detach().numpy(), rtol=1e-6)
        np.testing.assert_allclose(run.module_stat("bias", "1")[-1], bn.bias.detach().numpy(), rtol=1e-6)
        # in training mode the output's per-channel mean/var sit at beta and gamma^2 * var/(var+eps)
        var_in = run.stat("channel_var", "1", "input")[-1]
        np.testing.assert_allclose(run.stat("channel_mean", "1", "output")[-1], run.module_stat("bias", "1")[-2], atol=1e-5)
        gamma = run.module_stat("weight", "1")[-2]
        np.testing.assert_allclose(run.stat("channel_var", "1", "output")[-1], gamma**2 * var_in / (var_in + bn.eps), rtol=1e-3)
        ratio = run.grad("update_ratio")[1]
        assert np.all(ratio > 0) and np.all(np.isfinite(ratio))


def test_every_records_multiples_and_scalars_every_step(tmp_path):
    from conftest import train

    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    path = tmp_path / "e.h5"
    losses = train(model, path, steps=7, every=3, batch=torch.randn(16, 4))
    with normviz.open(path) as run:
        assert run.steps.tolist() == [0, 3, 6]
        assert run.scalar_steps.tolist() == list(range(7))
        np.testing.assert_allclose(run.scalar("loss"), losses, rtol=1e-6)
        assert np.all(run.scalar("lr") == pytest.approx(1e-2))
        assert run.status["clean"] == 1


def test_forward_hooks_are_on_only_for_recorded_steps(tmp_path):
    # A module with any forward hook takes PyTorch's slow call path: steps that are not
    # recorded run without the recorder's hooks. The user's own hooks stay where they are.
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    seen = []
    model[1].register_forward_hook(lambda m, a, o: seen.append(1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)

    def counts():
        return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]

    bare = counts()
    rec = normviz.Recorder(model, tmp_path / "h.h5", every=3)
    armed = counts()
    assert sum(armed) > sum(bare)
    for step in range(7):
        assert counts() == (armed if step % 3 == 0 else bare), step
        loss = model(torch.randn(16, 4)).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec.step(loss=loss)
    rec.close()
    assert counts() == bare and len(seen) == 7
    with normviz.open(tmp_path / "h.h5") as run:
        assert run.steps.tolist() == [0, 3, 6]


def test_scalars_far_between_recorded_steps_are_batched_detached_and_exact(tmp_path, monkeypatch):
    from normviz.record import recorder as R

    monkeypatch.setattr(R, "SCALAR_BATCH", 8)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    losses, extra = [], []
    with normviz.Recorder(model, tmp_path / "b.h5", every=20) as rec:
        for step in range(45):
            loss = model(torch.randn(16, 4)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            twice = loss.detach().double() * 2
            rec.step(loss=loss, twice=twice, plain=float(step), ignored=torch.ones(3))
            losses.append(loss.item())
            extra.append(twice.item())
            # The recorder keeps neither the graph of a loss nor more than a batch of steps.
            assert len(rec._pending_scalars) < 8
            assert all(not v.requires_grad for _, _, values in rec._pending_scalars
                       for v in values.values() if isinstance(v, torch.Tensor))
    with normviz.open(tmp_path / "b.h5") as run:
        assert run.steps.tolist() == [0, 20, 40]
        assert run.scalar_steps.tolist() == list(range(45))
        np.testing.assert_array_equal(run.scalar("loss"), np.float32(losses).astype(np.float64))
        np.testing.assert_array_equal(run.scalar("twice"), extra)
        np.testing.assert_array_equal(run.scalar("plain"), np.arange(45.0))
        assert "ignored" not in run.scalar_names


def test_shared_module_gets_one_site_per_call(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(5)
            self.fc = nn.Linear(5, 5)

        def forward(self, x):
            return self.norm(self.fc(self.norm(x)))

    model = Tied()
    path = tmp_path / "t.h5"
    from conftest import train

    train(model, path, steps=2, batch=torch.randn(3, 5) * 4 + 1)
    with normviz.open(path) as run:
        info = {layer.name: layer for layer in run.layers}
        assert info["norm"].calls == 2 and info["fc"].calls == 1
        first = run.stat("mean", "norm", "input", call=0)
        second = run.stat("mean", "norm", "input", call=1)
        assert not np.allclose(first, second)


def test_hooks_are_removed_on_close_and_on_error(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    before = [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()]
    with pytest.raises(ZeroDivisionError):
        with normviz.Recorder(model, tmp_path / "x.h5"):
            model(torch.randn(5, 3))
            raise ZeroDivisionError("the training loop failed")
    assert [(len(m._forward_hooks), len(m._forward_pre_hooks)) for m in model.modules()] == before
    from torch.optim.optimizer import _global_optimizer_post_hooks, _global_optimizer_pre_hooks

    assert not _global_optimizer_pre_hooks and not _global_optimizer_post_hooks


def test_existing_file_is_never_overwritten(tmp_path):
    path = tmp_path / "a.h5"
    path.write_bytes(b"precious")
    with pytest.raises(normviz.errors.NormvizError, match="exists"):
        normviz.Recorder(nn.Linear(2, 2), path)
    assert path.read_bytes() == b"precious"


def test_eval_passes_are_not_recorded(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    path = tmp_path / "ev.h5"
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 3)
    with normviz.Recorder(model, path) as rec:
        opt.zero_grad()
        model(x).sum().backward()
        opt.step()
        model.eval()
        with torch.no_grad():
            model(x * 100)  # must not overwrite the training step's statistics
        model.train()
        rec.step()
    with normviz.open(path) as run:
        assert abs(run.stat("mean", "1", "input")[0]) < 10


class T5StyleLayerNorm(nn.Module):
    """Named LayerNorm, computes an RMS norm (as T5 does)."""

    def __init__(self, d):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.variance_epsilon = 1e-6

    def forward(self, x):
        var = x.pow(2).mean(-1, keepdim=True)
        return self.weight * (x * torch.rsqrt(var + self.variance_epsilon))


@pytest.mark.parametrize(
    "module,kind,cd",
    [
        (nn.BatchNorm1d(4), "batch", 1),
        (nn.SyncBatchNorm(4), "batch", 1),
        (nn.LazyBatchNorm2d(), "batch", 1),
        (nn.InstanceNorm1d(4), "instance", 1),
        (nn.GroupNorm(2, 4), "group", 1),
        (nn.LayerNorm(4), "layer", -1),
        (nn.RMSNorm(4), "rms", -1),
        (HandRMSNorm(4), "rms", -1),
        (T5StyleLayerNorm(4), "rms", -1),
        (ChannelsFirstLayerNorm(4), "layer", 1),
    ],
)
def test_norm_classification(module, kind, cd):
    state = torch.get_rng_state()
    spec = normviz_classify_module(name="n", module=module)
    assert torch.equal(state, torch.get_rng_state())
    assert spec is not None and spec.kind == kind and spec.channel_dim == cd


@pytest.mark.parametrize("module", [nn.Linear(4, 4), nn.Conv2d(3, 3, 1), nn.Embedding(5, 4), nn.Identity(), nn.ReLU()])
def test_ordinary_layers_are_not_norms(module):
    assert normviz_classify_module(name="x", module=module) is None


def test_wide_channel_series_are_thinned_to_evenly_spaced_channels(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 40), nn.BatchNorm1d(40))
    x = torch.randn(50, 4)
    seen = {}

    def capture(module, args, output):
        seen.setdefault("in", args[0].detach().double().clone())

    model[1].register_forward_hook(capture)
    path = tmp_path / "thin.h5"
    with normviz.Recorder(model, path, max_channels=8) as rec:
        model(x).sum().backward()
        rec.step()
    with normviz.open(path) as run:
        idx = run.channel_index("1", "input")
        assert len(idx) == 8 and idx[0] == 0 and idx[-1] == 39 and np.all(np.diff(idx) > 0)
        np.testing.assert_allclose(run.stat("channel_mean", "1", "input")[0], seen["in"].mean(0).numpy()[idx], rtol=1e-5)
        # global statistics still use every channel
        assert run.stat("mean", "1", "input")[0] == pytest.approx(seen["in"].mean().item(), rel=1e-5)
        assert run.module_stat("running_mean", "1").shape == (1, 8)


def test_rows_finished_together_keep_their_own_groups_and_samples(tmp_path):
    """Rows are finished on the host one flush at a time; batch sizes that differ between
    steps give each row its own number of normalization groups."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    seen: list[np.ndarray] = []
    model[1].register_forward_hook(lambda m, a, o: seen.append(a[0].detach().double().numpy()))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path / "r.h5"
    with normviz.Recorder(model, path, statistics=["sample"], flush_every=4) as rec:
        for batch in (7, 3, 12, 1, 5):
            opt.zero_grad()
            model(torch.randn(batch, 6) * (1 + batch)).square().mean().backward()
            opt.step()
            rec.step()
    with normviz.open(path) as run:
        levels = run.layout.group_levels
        means = run.stat("group_mean", "1", "input")
        samples = run.stat("sample", "1", "input").astype(np.float64)
        pcts = run.stat("percentiles", "1", "input")
        assert means.shape[0] == len(seen) == 5
        for k, x in enumerate(seen):
            np.testing.assert_allclose(means[k], np.percentile(x.mean(1), levels), rtol=1e-4, atol=1e-5)
            assert np.isin(samples[k].astype(np.float32), x.astype(np.float32).ravel()).all()
            np.testing.assert_allclose(pcts[k], np.percentile(samples[k], run.layout.percentile_levels), rtol=1e-5)
            assert run.stat("numel", "1", "input")[k] == x.size


class _SometimesNormed(nn.Module):
    """A model whose BatchNorm runs only while ``use_norm`` is set (a dynamic graph)."""

    def __init__(self, inplace: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.head = nn.Conv2d(6, 2, 3)
        self.use_norm = True
        self.inplace = inplace

    def forward(self, x):
        h = self.conv(x)
        if self.use_norm:
            h = self.bn(h)
        h = torch.relu_(h) if self.inplace else torch.relu(h)
        return self.head(h)


@pytest.mark.parametrize("inplace", [False, True])
def test_layer_that_stops_feeding_a_norm_is_still_reduced(tmp_path, inplace):
    """After a recorded step where the conv's output was the BatchNorm's input, the conv
    leaves its channel moments to the BatchNorm's own statistics; when the BatchNorm
    does not run, they are computed anyway (or NaN, with a warning, if the tensor was
    changed in place first)."""
    torch.manual_seed(0)
    model = _SometimesNormed(inplace)
    seen: list[np.ndarray] = []
    model.conv.register_forward_hook(lambda m, a, o: seen.append(o.detach().double().numpy().copy()))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    path = tmp_path / "r.h5"
    with normviz.Recorder(model, path) as rec:
        for k in range(4):
            model.use_norm = k != 2
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                opt.zero_grad()
                model(torch.randn(4, 3, 7, 7)).square().mean().backward()
                opt.step()
                rec.step()
            messages = [str(w.message) for w in caught]
            assert len(messages) == (1 if inplace and k == 2 else 0), messages
    with normviz.open(path) as run:
        means = run.stat("channel_mean", "conv", "output")
        for k, ref in enumerate(seen):
            expected = ref.transpose(1, 0, 2, 3).reshape(6, -1).mean(1)
            if inplace and k == 2:
                assert np.isnan(means[k]).all()
            else:
                np.testing.assert_allclose(means[k], expected, rtol=1e-4, atol=1e-6, err_msg=f"step {k}")


def test_a_statistic_of_the_wrong_width_warns_once_and_stores_nan(tmp_path):
    """A plugin statistic whose compute() disagrees with its width() is said, not silently NaN."""
    from normviz import Statistic, hookimpl
    from normviz.plugins import get_plugin_host

    class Wrong:
        @hookimpl
        def normviz_register_statistics(self, register):
            register(Statistic("two_for_one", lambda ctx: ctx.x.float().abs().mean().repeat(2), lambda site: 1))

    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.warns(RuntimeWarning, match="'two_for_one'.*returned 2 values.*its width is 1") as seen:
        with normviz.Recorder(model, tmp_path / "w.h5", plugins=get_plugin_host(entrypoints=False, extra=[Wrong()])) as rec:
            for _ in range(2):
                opt.zero_grad()
                model(torch.randn(5, 3)).square().mean().backward()
                opt.step()
                rec.step()
    assert sum("two_for_one" in str(w.message) for w in seen) == 1
    with normviz.open(tmp_path / "w.h5") as run:
        assert np.isnan(run.stat("two_for_one", "1", "output")).all()
