"""Deeper models than the seed's: ResNet-8, a small GPT-style transformer and an 8-layer MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from normviz.experiments import models
from normviz.experiments.base import Experiment, Setup, identity_slots, minibatch_classifier

__all__ = ["DEEPER_EXPERIMENTS", "build_deep_mlp", "build_resnet8", "build_transformer"]


def build_resnet8(kind: str, gen: torch.Generator, device: torch.device) -> Setup:
    """ResNet-8 on 10 synthetic 32x32 image classes, minibatch SGD with momentum."""
    x, y = models.image_classification_data(1024, gen, num_classes=10, size=32)
    model = models.resnet8(kind, num_classes=10).to(device)
    opt, step = minibatch_classifier(model, x.to(device), y.to(device), lr=0.05, batch=64)
    return Setup(model, opt, step, identity_slots(model, 1))


def build_transformer(kind: str, gen: torch.Generator, device: torch.device, *, pre_ln: bool = True) -> Setup:
    """A 4-block transformer (d_model 64) on fresh batches of the repeated-motif token task, AdamW."""
    model = models.transformer(kind, d_model=64, n_heads=4, n_layers=4, seq_len=32, vocab=64, pre_ln=pre_ln).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4)

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> torch.Tensor:
        inputs, targets = models.token_data(16, 32, 64, gen)
        inputs, targets = inputs.to(device), targets.to(device)
        opt.zero_grad()
        logits = model(inputs)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        loss.backward()
        opt.step()
        return loss

    return Setup(model, opt, step, identity_slots(model, -1))


def build_deep_mlp(kind: str, gen: torch.Generator, device: torch.device) -> Setup:
    """An 8-layer MLP classifier on fresh Gaussian batches labelled by a fixed linear map."""
    model = models.deep_mlp(kind, width=128, depth=8, in_features=32, num_classes=10).to(device)
    w = torch.randn(32, 10, generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> torch.Tensor:
        xb = torch.randn(128, 32, generator=gen)
        yb = (xb @ w).argmax(1)
        opt.zero_grad()
        loss = F.cross_entropy(model(xb.to(device)), yb.to(device))
        loss.backward()
        opt.step()
        return loss

    return Setup(model, opt, step, identity_slots(model, -1))


DEEPER_EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "resnet8",
        "CIFAR-style ResNet-8 (16/32/64 channels), 10-class synthetic 32x32 images",
        ("batch", "group", "layer", "instance", "rms", "none"),
        60,
        build_resnet8,
    ),
    Experiment(
        "transformer",
        "4-block pre-LN GPT-style transformer (d_model 64) on a repeated-motif token task",
        ("layer", "rms", "none"),
        100,
        build_transformer,
    ),
    Experiment(
        "deep-mlp",
        "8 x [Linear(128)+norm+ReLU] classifier",
        ("batch", "layer", "group", "rms", "none"),
        100,
        build_deep_mlp,
    ),
)
