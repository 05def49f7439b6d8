"""The counter-based value samples: uniform on every step, different from step to step,
reproducible from the seed, and independent of the global random streams."""

from __future__ import annotations

import numpy as np
import torch

from normviz.record.sampling import Sampler


def sampler(seed: int = 0) -> Sampler:
    gens: dict[torch.device, torch.Generator] = {}

    def gen(device: torch.device) -> torch.Generator:
        return gens.setdefault(device, torch.Generator(device=device).manual_seed(seed))

    return Sampler(gen)


def steps(s: Sampler, tensors: list[torch.Tensor], n: int) -> list[list[torch.Tensor]]:
    """``n`` recorded steps sampling each tensor once, in order."""
    out = []
    for _ in range(n):
        out.append([s.draw(x) for x in tensors])
        s.end_step()
    return out


def test_every_position_is_equally_likely_on_every_step():
    x, y = torch.arange(1000.0), torch.arange(37.0).view(1, 37)  # a sample shows which positions it took
    drawn = steps(sampler(), [x, y], 60)
    for site, size in ((0, 1000), (1, 37)):
        # From the second step on the indices are counter-based: pooled over steps, and on one step.
        pooled = torch.cat([d[site] for d in drawn[1:]]).long().numpy()
        counts = np.bincount(pooled, minlength=size)
        expected = pooled.size / size
        chi2 = ((counts - expected) ** 2 / expected).sum()
        assert chi2 < size + 6 * np.sqrt(2 * size), (site, chi2)  # chi-square, size - 1 dof: mean + 6 sd
        one = np.bincount(drawn[5][site].long().numpy(), minlength=size)
        assert one.max() < 4096 / size * 3 + 10  # no position heavily repeated within a step


def test_steps_differ_and_the_seed_reproduces_them():
    x = torch.randn(64, 16, 8, 8)
    a, b, c = steps(sampler(3), [x], 4), steps(sampler(3), [x], 4), steps(sampler(4), [x], 4)
    for i in range(4):
        assert torch.equal(a[i][0], b[i][0])
        assert not torch.equal(a[i][0], c[i][0])
    for i in range(3):
        assert not torch.equal(a[i][0], a[i + 1][0])


def test_a_size_that_changes_draws_fresh_indices_in_range():
    s = sampler()
    steps(s, [torch.arange(100.0), torch.arange(50.0)], 2)
    small = [s.draw(torch.arange(10.0)), s.draw(torch.arange(50.0))]  # a smaller last batch for the first site
    s.end_step()
    assert small[0].max() < 10 and small[1].max() < 50
    again = steps(s, [torch.arange(10.0), torch.arange(50.0)], 2)  # the new sizes become the expected ones
    assert all(d[0].max() < 10 for d in again)


def test_the_global_random_streams_are_untouched():
    tensors = [torch.randn(500), torch.randn(20, 30)]
    state = torch.get_rng_state()
    steps(sampler(), tensors, 5)
    assert torch.equal(torch.get_rng_state(), state)


def test_a_channels_last_tensor_is_sampled_in_memory_order_and_uniformly():
    """Dense tensors are read through their memory-order view (no copy): the sample still
    takes every value with the same chance."""
    x = torch.arange(2 * 8 * 16 * 16, dtype=torch.float32).view(2, 8, 16, 16).contiguous(
        memory_format=torch.channels_last)
    drawn = steps(sampler(), [x], 40)
    pooled = torch.cat([d[0] for d in drawn[1:]]).long().numpy()
    counts = np.bincount(pooled, minlength=x.numel())
    expected = pooled.size / x.numel()
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < x.numel() + 6 * np.sqrt(2 * x.numel())
    assert set(np.unique(pooled)) <= set(range(x.numel()))
