"""Santurkar et al. 2018: gradient-based internal covariate shift, with and without BatchNorm.

A deep linear network (``santurkar-ics``) and a VGG-style CNN (``santurkar-ics-vgg``) record
the ICS of some layers as scalars (:func:`normviz.record.ics.gradient_ics`);
:func:`normviz.analysis.findings.santurkar_findings` pools them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normviz.experiments import models
from normviz.experiments.base import Setup, StepResult, identity_slots
from normviz.experiments.papers.common import image_task, vgg_small
from normviz.record.ics import gradient_ics, ics_scalars, sgd

__all__ = ["build_santurkar_dln", "build_santurkar_vgg", "deep_linear"]


def deep_linear(kind: str, *, depth: int = 25, width: int = 10) -> nn.Sequential:
    """Santurkar et al.'s deep linear network: ``depth`` × [Linear(no bias) → norm], Xavier-normal init.

    Layers ``fc1, norm1, …``; the norm is BatchNorm1d or an Identity.
    """
    layers: list[tuple[str, nn.Module]] = []
    for i in range(1, depth + 1):
        fc = nn.Linear(width, width, bias=False)
        nn.init.xavier_normal_(fc.weight)
        layers += [(f"fc{i}", fc), (f"norm{i}", models.make_norm(kind, width, dims=1))]
    return nn.Sequential(OrderedDict(layers))


def build_santurkar_dln(
    kind: str, gen: torch.Generator, device: torch.device, *, lr: float = 1e-4, depth: int = 25, width: int = 10,
    n: int = 1000, ics_every: int = 100, ics_layers: Sequence[int] = (3, 6, 9, 12, 15, 18, 21, 24),
) -> Setup:
    """:func:`deep_linear` fitting a random linear map by full-batch gradient descent; the ICS of the
    ``fc`` layers numbered ``ics_layers`` every ``ics_every`` steps.
    """
    target = torch.randn(width, width, generator=gen)
    x = torch.randn(n, width, generator=gen)
    x, y = x.to(device), (x @ target.T).to(device)
    model = deep_linear(kind, depth=depth, width=width).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)  # full-batch gradient descent
    measured = [f"fc{i}" for i in ics_layers if 1 <= i <= depth]

    def loss_fn(m: nn.Module) -> Tensor:
        return (m(x) - y).square().sum(1).mean()

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> StepResult:
        opt.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        measure = ics_every and i % ics_every == 0
        scalars = ics_scalars(gradient_ics(model, measured, loss_fn, sgd(lr))) if measure else {}
        opt.step()
        return loss, scalars

    return Setup(model, opt, step, identity_slots(model, -1))


def build_santurkar_vgg(
    kind: str, gen: torch.Generator, device: torch.device, *, lr: float = 0.05, batch: int = 64, width: int = 16,
    ics_every: int = 25, ics_layers: Sequence[str] = ("conv2", "conv3", "conv4", "fc"),
) -> Setup:
    """A Glorot-initialized :func:`vgg_small` on noisy synthetic image classes, SGD ``lr``, random batches;
    the ICS of ``ics_layers`` every ``ics_every`` steps.
    """
    x, y = image_task(gen, 4096, 10, 16, 1.0)
    x, y = x.to(device), y.to(device)
    model = vgg_small(kind, width=width, init="glorot").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    n = x.shape[0]

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> StepResult:
        idx = torch.randint(n, (batch,), generator=gen).to(device)
        xb, yb = x[idx], y[idx]

        def loss_fn(m: nn.Module) -> Tensor:
            return F.cross_entropy(m(xb), yb)

        opt.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        scalars = (ics_scalars(gradient_ics(model, list(ics_layers), loss_fn, sgd(lr)))
                   if ics_every and i % ics_every == 0 else {})
        opt.step()
        return loss, scalars

    return Setup(model, opt, step, identity_slots(model, 1))
