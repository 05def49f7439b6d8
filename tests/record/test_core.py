"""The fused, batched core statistics equal the per-site reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from normviz.datatypes import NormSpec, Site
from normviz.default_plugins.statistics import BUILTIN_STATISTICS
from normviz.record import assemble, core, derive, finish
from normviz.record import stats as S
from normviz.record.deferred import materialize
from normviz.record.sampling import Sampler

SPECS = [
    (NormSpec("batch", 1, "batch"), (8, 6, 4, 4), 1),
    (NormSpec("layer", -1, "trailing"), (3, 5, 12), -1),
    (NormSpec("group", 1, "group", num_groups=3), (4, 6, 3, 3), 1),
    (None, (7, 9), -1),
]



def sampler(seed: int = 0) -> Sampler:
    """A sampler drawing from one generator seeded with ``seed`` (as a fresh recorder's first step)."""
    gen = torch.Generator().manual_seed(seed)
    return Sampler(lambda device: gen)

def test_fused_equals_reference():
    gen_data = torch.Generator().manual_seed(0)
    tensors = [torch.randn(shape, generator=gen_data) * 3 + 2 for _, shape, _ in SPECS]
    tensors[1][0, 0, 0] = math.inf
    tensors[3][2, 3] = math.nan
    sites, observed, refs = [], [], []
    stored = []
    for (spec, shape, cd), x in zip(SPECS, tensors):
        c = shape[cd]
        kind = spec.kind if spec else None
        site = Site("l", "input", 0, kind, "M", c, cd % len(shape), min(c, 4))
        sites.append(site)
        idx = torch.linspace(0, c - 1, site.stored_channels).round().long() if c > 4 else None
        stored.append(idx)
        obs = core.observe(x, cd, spec, sampler(7))
        observed.append(obs)
        state = {"channel_index": idx} if idx is not None else {}
        ctx = S.SiteTensor(x, site, spec, torch.Generator().manual_seed(7), state)
        refs.append({s.name: s.compute(ctx) for s in BUILTIN_STATISTICS if s.fused and s.applies(site)})
    norm_rows = [i for i, (spec, _, _) in enumerate(SPECS) if spec is not None]
    assembler = assemble.CoreAssembler([s.channels for s in sites], stored, norm_rows, torch.device("cpu"))
    blocks = assembler.blocks(observed)
    edges = finish.first_edges(blocks.stats["min"].numpy(), blocks.stats["max"].numpy())
    samples, nonfinite, groups = finish.split_host(blocks.host.numpy(), len(sites))
    host = finish.host_values(samples, nonfinite, groups, blocks.group_sizes, blocks.numel, edges)
    produced = {name: t.double().numpy() for name, t in blocks.stats.items()} | host
    assert set(produced) == set(core.FUSED)
    for name, values in produced.items():
        rows = norm_rows if name.startswith("group_") else list(range(len(sites)))
        expected = torch.cat([refs[r][name].double().reshape(-1) for r in rows])
        np.testing.assert_allclose(values.reshape(-1), expected.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_missing_site_gives_nan_rows():
    x = torch.randn(4, 3)
    obs = core.observe(x, -1, None, sampler())
    assembler = assemble.CoreAssembler([3, 3], [None, None], [], torch.device("cpu"))
    blocks = assembler.blocks([obs, None])
    assert torch.isnan(blocks.stats["mean"][1]) and not torch.isnan(blocks.stats["mean"][0])
    edges = finish.first_edges(np.array([-1.0, -1.0]), np.array([1.0, 1.0]))
    host = finish.host_values(*finish.split_host(blocks.host.numpy(), 2), blocks.group_sizes, blocks.numel, edges)
    assert host["hist"][1].sum() == 0 and host["hist"][0].sum() == S.SAMPLE_SIZE
    assert np.isnan(host["percentiles"][1]).all() and np.isnan(host["nonfinite"][1]) and np.isnan(host["numel"][1])
    assert host["numel"][0] == 12 and host["nonfinite"][0] == 0


@pytest.mark.parametrize("m", [1, 5, 100])
def test_sorted_quantiles_rows_with_nan_padding(m):
    values = np.random.default_rng(0).normal(size=(3, m)).astype(np.float32)
    values[1, m // 2 :] = np.nan
    levels = [0.0, 25.0, 50.0, 100.0]
    q = finish.sorted_quantiles(np.sort(values, axis=1), (~np.isnan(values)).sum(1), levels)
    for i in range(3):
        row = values[i][~np.isnan(values[i])]
        if row.size:
            np.testing.assert_allclose(q[i], np.percentile(row.astype(np.float64), levels), rtol=1e-6)
        else:
            assert np.isnan(q[i]).all()


def test_sorted_histograms_match_numpy():
    rng = np.random.default_rng(1)
    samples = rng.normal(size=(2, 500)).astype(np.float32)
    samples[1, :7] = np.nan
    samples[0, :3] = [np.inf, -np.inf, 10.0]
    edges = np.stack([np.linspace(-2, 2, 9), np.linspace(-1, 3, 9)]).astype(np.float32)
    srt = np.sort(samples, axis=1)
    counts = finish.sorted_histograms(srt, (~np.isnan(samples)).sum(1), edges)
    for i in range(2):
        v = samples[i][~np.isnan(samples[i])]
        inner = [np.sum((v >= edges[i, j]) & (v < edges[i, j + 1])) for j in range(8)]
        expected = [np.sum(v < edges[i, 0]), *inner, np.sum(v >= edges[i, -1])]
        np.testing.assert_array_equal(counts[i], expected)
    assert counts[1].sum() == 493


def test_first_edges_match_the_torch_reference():
    lo = np.array([-1.0, 0.0, np.nan, 5.0], dtype=np.float32)
    hi = np.array([2.0, 0.0, 1.0, 5.0], dtype=np.float32)
    ref = S.first_edges(torch.from_numpy(lo)[:, None], torch.from_numpy(hi)[:, None]).numpy()
    np.testing.assert_allclose(finish.first_edges(lo, hi), ref, rtol=1e-6)


def test_batchnorm_output_derived_equals_observed():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0, 0.1, 1.0]))
        bn.bias.copy_(torch.tensor([0.3, -1.0, 0.0, 2.0, 0.5]))
    x = torch.randn(6, 5, 4, 4) * 3 + 7
    y = bn(x)
    inp = core.observe(x, 1, None, sampler())
    with torch.no_grad():  # as in the recorder's hooks
        derived = derive.derive_batchnorm_output(y, inp, bn.weight, bn.bias, bn.eps, sampler())
    direct = core.observe(y.detach(), 1, NormSpec("batch"), sampler())
    for field in ("mean_c", "var_c", "min_c", "max_c"):
        np.testing.assert_allclose(getattr(derived, field).numpy(), getattr(direct, field).numpy(), rtol=1e-4, atol=1e-5, err_msg=field)
    for a, b in zip(derived.group, direct.group):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)


def test_groupnorm_output_derived_equals_observed():
    torch.manual_seed(0)
    gn = torch.nn.GroupNorm(3, 6)
    with torch.no_grad():
        gn.weight.copy_(torch.tensor([1.5, -0.5, 2.0, 0.1, 1.0, -3.0]))
        gn.bias.copy_(torch.tensor([0.3, -1.0, 0.0, 2.0, 0.5, 1.0]))
    x = torch.randn(4, 6, 5, 5) * 3 + 7
    x[1, 2] = 4.0  # a constant (sample, channel): variance 0
    y = gn(x).detach()
    spec = NormSpec("group", 1, "group", num_groups=3)
    with torch.no_grad():
        inp = derive.observe_instances(x, sampler())
        derived = derive.derive_groupnorm_output(y, inp, gn, sampler())
    direct_in = core.observe(x, 1, spec, sampler())
    direct = core.observe(y, 1, spec, sampler())
    for field in ("mean_c", "var_c", "min_c", "max_c"):
        np.testing.assert_allclose(getattr(inp, field).numpy(), getattr(direct_in, field).numpy(), rtol=1e-5, atol=1e-5, err_msg=field)
        np.testing.assert_allclose(getattr(derived, field).numpy(), getattr(direct, field).numpy(), rtol=1e-4, atol=1e-5, err_msg=field)
    # The group summary is a set (the host keeps its percentiles): the derived one lists the
    # (sample, group) pairs group by group, the direct one sample by sample.
    for a, b in zip(derived.group, direct.group):
        np.testing.assert_allclose(np.sort(a.numpy()), np.sort(b.numpy()), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(derived.group[0].numpy(), direct.group[0].view(4, 3).t().reshape(-1).numpy(),
                               rtol=1e-4, atol=1e-5)
    for a, b in zip(core.groupnorm_input_groups(inp, 3, torch.Generator()), direct_in.group):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5)


def test_borrowed_statistics_are_the_layers_own():
    x = torch.randn(8, 4, 5, 5) * 2 + 3
    for module in (torch.nn.BatchNorm2d(4), torch.nn.GroupNorm(2, 4), torch.nn.LayerNorm([5])):
        y = module(x.requires_grad_())
        got = core.borrow(module, x, y, torch.Generator())
        assert got is not None
        with torch.no_grad():
            if isinstance(module, torch.nn.BatchNorm2d):
                ref = core.observe(x.detach(), 1, None, sampler())
                np.testing.assert_allclose(materialize(got.var_c).numpy(), ref.var_c.numpy(), rtol=1e-5)
            else:
                rows = x.detach().reshape(16, -1) if isinstance(module, torch.nn.GroupNorm) else x.detach().reshape(-1, 5)
                np.testing.assert_allclose(materialize(got.group[1]).numpy(), rows.double().std(1, unbiased=False).numpy(), rtol=1e-5)
        assert core.borrow(module, x.detach().clone(), y, torch.Generator()) is None  # not the layer's input
    assert core.borrow(torch.nn.BatchNorm2d(4), x, x * 2, torch.Generator()) is None
