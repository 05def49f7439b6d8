"""Statistics derived at the end of the step: all GroupNorm and BatchNorm layers of a step
computed together equal each computed alone, and each equals the direct observation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import normviz
from normviz.datatypes import NormSpec
from normviz.record import core, derive
from normviz.record.deferred import EpsVectors, FromInvStd, settle
from normviz.record.sampling import Sampler
from normviz.record.sizes import GROUP_LEVELS


def sampler() -> Sampler:
    gen = torch.Generator().manual_seed(0)
    return Sampler(lambda device: gen)


def layers() -> list[tuple[nn.Module, torch.Tensor]]:
    """Norm layers of several widths and group counts, with inputs far from zero mean."""
    gen = torch.Generator().manual_seed(3)
    out = []
    for module, shape in ((nn.GroupNorm(3, 12), (6, 12, 5, 5)), (nn.GroupNorm(8, 16, affine=False), (6, 16, 4, 4)),
                          (nn.GroupNorm(1, 4, eps=1e-3), (6, 4, 7)), (nn.BatchNorm2d(8), (6, 8, 3, 3)),
                          (nn.BatchNorm1d(5), (40, 5))):
        with torch.no_grad():
            for p in module.parameters():
                p.copy_(torch.randn(p.shape, generator=gen))
        x = torch.randn(shape, generator=gen) * 3 + 20
        x[1, 2] = 20.0  # a constant (sample, channel)
        out.append((module, x))
    return out


def observe_all() -> list[core.CoreObs]:
    """Each layer's output, derived from its input's observation in the hooks' way."""
    obs = []
    for module, x in layers():
        y = module(x).detach()
        with torch.no_grad():
            if isinstance(module, nn.GroupNorm):
                inp = derive.observe_instances(x, sampler())
                obs.append(derive.derive_groupnorm_output(y, inp, module, sampler()))
            else:
                inp = core.observe(x, 1, None, sampler())
                obs.append(derive.derive_batchnorm_output(y, inp, module.weight, module.bias, module.eps, sampler()))
        obs.append(inp)
    return obs


def fields(o: core.CoreObs) -> list[np.ndarray]:
    group = o.group
    assert group is not None or o.derive is None
    return [t.numpy() for t in (o.mean_c, o.var_c, o.min_c, o.max_c)] + (
        [np.sort(group[0].numpy()), np.sort(group[1].numpy())] if group is not None else [])


def test_together_equals_alone():
    together = observe_all()
    derive.RecipeRunner().run(together)
    assert all(o.derive is None for o in together)
    alone = observe_all()
    for a, b in zip(together, alone):
        for got, want in zip(fields(a), fields(b)):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_derived_equals_direct():
    obs = observe_all()
    derive.RecipeRunner().run(obs)
    for (module, x), out in zip(layers(), obs[::2]):
        y = module(x).detach()
        spec = NormSpec("group", 1, "group", num_groups=module.num_groups) if isinstance(module, nn.GroupNorm) \
            else NormSpec("batch")
        direct = core.observe(y, 1, spec, sampler())
        for got, want in zip(fields(out), fields(direct)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_settle_batches_variances_stds_and_rms_like_alone():
    gen = torch.Generator().manual_seed(5)
    inf, nan = float("inf"), float("nan")
    invstd = [torch.rand(7, generator=gen) + 0.1, torch.tensor([0.0, 2.0]), torch.tensor([inf, 1.0]),
              torch.tensor([nan, 0.5])]
    mean = torch.randn(2, generator=gen)

    def make():
        return [FromInvStd(invstd[0], eps=1e-3), FromInvStd(invstd[1], zero_is_constant=True),
                FromInvStd(invstd[2], root=True), FromInvStd(invstd[3], eps=1e-5, root=True),
                FromInvStd(invstd[1], mean=mean), FromInvStd(invstd[1]), FromInvStd(invstd[1], eps=1e-5)]

    batched, alone = make(), make()
    settle(batched, EpsVectors())
    for a, b in zip(batched, alone):
        np.testing.assert_allclose(a.value().numpy(), b.value().numpy(), rtol=1e-7)
    # A constant channel: invstd 0 from the batch-norm kernel, inf from the others; variance 0.
    assert batched[1].value()[0] == 0 and batched[2].value()[0] == 0
    # Otherwise invstd 0 is a variance that overflowed: inf, with or without eps.
    assert batched[5].value()[0] == inf and batched[6].value()[0] == inf and batched[4].value()[0] == inf
    assert torch.isnan(batched[3].value()[0])
    np.testing.assert_allclose(batched[4].value()[1].item(), (1 / 2.0**2 + mean[1] ** 2).sqrt().item(), rtol=1e-6)


def _train(path, **kwargs) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.GroupNorm(2, 8))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with normviz.Recorder(model, path, **kwargs) as rec:
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(4, 3, 10, 10)).square().mean().backward()
            opt.step()
            rec.step()


def test_a_derivation_that_fails_leaves_its_sites_nan_and_training_on(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("unexpected layer")

    monkeypatch.setattr(derive, "run_batchnorm_outputs", broken)
    with pytest.warns(RuntimeWarning, match="end-of-step statistics failed together .*unexpected layer"):
        _train(tmp_path / "r.h5")
    with normviz.open(tmp_path / "r.h5") as run:
        # The BatchNorm's derived output is recorded as a site that did not run.
        for stat in ("mean", "channel_var", "percentiles", "numel", "nonfinite"):
            assert np.isnan(run.stat(stat, "1", "output")).all(), stat
        assert (run.stat("hist", "1", "output") == 0).all()
        assert np.isfinite(run.stat("mean", "1", "input")).all()
        assert np.isfinite(run.stat("channel_var", "4", "output")).all()  # the GroupNorm's, derived too
        assert (run.stat("nonfinite", "4", "output") == 0).all()
    with pytest.raises(RuntimeError, match="unexpected layer"):
        _train(tmp_path / "strict.h5", on_error="raise")


def test_groupnorm_statistics_of_an_eval_pass_match_float64(tmp_path):
    """In an eval pass nothing is derived from a GroupNorm's output in the hook's way, and its
    input's statistics pool the per-(sample, channel) moments: both against float64."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.ReLU())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3, 10, 10) * 2 + 5
    with normviz.Recorder(model, tmp_path / "r.h5") as rec:
        for _ in range(2):
            opt.zero_grad()
            model(torch.randn(4, 3, 10, 10)).square().mean().backward()
            opt.step()
            rec.step()
        model.eval()
        with torch.no_grad(), rec.evaluating():
            model(x)
    with torch.no_grad():
        z = model[0](x).double()
        y = nn.functional.group_norm(z, 2, model[1].weight.double(), model[1].bias.double(), model[1].eps)
    with normviz.open(tmp_path / "r.h5") as run, run.eval() as ev:
        for role, t in (("input", z), ("output", y)):
            np.testing.assert_allclose(ev.stat("channel_mean", "1", role)[-1], t.mean((0, 2, 3)).numpy(),
                                       rtol=1e-4, atol=1e-5, err_msg=role)
            np.testing.assert_allclose(ev.stat("channel_var", "1", role)[-1], t.var((0, 2, 3), unbiased=False).numpy(),
                                       rtol=1e-4, atol=1e-5, err_msg=role)
            np.testing.assert_allclose(ev.stat("min", "1", role)[-1], float(t.min()), rtol=1e-5, err_msg=role)
        groups = z.reshape(4, 2, -1)
        levels = list(GROUP_LEVELS)  # NumPy's "linear" percentiles, as recorded
        np.testing.assert_allclose(ev.stat("group_mean", "1", "input")[-1], np.percentile(groups.mean(2).numpy(), levels),
                                   rtol=1e-4, atol=1e-5, err_msg="group means")
        np.testing.assert_allclose(ev.stat("group_scale", "1", "input")[-1],
                                   np.percentile(groups.std(2, unbiased=False).numpy(), levels), rtol=1e-4, atol=1e-5,
                                   err_msg="group stds")


def test_an_overflowing_variance_stays_inf_and_a_constant_one_zero():
    """A diverging run: one channel's values near 1e20 (its float32 variance overflows)."""
    x = torch.randn(8, 4, 5, 5) * 2 + 3
    x[:, 1] *= 1e20
    x[:, 2] = 7.0  # constant
    bn = nn.BatchNorm2d(4)
    y = bn(x.requires_grad_())
    with torch.no_grad():
        borrowed = core.borrow(bn, x, y, torch.Generator())
        obs = core.observe(x.detach(), 1, NormSpec("batch", 1, "batch"), sampler(), borrowed=borrowed)
        direct = core.observe(x.detach(), 1, None, sampler())  # the batch-norm statistics kernel
        rows = x.detach().reshape(8, 4, 25)[:, 1:3].reshape(16, 25)  # per-row: overflowing, constant
        layer = core.observe(rows, -1, NormSpec("layer", -1, "trailing"), sampler())
        rms = core.observe(rows, -1, NormSpec("rms", -1, "trailing", centered=False), sampler())
    derive.RecipeRunner().run([obs, direct, layer, rms])
    assert obs.var_c[1] == float("inf") and 0 <= obs.var_c[2] < 1e-7 * bn.eps  # borrowed: 1/rstd² − eps
    assert direct.var_c[2] == 0  # the kernel's invstd 0 of a constant channel
    assert (layer.group[1][0::2] == float("inf")).all() and (layer.group[1][1::2] == 0).all()
    assert (rms.group[1][0::2] == float("inf")).all()
    np.testing.assert_allclose(rms.group[1][1::2].numpy(), 7.0, rtol=1e-6)


def test_group_moments_keep_their_precision_far_from_zero():
    gen = torch.Generator().manual_seed(2)
    x = (torch.randn(64, 256, generator=gen, dtype=torch.float64) * 0.01 + 100).float()  # |mean| / std = 1e4
    obs = core.observe(x, -1, NormSpec("layer", -1, "trailing"), sampler())
    want = x.double().std(1, unbiased=False)
    np.testing.assert_allclose(obs.group[1].double().numpy(), want.numpy(), rtol=1e-5)
    np.testing.assert_allclose(obs.group[0].double().numpy(), x.double().mean(1).numpy(), rtol=1e-7)


def test_a_site_sharing_a_derived_tensor_keeps_its_own_groups():
    """A BatchNorm's output observed again by a norm site without groups (a DyT-like layer)."""
    bn = nn.BatchNorm2d(4)
    x = torch.randn(6, 4, 3, 3)
    y = bn(x).detach()
    inp = core.observe(x, 1, None, sampler())
    out = derive.derive_batchnorm_output(y, inp, bn.weight, bn.bias, bn.eps, sampler())
    again = core.observe(y, 1, NormSpec("dyt", 1, None), sampler(), base=out)
    derive.RecipeRunner().run([inp, out, again])
    assert out.group is not None and again.group is None
    np.testing.assert_allclose(again.var_c.numpy(), out.var_c.numpy())
