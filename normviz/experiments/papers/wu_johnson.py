"""Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm": the gap between the statistics BatchNorm
trains with and those it evaluates with.

A small CNN (``conv1``–``norm1`` 16, ``conv2``–``norm2`` 32, max-pool, ``conv3``–``norm3`` 32,
each followed by ReLU; global average pooling; ``fc``) classifies 12×12 RGB images: 10
prototypes N(0, 1), each sample one of them circularly shifted by up to ±2 pixels plus noise
σ 1.5 (4096 training, 1024 test images). SGD with momentum 0.9 and weight decay 1e-4 at
lr 0.05·B/32 (linear scaling) for ``epochs`` epochs of batches of ``batch`` = B, BatchNorm
momentum 0.1; the learning rate stays constant or decays to 0 on a cosine (``schedule``).

At ``evals`` evenly spaced steps (the last one included) the test set is evaluated three
ways, each an eval series of the run (its first batch recorded, the test batch rotating from
one evaluation to the next) with its accuracy as a scalar:

- ``eval`` / ``test_acc_ema``: eval mode, the running averages (EMA);
- ``precise`` / ``test_acc_precise``: eval mode, population statistics of ``precise_batches``
  training batches of 64 (:func:`normviz.precise_bn`, PreciseBN);
- ``batch`` / ``test_acc_batch``: training mode, each test batch of B normalized with its own
  statistics (the running averages left untouched).

:func:`normviz.analysis.findings.wu_johnson_findings` reads the runs.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normviz.experiments.base import Evaluating, Setup, StepResult
from normviz.experiments.papers.common import frozen_running_stats
from normviz.record.population import precise_bn

__all__ = ["SCHEDULES", "build_wu_johnson", "shifted_prototypes"]

SCHEDULES = ("constant", "cosine")


def shifted_prototypes(gen: torch.Generator, n: int, *, classes: int = 10, size: int = 12, shift: int = 2,
                       noise: float = 1.5, prototypes: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """``n`` images: a random class's prototype rolled by up to ±``shift`` pixels each way, plus noise;
    returns (images, labels, prototypes)."""
    if prototypes is None:
        prototypes = torch.randn(classes, 3, size, size, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    dx, dy = (torch.randint(-shift, shift + 1, (n,), generator=gen) for _ in range(2))
    x = torch.stack([prototypes[c].roll((int(a), int(b)), dims=(1, 2)) for c, a, b in zip(y, dx, dy)])
    return x + noise * torch.randn(x.shape, generator=gen), y, prototypes


def small_cnn(classes: int = 10) -> nn.Sequential:
    """conv16–conv32–pool–conv32, each conv + BatchNorm2d + ReLU, then global average pooling and a linear head."""
    layers: list[tuple[str, nn.Module]] = []
    for i, (cin, cout) in enumerate([(3, 16), (16, 32), (32, 32)], start=1):
        layers += [(f"conv{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False)), (f"norm{i}", nn.BatchNorm2d(cout)),
                   (f"relu{i}", nn.ReLU())]
        if i == 2:
            layers.append(("pool", nn.MaxPool2d(2)))
    layers += [("gap", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(32, classes))]
    return nn.Sequential(OrderedDict(layers))


def _batches(x: Tensor, y: Tensor, size: int, start: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Consecutive batches of ``size`` over (x, y), starting at batch ``start`` and wrapping around."""
    n = x.shape[0] // size
    for k in range(n):
        lo = ((start + k) % n) * size
        yield x[lo:lo + size], y[lo:lo + size]


def build_wu_johnson(
    kind: str, gen: torch.Generator, device: torch.device, *, batch: int = 32, schedule: str = "constant",
    epochs: int = 3, base_lr: float = 0.05, weight_decay: float = 1e-4, evals: int = 12,
    precise_batches: int = 40, train_size: int = 4096, test_size: int = 1024,
) -> Setup:
    """The CNN, its data, SGD at ``base_lr``·``batch``/32 on a ``schedule``, and its three evaluations."""
    if kind != "batch":
        raise ValueError(f"wu-johnson-bn: kind must be batch, not {kind!r}")
    if schedule not in SCHEDULES:
        raise ValueError(f"wu-johnson-bn: schedule must be one of {', '.join(SCHEDULES)}, not {schedule!r}")
    if batch < 2 or train_size // batch < 1:
        raise ValueError(f"wu-johnson-bn: batch must be between 2 and {train_size}, not {batch}")
    x, y, prototypes = shifted_prototypes(gen, train_size)
    x_test, y_test, _ = shifted_prototypes(gen, test_size, prototypes=prototypes)
    x, y, x_test, y_test = x.to(device), y.to(device), x_test.to(device), y_test.to(device)
    model = small_cnn().to(device)
    lr = base_lr * batch / 32
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    per_epoch = train_size // batch
    total = epochs * per_epoch
    orders: list[Tensor] = []
    # PreciseBN's training batches: a fixed sample of the training set, from a generator of its own.
    probe_gen = torch.Generator().manual_seed(int(torch.randint(2**31 - 1, (1,), generator=gen)))
    probe_idx = torch.randperm(train_size, generator=probe_gen)[: precise_batches * 64].to(device)
    probe = [x[probe_idx[k * 64:(k + 1) * 64]] for k in range(precise_batches)]
    eval_at = {max(0, round((k + 1) * total / evals) - 1): k for k in range(evals)}

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> StepResult:
        epoch, j = divmod(i, per_epoch)
        while len(orders) <= epoch:
            orders.append(torch.randperm(train_size, generator=gen).to(device))
        idx = orders[epoch][j * batch:(j + 1) * batch]
        if schedule == "cosine":
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * min(i, total) / total))
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx])
        loss.backward()
        opt.step()
        return loss

    @torch.no_grad()
    def evaluate(model: nn.Module, i: int, evaluating: Evaluating) -> dict[str, Any]:
        k = eval_at.get(i)
        if k is None:
            return {}

        def correct(series: str) -> Tensor:
            with evaluating(series):
                hits = [(model(xb).argmax(-1) == yb).sum() for xb, yb in _batches(x_test, y_test, batch, k)]
            return torch.stack(hits).sum() / (len(hits) * batch)

        try:
            model.eval()
            ema = correct("eval")
            with precise_bn(model, probe):
                precise = correct("precise")
            model.train()
            with frozen_running_stats(model):
                own = correct("batch")
        finally:
            model.train()
        return {"test_acc_ema": ema, "test_acc_precise": precise, "test_acc_batch": own}

    return Setup(model, opt, step, {}, evaluate=evaluate, steps=total,
                 meta={"batch": batch, "schedule": schedule, "lr": lr, "epochs": epochs})
