"""What every built-in experiment is made of, and the loop that trains and records one.

An :class:`Experiment` names a builder; the builder makes a :class:`Setup` (model,
optimizer, step function) for one norm kind; :func:`run_experiment` trains it and
records it with :class:`normviz.Recorder`. The experiments themselves live in
:mod:`normviz.experiments.seeds`, :mod:`normviz.experiments.deeper` and
:mod:`normviz.experiments.papers`; :mod:`normviz.experiments.catalog` lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normviz.datatypes import NormSpec
from normviz.hookspecs import hookimpl

__all__ = [
    "EvalFn",
    "Evaluating",
    "Experiment",
    "NoneSlots",
    "Setup",
    "StepFn",
    "StepResult",
    "identity_slots",
    "minibatch_classifier",
    "resolve_device",
    "run_experiment",
    "split_step_result",
]

#: What a step returns: its loss, or its loss and more scalars for this step (test
#: accuracy, per-variant losses: floats or 0-d tensors, recorded with the loss).
StepResult = torch.Tensor | tuple[torch.Tensor, dict[str, Any]]
#: One training step: (model, optimizer, step index) -> StepResult. It calls backward
#: and optimizer.step itself.
StepFn = Callable[[nn.Module, torch.optim.Optimizer, int], StepResult]
#: Marks an eval pass of the run being recorded: ``Recorder.evaluating(series)``.
Evaluating = Callable[[str], AbstractContextManager[None]]
#: Evaluation after step ``i``'s update: (model, step index, evaluating) -> scalars for step ``i``.
EvalFn = Callable[[nn.Module, int, Evaluating], dict[str, Any]]


@dataclass(frozen=True)
class Setup:
    """What an experiment builds for one norm kind."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    step: StepFn
    none_slots: dict[str, int] = field(default_factory=dict)  # Identity norm slots -> channel dim
    #: Runs after each step's update (before the step is closed); may record eval passes.
    evaluate: EvalFn | None = None
    #: The steps the setup was built for (a number of epochs, a schedule's length): the
    #: default when no steps are asked for.
    steps: int | None = None
    #: What the builder was asked for (batch size, schedule, …): stored in the run's meta["user"].
    meta: dict[str, Any] = field(default_factory=dict)


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


def identity_slots(model: nn.Module, channel_dim: int) -> dict[str, int]:
    """Every ``nn.Identity`` of ``model`` (its empty norm slots) -> ``channel_dim``, for :attr:`Setup.none_slots`."""
    return {name: channel_dim for name, m in model.named_modules() if isinstance(m, nn.Identity)}


def minibatch_classifier(
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
    n_steps = steps if steps is not None else setup.steps if setup.steps is not None else experiment.steps
    # recorder_options may replace any of these (a label telling apart runs of one kind, …)
    options = {"statistics": experiment.statistics, "label": f"{experiment.name} {kind}", **(recorder_options or {})}
    losses: list[float] = []
    setup.model.train()
    with Recorder(
        setup.model,
        path,
        every=every,
        experiment=experiment.name,
        norm_kind=kind,
        plugins=host,
        seed=seed,
        meta={**setup.meta, "seed": seed, "steps": n_steps, "device": str(dev)},
        **options,
    ) as rec:
        pending: list[torch.Tensor] = []
        for i in range(n_steps):
            loss, scalars = split_step_result(setup.step(setup.model, setup.optimizer, i))
            if setup.evaluate is not None:
                scalars.update(setup.evaluate(setup.model, i, rec.evaluating))
            rec.step(**scalars, loss=loss)
            pending.append(loss.detach())
            if progress is not None:
                progress(1)
        losses = torch.stack(pending).cpu().tolist() if pending else []
    return losses
