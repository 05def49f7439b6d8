"""Kosson et al. 2024, rotational equilibrium: weights feeding a norm settle at the angle per step
their optimizer's hyperparameters predict.

An MLP 64 → 256 → 256 → 10 whose hidden Linears (no bias) each feed a BatchNorm1d
(``batch``) or LayerNorm (``layer``), then ReLU, classifies 10 Gaussian prototypes (noise
σ 1.5, 20% of the labels flipped) from fresh batches of 64. Weight decay applies to the
two hidden matrices only. ``optimizer="sgd"``: SGD, lr 0.1, momentum 0.9, weight decay
5e-4 (predicted angle 7.25e-3 rad); ``"adamw"``: lr 1e-2, weight decay 0.1, β (0.9, 0.999)
(1.03e-2 rad). ``weight_decay=0`` is the control: no equilibrium, the angle keeps
shrinking. :func:`normviz.analysis.rotation.rotation_findings` reads the recorded
``update_angle`` against the prediction.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from normviz.experiments import models
from normviz.experiments.base import Setup, StepResult

__all__ = ["build_kosson"]

_OPTIMIZERS = {"sgd": {"lr": 0.1, "weight_decay": 5e-4}, "adamw": {"lr": 1e-2, "weight_decay": 0.1}}


def build_kosson(
    kind: str, gen: torch.Generator, device: torch.device, *, optimizer: str = "sgd", lr: float | None = None,
    weight_decay: float | None = None, batch: int = 64, width: int = 256, classes: int = 10, noise: float = 1.5,
    flip: float = 0.2,
) -> Setup:
    """The MLP with ``kind`` norms, its data and its optimizer (``sgd`` or ``adamw``)."""
    if kind not in ("batch", "layer"):
        raise ValueError(f"kosson-rotation: kind must be batch or layer, not {kind!r}")
    if optimizer not in _OPTIMIZERS:
        raise ValueError(f"kosson-rotation: optimizer must be sgd or adamw, not {optimizer!r}")
    defaults = _OPTIMIZERS[optimizer]
    lr = defaults["lr"] if lr is None else lr
    wd = defaults["weight_decay"] if weight_decay is None else weight_decay
    prototypes = torch.randn(classes, 64, generator=gen)
    model = nn.Sequential(OrderedDict([
        ("fc1", nn.Linear(64, width, bias=False)), ("norm1", models.make_norm(kind, width, dims=1)),
        ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(width, width, bias=False)), ("norm2", models.make_norm(kind, width, dims=1)),
        ("relu2", nn.ReLU()),
        ("head", nn.Linear(width, classes)),
    ])).to(device)
    hidden = [model.get_parameter("fc1.weight"), model.get_parameter("fc2.weight")]
    rest = [p for p in model.parameters() if all(p is not h for h in hidden)]
    groups = [{"params": hidden, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}]
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9)
    else:
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> StepResult:
        y = torch.randint(0, classes, (batch,), generator=gen)
        x = prototypes[y] + noise * torch.randn(batch, 64, generator=gen)
        flipped = torch.rand(batch, generator=gen) < flip
        y = torch.where(flipped, torch.randint(0, classes, (batch,), generator=gen), y)
        opt.zero_grad()
        loss = F.cross_entropy(model(x.to(device)), y.to(device))
        loss.backward()
        opt.step()
        return loss

    return Setup(model, opt, step, {})
