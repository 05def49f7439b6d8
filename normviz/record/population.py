"""PreciseBN (Wu & Johnson 2021): BatchNorm's population statistics over many batches, in place
of the running averages (EMA) it evaluates with.

:func:`population_statistics` runs the model on ``batches`` under ``no_grad`` with every
BatchNorm in training mode and ``momentum=None`` after ``reset_running_stats()`` (PyTorch
then keeps the cumulative average: the arithmetic mean over the batches of each batch's
mean and unbiased variance, as fvcore's ``update_bn_stats`` computes), everything else
in eval mode (dropout stays out of the statistics), and restores every buffer, momentum
and mode afterwards. :func:`precise_bn` puts them in use for the length of a block. The
recorder's hooks do not observe the probe's forward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from normviz.errors import UsageError
from normviz.record.hooks import unobserved

__all__ = ["population_statistics", "precise_bn"]

Forward = Callable[[nn.Module, Any], Any]


def _batchnorms(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _call(model: nn.Module, batch: Any) -> Any:
    return model(batch)


def _buffers(m: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(running_mean, running_var, num_batches_tracked) of a BatchNorm that tracks running statistics."""
    mean, var, tracked = m.running_mean, m.running_var, m.num_batches_tracked
    assert mean is not None and var is not None and tracked is not None
    return mean, var, tracked


@contextmanager
def _saved_state(model: nn.Module) -> Iterator[list[tuple[str, nn.modules.batchnorm._BatchNorm]]]:
    """Every BatchNorm's buffers and momentum, and every module's mode, restored at the end."""
    bns = _batchnorms(model)
    saved = [(bn, bn.momentum, [t.clone() for t in _buffers(bn)]) for _, bn in bns]
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield bns
    finally:
        for bn, momentum, values in saved:
            bn.momentum = momentum
            for t, value in zip(_buffers(bn), values):
                t.copy_(value)
        for module, training in modes:
            module.training = training


def population_statistics(model: nn.Module, batches: Iterable[Any], *,
                          forward: Forward = _call) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each BatchNorm's population (mean, unbiased variance) over ``batches``, by qualified name.

    ``forward(model, batch)`` runs one batch (default ``model(batch)``). The model is left
    exactly as it was: buffers, momenta and modes.

    Raises
    ------
    UsageError
        ``batches`` was empty, or the model has no BatchNorm with running statistics.
    """
    with _saved_state(model) as bns, torch.no_grad(), unobserved():
        if not bns:
            raise UsageError("precise BatchNorm statistics: the model has no BatchNorm with running statistics")
        model.eval()
        for _, m in bns:
            m.reset_running_stats()
            m.momentum = None  # the cumulative average of the batches' statistics
            m.train()
        seen = 0
        for batch in batches:
            forward(model, batch)
            seen += 1
        if seen == 0:
            raise UsageError("precise BatchNorm statistics: no batches")
        return {name: (_buffers(m)[0].clone(), _buffers(m)[1].clone()) for name, m in bns}


@contextmanager
def precise_bn(model: nn.Module, batches: Iterable[Any], *,
               forward: Forward = _call) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Within the block, every BatchNorm's running statistics are its population statistics over
    ``batches`` (:func:`population_statistics`, yielded); the running averages come back after. ::

        model.eval()
        with normviz.precise_bn(model, train_batches[:40]), rec.evaluating("precise"):
            accuracy = evaluate(model, test_loader)
    """
    population = population_statistics(model, batches, forward=forward)
    with _saved_state(model) as bns:
        for name, m in bns:
            running_mean, running_var, _ = _buffers(m)
            running_mean.copy_(population[name][0])
            running_var.copy_(population[name][1])
        yield population
