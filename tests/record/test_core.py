"""The fused, batched core statistics equal the per-site reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from normviz.datatypes import NormSpec, Site
from normviz.default_plugins.statistics import BUILTIN_STATISTICS
from normviz.record import core
from normviz.record import stats as S

SPECS = [
    (NormSpec("batch", 1, "batch"), (8, 6, 4, 4), 1),
    (NormSpec("layer", -1, "trailing"), (3, 5, 12), -1),
    (NormSpec("group", 1, "group", num_groups=3), (4, 6, 3, 3), 1),
    (None, (7, 9), -1),
]


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
        obs = core.observe(x, cd, spec, torch.Generator().manual_seed(7))
        observed.append(obs)
        state = {"channel_index": idx} if idx is not None else {}
        ctx = S.SiteTensor(x, site, spec, torch.Generator().manual_seed(7), state)
        refs.append({s.name: s.compute(ctx) for s in BUILTIN_STATISTICS if s.fused and s.applies(site)})
    norm_rows = [i for i, (spec, _, _) in enumerate(SPECS) if spec is not None]
    assembler = core.CoreAssembler([s.channels for s in sites], stored, norm_rows, torch.device("cpu"))
    blocks = assembler.blocks(observed)
    for name, block in blocks.items():
        rows = norm_rows if name.startswith("group_") else list(range(len(sites)))
        expected = torch.cat([refs[r][name].double().reshape(-1) for r in rows])
        np.testing.assert_allclose(block.double().numpy(), expected.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_missing_site_gives_nan_rows():
    x = torch.randn(4, 3)
    obs = core.observe(x, -1, None, torch.Generator())
    assembler = core.CoreAssembler([3, 3], [None, None], [], torch.device("cpu"))
    blocks = assembler.blocks([obs, None])
    assert torch.isnan(blocks["mean"][1]) and not torch.isnan(blocks["mean"][0])
    assert blocks["hist"].reshape(2, -1)[1].sum() == 0


@pytest.mark.parametrize("m", [1, 5, 100])
def test_batched_quantiles_rows_with_nan_padding(m):
    values = torch.randn(3, m)
    values[1, m // 2 :] = math.nan
    levels = torch.tensor([0.0, 25.0, 50.0, 100.0])
    q = core.batched_quantiles(values, levels)
    for i in range(3):
        row = values[i][~torch.isnan(values[i])].numpy()
        if row.size:
            np.testing.assert_allclose(q[i].numpy(), np.percentile(row, levels.numpy()), rtol=1e-6)
        else:
            assert torch.isnan(q[i]).all()


def test_batchnorm_output_derived_equals_observed():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(5)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.5, -0.5, 2.0, 0.1, 1.0]))
        bn.bias.copy_(torch.tensor([0.3, -1.0, 0.0, 2.0, 0.5]))
    x = torch.randn(6, 5, 4, 4) * 3 + 7
    y = bn(x)
    inp = core.observe(x, 1, None, torch.Generator())
    derived = core.derive_batchnorm_output(y, inp, bn.weight, bn.bias, bn.eps, torch.Generator())
    direct = core.observe(y.detach(), 1, NormSpec("batch"), torch.Generator())
    for field in ("mean_c", "var_c", "extrema", "min_c", "max_c"):
        np.testing.assert_allclose(getattr(derived, field).numpy(), getattr(direct, field).numpy(), rtol=1e-4, atol=1e-5, err_msg=field)
    for a, b in zip(derived.group, direct.group):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
