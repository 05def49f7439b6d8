"""PreciseBN: population statistics as the mean of the batches' statistics; the model left as it was."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normviz
from normviz.errors import UsageError
from normviz.record.population import population_statistics


def model_with_dropout() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout2d(0.5),
                         nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4))


def state(model: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for t in model.state_dict().values()]


def test_population_statistics_are_the_mean_of_each_batchs_statistics():
    model = model_with_dropout()
    model.train()
    gen = torch.Generator().manual_seed(1)
    batches = [torch.randn(5, 3, 9, 9, generator=gen) * (1 + i) for i in range(4)]
    before = state(model)
    got = population_statistics(model, batches)
    # The model is exactly as it was: buffers, momenta, modes.
    for a, b in zip(before, state(model)):
        assert torch.equal(a, b)
    assert model.training and all(m.training for m in model.modules())
    assert model[1].momentum == 0.1
    # Reference (fvcore's update_bn_stats): the arithmetic mean of the per-batch mean and unbiased
    # variance, dropout off, in float64.
    ref = model_with_dropout().double().eval()
    per_batch: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {"1": [], "5": []}
    with torch.no_grad():
        for x in batches:
            h = ref[0](x.double())
            per_batch["1"].append((h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=True)))
            h = ref[4](ref[3](ref[2](nn.functional.batch_norm(h, None, None, ref[1].weight, ref[1].bias, True))))
            per_batch["5"].append((h.mean((0, 2, 3)), h.var((0, 2, 3), unbiased=True)))
    for name, stats in per_batch.items():
        mean = torch.stack([m for m, _ in stats]).mean(0)
        var = torch.stack([v for _, v in stats]).mean(0)
        torch.testing.assert_close(got[name][0].double(), mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[name][1].double(), var, rtol=1e-5, atol=1e-6)


def test_precise_bn_puts_them_in_use_for_the_block_only():
    model = model_with_dropout().eval()
    batches = [torch.randn(8, 3, 9, 9) for _ in range(3)]
    before = state(model)
    population = population_statistics(model, batches)
    with normviz.precise_bn(model, batches) as inside:
        assert torch.equal(model[1].running_mean, population["1"][0])
        assert torch.equal(model[5].running_var, population["5"][1])
        assert inside.keys() == population.keys()
        assert not model.training
    for a, b in zip(before, state(model)):
        assert torch.equal(a, b)


def test_nothing_to_do_is_one_clear_error():
    with pytest.raises(UsageError, match="no batches"):
        population_statistics(model_with_dropout(), [])
    with pytest.raises(UsageError, match="no BatchNorm"):
        population_statistics(nn.Linear(3, 3), [torch.randn(2, 3)])
