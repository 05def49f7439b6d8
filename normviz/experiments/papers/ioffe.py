"""Ioffe & Szegedy 2015, Figure 1: a sigmoid MLP with and without BatchNorm.

The per-unit percentiles of ``norm3``'s output (the last sigmoid's input) show how its
distribution moves during training; :func:`normviz.analysis.findings.ioffe_findings` measures it.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normviz.experiments import models
from normviz.experiments.base import Setup, StepResult, identity_slots
from normviz.experiments.papers.common import accuracy

__all__ = ["build_ioffe", "sigmoid_mlp"]


def sigmoid_mlp(kind: str, *, width: int = 100, depth: int = 3, in_features: int = 784, classes: int = 10,
                init_std: float = 0.1) -> nn.Sequential:
    """Ioffe & Szegedy's Figure 1 network: ``depth`` × [Linear → norm → Sigmoid] → Linear.

    Layers are ``fc1, norm1, act1, …, out``; the norm slot is BatchNorm1d (the Linear
    then has no bias: β takes its role) or an Identity. Weights ~ N(0, init_std²), biases 0.
    """
    layers: list[tuple[str, nn.Module]] = []
    features = in_features
    for i in range(1, depth + 1):
        layers += [
            (f"fc{i}", nn.Linear(features, width, bias=kind == "none")),
            (f"norm{i}", models.make_norm(kind, width, dims=1)),
            (f"act{i}", nn.Sigmoid()),
        ]
        features = width
    layers.append(("out", nn.Linear(width, classes)))
    model = nn.Sequential(OrderedDict(layers))
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, init_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def build_ioffe(
    kind: str, gen: torch.Generator, device: torch.device, *, lr: float = 0.5, batch: int = 60,
    flip: float = 0.4, init_std: float = 0.1, eval_every: int = 10,
) -> Setup:
    """:func:`sigmoid_mlp` on binary 784-pixel "MNIST-like" data (10 prototypes, pixels flipped with
    probability ``flip``), SGD ``lr``, fresh batches of ``batch``; test accuracy every ``eval_every`` steps.
    """
    torch.set_flush_denormal(True)  # saturated sigmoids make denormals: ~10x slower on CPU without this
    protos = torch.rand(10, 784, generator=gen) < 0.2

    def data(n: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(10, (n,), generator=gen)
        x = protos[y] ^ (torch.rand(n, 784, generator=gen) < flip)
        return x.float().to(device), y.to(device)

    x_test, y_test = data(1000)
    model = sigmoid_mlp(kind, init_std=init_std).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr)

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> StepResult:
        x, y = data(batch)
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        if i % eval_every == 0:
            return loss, {"test_acc": accuracy(model, x_test, y_test)}
        return loss

    return Setup(model, opt, step, identity_slots(model, -1))

