"""The seed notebook's simulations: its regression MLP and its small CNN, one run per norm kind.

``seed-mlp`` and ``seed-cnn`` are what ``normviz record`` runs with no option
(:data:`normviz.experiments.catalog.DEFAULT_EXPERIMENTS`); :func:`build_seed_mlp` is also
the setup of the ``seed-bn-ln`` paper experiment.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normviz.experiments import models
from normviz.experiments.base import Experiment, Setup, identity_slots, minibatch_classifier

__all__ = ["SEED_EXPERIMENTS", "build_seed_cnn", "build_seed_mlp"]


def build_seed_mlp(kind: str, gen: torch.Generator, device: torch.device) -> Setup:
    """The seed's MLP on its regression data: full batch, SGD 1e-3 (the seed's settings)."""
    x, y = models.seed_regression_data(gen)
    x, y = x.to(device), y.to(device)
    model = models.seed_mlp(kind).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)  # the seed's settings: full batch, SGD 1e-3

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> torch.Tensor:
        opt.zero_grad()
        loss = F.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        return loss

    return Setup(model, opt, step, identity_slots(model, -1))


def build_seed_cnn(kind: str, gen: torch.Generator, device: torch.device) -> Setup:
    """The seed's CNN on 4 noisy synthetic image classes, minibatch SGD with momentum."""
    x, y = models.image_classification_data(512, gen, num_classes=4, size=8)
    x = x + 1.5 * torch.randn(x.shape, generator=gen)  # noisier than the templates alone: a task that takes 100 steps
    model = models.seed_cnn(kind, num_classes=4).to(device)
    opt, step = minibatch_classifier(model, x.to(device), y.to(device), lr=0.05, batch=64)
    return Setup(model, opt, step, identity_slots(model, 1))


SEED_EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "seed-mlp",
        "the seed's MLP Linear(10,64)-norm-ReLU-Linear(64,1), y = x0 + 0.1 noise, full-batch SGD 1e-3",
        ("batch", "layer", "group", "rms", "none"),
        100,
        build_seed_mlp,
    ),
    Experiment(
        "seed-cnn",
        "the seed's CNN Conv(3,16)-norm-ReLU-Conv(16,32) + head, 4-class synthetic images",
        ("batch", "layer", "instance", "group", "rms", "none"),
        100,
        build_seed_cnn,
    ),
)
