"""The table of built-in experiments and the loop that trains and records one of them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normviz.datatypes import NormSpec
from normviz.experiments import models
from normviz.hookspecs import hookimpl

#: What a step returns: its loss, or its loss and more scalars for this step (test
#: accuracy, per-variant losses: floats or 0-d tensors, recorded with the loss).
StepResult = torch.Tensor | tuple[torch.Tensor, dict[str, Any]]
#: One training step: (model, optimizer, step index) -> StepResult. It calls backward
#: and optimizer.step itself.
StepFn = Callable[[nn.Module, torch.optim.Optimizer, int], StepResult]


@dataclass(frozen=True)
class Setup:
    """What an experiment builds for one norm kind."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: StepFn
    none_slots: dict[str, int] = field(default_factory=dict)  # Identity norm slots -> channel dim


@dataclass(frozen=True)
class Experiment:
    """A named built-in experiment."""

    name: str
    description: str
    kinds: tuple[str, ...]
    steps: int
    build: Callable[[str, torch.Generator, torch.device], Setup]
    statistics: tuple[str, ...] | dict[str, list[str]] = ()


class NoneSlots:
    """A plugin that records a model's ``nn.Identity`` norm slots as norm sites of kind ``none``,
    so that runs without a norm line up layer by layer with the others."""

    def __init__(self, slots: dict[str, int]) -> None:
        self.slots = slots

    @hookimpl(tryfirst=True)
    def normviz_classify_module(self, name: str, module: nn.Module) -> NormSpec | None:
        if name in self.slots and isinstance(module, nn.Identity):
            return NormSpec("none", channel_dim=self.slots[name], group_dims=None)
        return None


def _identity_slots(model: nn.Module, channel_dim: int) -> dict[str, int]:
    return {name: channel_dim for name, m in model.named_modules() if isinstance(m, nn.Identity)}


# -- the seed's simulations -------------------------------------------------------------------------
def _seed_mlp(kind: str, gen: torch.Generator, device: torch.device) -> Setup:
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

    return Setup(model, opt, step, _identity_slots(model, -1))


def _minibatch_classifier(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float, batch: int
) -> tuple[torch.optim.Optimizer, StepFn]:
    """SGD with momentum over consecutive minibatches of (x, y), cross-entropy."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> torch.Tensor:
        lo = (i * batch) % x.shape[0]
        opt.zero_grad()
        loss = F.cross_entropy(model(x[lo : lo + batch]), y[lo : lo + batch])
        loss.backward()
        opt.step()
        return loss

    return opt, step


def _seed_cnn(kind: str, gen: torch.Generator, device: torch.device) -> Setup:
    x, y = models.image_classification_data(512, gen, num_classes=4, size=8)
    x = x + 1.5 * torch.randn(x.shape, generator=gen)  # noisier than the templates alone: a task that takes 100 steps
    model = models.seed_cnn(kind, num_classes=4).to(device)
    opt, step = _minibatch_classifier(model, x.to(device), y.to(device), lr=0.05, batch=64)
    return Setup(model, opt, step, _identity_slots(model, 1))


# -- deeper models --------------------------------------------------------------------------------
def _resnet8(kind: str, gen: torch.Generator, device: torch.device) -> Setup:
    x, y = models.image_classification_data(1024, gen, num_classes=10, size=32)
    model = models.resnet8(kind, num_classes=10).to(device)
    opt, step = _minibatch_classifier(model, x.to(device), y.to(device), lr=0.05, batch=64)
    return Setup(model, opt, step, _identity_slots(model, 1))


def _transformer(kind: str, gen: torch.Generator, device: torch.device, *, pre_ln: bool = True) -> Setup:
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

    return Setup(model, opt, step, _identity_slots(model, -1))


def _deep_mlp(kind: str, gen: torch.Generator, device: torch.device) -> Setup:
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

    return Setup(model, opt, step, _identity_slots(model, -1))


EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        Experiment(
            "seed-mlp",
            "the seed's MLP Linear(10,64)-norm-ReLU-Linear(64,1), y = x0 + 0.1 noise, full-batch SGD 1e-3",
            ("batch", "layer", "group", "rms", "none"),
            100,
            _seed_mlp,
        ),
        Experiment(
            "seed-cnn",
            "the seed's CNN Conv(3,16)-norm-ReLU-Conv(16,32) + head, 4-class synthetic images",
            ("batch", "layer", "instance", "group", "rms", "none"),
            100,
            _seed_cnn,
        ),
        Experiment(
            "resnet8",
            "CIFAR-style ResNet-8 (16/32/64 channels), 10-class synthetic 32x32 images",
            ("batch", "group", "layer", "instance", "rms", "none"),
            60,
            _resnet8,
        ),
        Experiment(
            "transformer",
            "4-block pre-LN GPT-style transformer (d_model 64) on a repeated-motif token task",
            ("layer", "rms", "none"),
            100,
            _transformer,
        ),
        Experiment(
            "deep-mlp",
            "8 x [Linear(128)+norm+ReLU] classifier",
            ("batch", "layer", "group", "rms", "none"),
            100,
            _deep_mlp,
        ),
    )
}

#: What ``normviz record`` runs with no option: the seed notebook's two models.
DEFAULT_EXPERIMENTS: tuple[str, ...] = ("seed-mlp", "seed-cnn")


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when available."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def split_step_result(result: StepResult) -> tuple[torch.Tensor, dict[str, Any]]:
    """(loss, extra scalars) of what a step returned."""
    if isinstance(result, tuple):
        loss, scalars = result
        return loss, dict(scalars)
    return result, {}


def run_experiment(
    experiment: Experiment,
    kind: str,
    path: Path,
    *,
    steps: int | None = None,
    every: int = 1,
    seed: int = 0,
    device: str = "auto",
    progress: Callable[[int], Any] | None = None,
    recorder_options: dict[str, Any] | None = None,
) -> list[float]:
    """Train and record one (experiment, norm kind) run into *path*; returns the losses."""
    from normviz.plugins import get_plugin_host
    from normviz.record.recorder import Recorder

    dev = resolve_device(device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    setup = experiment.build(kind, gen, dev)
    host = get_plugin_host(extra=[NoneSlots(setup.none_slots)] if kind == "none" else [])
    n_steps = experiment.steps if steps is None else steps
    options = {"statistics": experiment.statistics, **(recorder_options or {})}
    losses: list[float] = []
    setup.model.train()
    with Recorder(
        setup.model,
        path,
        every=every,
        label=f"{experiment.name} {kind}",
        experiment=experiment.name,
        norm_kind=kind,
        plugins=host,
        seed=seed,
        meta={"seed": seed, "steps": n_steps, "device": str(dev)},
        **options,
    ) as rec:
        pending: list[torch.Tensor] = []
        for i in range(n_steps):
            loss, scalars = split_step_result(setup.step(setup.model, setup.optimizer, i))
            rec.step(**scalars, loss=loss)
            pending.append(loss.detach())
            if progress is not None:
                progress(1)
        losses = torch.stack(pending).cpu().tolist() if pending else []
    return losses


def iter_runs(names: list[str], kinds: list[str] | None) -> Iterator[tuple[Experiment, str]]:
    """The (experiment, kind) pairs to run: every kind that applies, filtered by *kinds*."""
    for name in names:
        exp = EXPERIMENTS[name]
        for kind in exp.kinds:
            if kinds is None or kind in kinds:
                yield exp, kind


from normviz.experiments.papers import PAPER_EXPERIMENTS  # noqa: E402  (the paper reproductions: named, not default)
EXPERIMENTS.update(PAPER_EXPERIMENTS)
