"""The classic normalization results and the seed's simulations as named built-in experiments.

Each experiment is small and quick on a CPU by default and grows with its options
(:func:`paper_experiment`); each trains on synthetic data with fixed seeds, and the
``*_findings`` functions below measure the paper's finding **from the recorded run**
(``normviz.open(path)``), so the tests, ``benchmarks/papers_report.py`` and the
gallery read the same numbers a user's ``normviz record --experiment NAME`` file holds.

==================  ==================  ======================================================
experiment          kinds               what one run holds
==================  ==================  ======================================================
label-smoothing     none                three copies of one classifier (same init, same
                                        batches): plain CE (``copies.ce.*``), the seed's
                                        smoothing ε/(K−1) (``copies.seed.*``),
                                        ``nn.CrossEntropyLoss(label_smoothing=ε)``, ε/K
                                        (``copies.torch.*``); scalars ``loss_<copy>``,
                                        ``test_acc_<copy>``
seed-bn-ln          batch, layer, none  the seed's MLP, its data and its training (SGD 1e-3)
ioffe-fig1          batch, none         3×100 sigmoid MLP, binary MNIST-like data; per-unit
                                        percentiles of ``norm3``'s output (the last sigmoid's
                                        input); scalar ``test_acc``. Turns on
                                        ``torch.set_flush_denormal(True)`` for the process
xiong-ln            layer               Pre-LN (``pre.*``) and Post-LN (``post.*``)
                                        transformers with the same weights, at
                                        initialization (lr 0); scalars ``loss_pre``,
                                        ``loss_post``
wu-he-batch         none, batch, group  VGG-style CNN (``net.*``); every forward also runs
                                        probe batches of 16/8/4/2 (calls 1–4 of each layer;
                                        no gradient, running statistics untouched) beside
                                        the training batch of 32 (call 0); ``test_acc``
santurkar-ics       batch, none         25×10 deep linear network; scalars ``ics_l2/<layer>``,
                                        ``ics_rel/<layer>``, ``ics_cos/<layer>`` every 100 steps
santurkar-ics-vgg   batch, none         VGG-style CNN; the same ICS scalars every 25 steps
==================  ==================  ======================================================

Variants that share a norm kind (the three losses, Pre- vs Post-LN) are trained side by
side in one model, under one run: the loss that is minimised is their sum, which leaves
each copy's gradients exactly what they would be alone. Their layers are told apart by
the prefix, their own losses are scalars (``loss_ce``, ``loss_pre``, …).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normviz.experiments import models
from normviz.experiments.registry import (
    Experiment,
    Setup,
    StepResult,
    _identity_slots,
    _seed_mlp,
)
from normviz.record.ics import gradient_ics, ics_scalars, sgd

__all__ = [
    "PAPER_EXPERIMENTS",
    "SeedLabelSmoothingCE",
    "final_loss",
    "ioffe_findings",
    "label_smoothing_findings",
    "paper_experiment",
    "santurkar_findings",
    "spearman",
    "wu_he_batch_findings",
    "wu_he_fig6_findings",
    "xiong_findings",
]


# -- plumbing ---------------------------------------------------------------------------------------
@torch.no_grad()
def _accuracy(root: nn.Module, x: Tensor, y: Tensor, forward: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """Accuracy of ``forward`` (default: ``root``) with ``root`` in eval mode.

    The whole model (the recorder's root) goes to eval mode: BatchNorm uses its running
    statistics and the recorder skips the pass, whichever submodule ``forward`` calls.
    """
    was = root.training
    root.eval()
    try:
        return ((forward or root)(x).argmax(-1) == y).float().mean()
    finally:
        root.train(was)


# -- 1. label smoothing -----------------------------------------------------------------------------
class SeedLabelSmoothingCE(nn.Module):
    """The seed notebook's label-smoothing cross-entropy: 1−ε on the target, ε/(K−1) on each other class.

    ``nn.CrossEntropyLoss(label_smoothing=ε)`` instead mixes the one-hot target with the
    uniform distribution: 1−ε+ε/K on the target and ε/K on every other class.
    """

    def __init__(self, smoothing: float = 0.1) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, pred: Tensor, target: Tensor) -> Tensor:
        """Mean over the batch of −Σ_k q_k log softmax(pred)_k."""
        num_classes = pred.size(1)
        with torch.no_grad():
            true_dist = torch.full_like(pred, self.smoothing / (num_classes - 1))
            true_dist.scatter_(1, target.unsqueeze(1), 1.0 - self.smoothing)
        return torch.mean(torch.sum(-true_dist * F.log_softmax(pred, dim=1), dim=1))


#: The three losses of ``label-smoothing``: name -> (description, loss factory).
SMOOTHING_VARIANTS: dict[str, tuple[str, Callable[[float], nn.Module]]] = {
    "ce": ("plain cross-entropy", lambda eps: nn.CrossEntropyLoss()),
    "seed": ("seed's smoothing, ε/(K−1) on wrong classes", SeedLabelSmoothingCE),
    "torch": ("nn.CrossEntropyLoss(label_smoothing=ε), ε/K on all", lambda eps: nn.CrossEntropyLoss(label_smoothing=eps)),
}


class Copies(nn.Module):
    """Named copies of one model (same initial weights); ``forward`` maps each name to its output."""

    def __init__(self, model: nn.Module, names: Sequence[str]) -> None:
        super().__init__()
        self.copies = nn.ModuleDict({name: copy.deepcopy(model) for name in names})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Every copy's output on the same input."""
        return {name: m(x) for name, m in self.copies.items()}


def _classifier(in_features: int, hidden: int, classes: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(fc=nn.Linear(in_features, hidden), act=nn.ReLU(), head=nn.Linear(hidden, classes)))


def _label_smoothing(
    kind: str, gen: torch.Generator, device: torch.device, *, eps: float = 0.1, classes: int = 10,
    scale: float = 1.0, eval_every: int = 10,
) -> Setup:
    dim, hidden, n = 32, max(8, int(128 * scale)), max(256, int(2048 * scale))
    centers = 1.2 * torch.randn(classes, dim, generator=gen)

    def data(count: int) -> tuple[Tensor, Tensor]:
        y = torch.randint(classes, (count,), generator=gen)
        return (centers[y] + torch.randn(count, dim, generator=gen)).to(device), y.to(device)

    x, y = data(n)
    x_test, y_test = data(1000)
    trio = Copies(_classifier(dim, hidden, classes), list(SMOOTHING_VARIANTS)).to(device)
    losses = {name: factory(eps) for name, (_, factory) in SMOOTHING_VARIANTS.items()}
    opt = torch.optim.Adam(trio.parameters(), lr=3e-3)
    batch = 128
    order = torch.randperm(n, generator=gen).to(device)

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> StepResult:
        lo = (i * batch) % n
        idx = order[lo : lo + batch]
        opt.zero_grad()
        out = model(x[idx])
        parts = {name: losses[name](logits, y[idx]) for name, logits in out.items()}
        total = torch.stack(list(parts.values())).sum()
        total.backward()
        opt.step()
        scalars = {f"loss_{name}": v.detach() for name, v in parts.items()}
        if i % eval_every == 0:
            with torch.no_grad():
                for name, m in trio.copies.items():
                    scalars[f"test_acc_{name}"] = _accuracy(model, x_test, y_test, m)
        return total, scalars

    return Setup(trio, opt, step, {})


# -- 2. the seed's MLP with and without BatchNorm / LayerNorm ----------------------------------------
# The seed's own simulation (full-batch SGD 1e-3): registry._seed_mlp, the default experiment's setup.


# -- 3. Ioffe & Szegedy 2015, Figure 1 ---------------------------------------------------------------
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


def _ioffe(
    kind: str, gen: torch.Generator, device: torch.device, *, lr: float = 0.5, batch: int = 60,
    flip: float = 0.4, init_std: float = 0.1, eval_every: int = 10,
) -> Setup:
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
            return loss, {"test_acc": _accuracy(model, x_test, y_test)}
        return loss

    return Setup(model, opt, step, _identity_slots(model, -1))


# -- 4. Xiong et al. 2020: Pre-LN vs Post-LN at initialization ---------------------------------------
class PrePost(nn.Module):
    """A Pre-LN and a Post-LN transformer with the same weights; ``forward`` returns both logits."""

    def __init__(self, **options: Any) -> None:
        super().__init__()
        self.pre = models.transformer("layer", pre_ln=True, **options)
        self.post = models.transformer("layer", pre_ln=False, **options)
        for m in self.pre.modules():  # Xiong et al.'s analysis: Xavier weights, zero biases, N(0,1) embeddings
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        state = {k: v for k, v in self.pre.state_dict().items() if not k.startswith("norm_f.")}
        self.post.load_state_dict(state)

    def forward(self, idx: Tensor) -> dict[str, Tensor]:
        """Next-token logits of both stacks."""
        return {"pre": self.pre(idx), "post": self.post(idx)}


def _xiong(
    kind: str, gen: torch.Generator, device: torch.device, *, layers: int = 12, d_model: int = 64,
    micro: int = 8, batch: int = 16, seq_len: int = 32, vocab: int = 200,
) -> Setup:
    model = PrePost(d_model=d_model, n_heads=4, n_layers=layers, seq_len=seq_len, vocab=vocab).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # at initialization: the weights never move

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> StepResult:
        # One step accumulates `micro` batches: the recorded gradient is their sum, i.e. micro x
        # the mini-batch-averaged gradient whose norm Xiong et al. plot (||E_batch[grad W]||_F).
        opt.zero_grad()
        sums = {"pre": torch.zeros((), device=device), "post": torch.zeros((), device=device)}
        for _ in range(micro):
            idx = torch.randint(vocab, (batch, seq_len), generator=gen).to(device)
            target = torch.randint(vocab, (batch, seq_len), generator=gen).to(device)
            out = model(idx)
            parts = {k: F.cross_entropy(v.reshape(-1, vocab), target.reshape(-1)) for k, v in out.items()}
            (parts["pre"] + parts["post"]).backward()
            sums = {k: total + parts[k].detach() / micro for k, total in sums.items()}
        opt.step()
        return sums["pre"] + sums["post"], {"loss_pre": sums["pre"], "loss_post": sums["post"]}

    return Setup(model, opt, step, {})


# -- 5. Wu & He 2018: batch statistics vs batch size; Figure 6 ---------------------------------------
def vgg_small(kind: str, *, width: int = 16, classes: int = 10, init: str = "he") -> nn.Sequential:
    """A VGG-style CNN: [conv-norm-ReLU]×2 → max-pool → [conv-norm-ReLU]×2 → max-pool → GAP → Linear.

    Channels ``width, width, 2·width, 2·width``; layers ``conv1, norm1, relu1, …, conv4,
    norm4, relu4, pool2, gap, flat, fc``. Convolutions have a bias only without a norm.
    ``init`` is ``"he"`` (Kaiming normal, Wu & He) or ``"glorot"`` (Xavier normal, Santurkar et al.).
    """
    chans = [3, width, width, 2 * width, 2 * width]
    layers: list[tuple[str, nn.Module]] = []
    for i in range(1, 5):
        layers += [
            (f"conv{i}", nn.Conv2d(chans[i - 1], chans[i], 3, padding=1, bias=kind == "none")),
            (f"norm{i}", models.make_norm(kind, chans[i], dims=2)),
            (f"relu{i}", nn.ReLU()),
        ]
        if i in (2, 4):
            layers.append((f"pool{i // 2}", nn.MaxPool2d(2)))
    layers += [("gap", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(chans[4], classes))]
    model = nn.Sequential(OrderedDict(layers))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "he":
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            else:
                nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


@contextmanager
def _frozen_running_stats(model: nn.Module) -> Iterator[None]:
    """BatchNorm layers normalize with batch statistics but leave their running statistics alone."""
    saved = [(m, m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone())
             for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        for m, _, _ in saved:
            m.momentum = 0.0  # running = (1 - 0) * running + 0 * batch
        yield
    finally:
        for m, momentum, tracked in saved:
            m.momentum = momentum
            buffer = m.num_batches_tracked
            if tracked is not None and buffer is not None:
                buffer.copy_(tracked)


class BatchProbe(nn.Module):
    """Trains ``net`` on the first ``batch`` rows and also runs it on probe batches of ``probes`` sizes.

    The probe passes (calls 1, 2, … of every layer, in the order of ``probes``) need no
    gradient and leave BatchNorm's running statistics unchanged, so training is what it
    would be without them; they show how the statistics a norm computes depend on the
    batch size. They run in training mode only.
    """

    def __init__(self, net: nn.Module, batch: int, probes: Sequence[int]) -> None:
        super().__init__()
        self.net = net
        self.batch = batch
        self.probes = tuple(probes)

    def forward(self, x: Tensor) -> Tensor:
        """Logits of the first ``batch`` rows; the remaining rows feed the probes."""
        out: Tensor = self.net(x[: self.batch])
        if self.training and self.probes:
            lo = self.batch
            with torch.no_grad(), _frozen_running_stats(self.net):
                for m in self.probes:
                    self.net(x[lo : lo + m])
                    lo += m
        return out


def _image_task(gen: torch.Generator, n: int, classes: int, size: int, noise: float) -> tuple[Tensor, Tensor]:
    x, y = models.image_classification_data(n, gen, num_classes=classes, size=size)
    return x + noise * torch.randn(x.shape, generator=gen), y


def _wu_he(
    kind: str, gen: torch.Generator, device: torch.device, *, batch: int = 32, probes: Sequence[int] = (16, 8, 4, 2),
    lr: float = 0.02, width: int = 16, size: int = 16, eval_every: int = 25,
) -> Setup:
    x, y = _image_task(gen, 4096 + 1000, 10, size, 1.0)
    x, y = x.to(device), y.to(device)
    x_test, y_test, x, y = x[4096:], y[4096:], x[:4096], y[:4096]
    model = BatchProbe(vgg_small(kind, width=width), batch, probes).to(device)
    net = model.net
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    n = x.shape[0]
    # The probe rows come from their own generator: the training batches are the same without probes.
    probe_gen = torch.Generator().manual_seed(int(torch.randint(2**31 - 1, (1,), generator=gen)))

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> StepResult:
        idx = torch.cat([torch.randint(n, (batch,), generator=gen), torch.randint(n, (sum(probes),), generator=probe_gen)])
        idx = idx.to(device)
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx[:batch]])
        loss.backward()
        opt.step()
        if i % eval_every == 0:
            return loss, {"test_acc": _accuracy(model, x_test, y_test, net)}
        return loss

    return Setup(model, opt, step, _identity_slots(model, 1))


# -- 6. Santurkar et al. 2018: gradient-based internal covariate shift -------------------------------
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


def _santurkar_dln(
    kind: str, gen: torch.Generator, device: torch.device, *, lr: float = 1e-4, depth: int = 25, width: int = 10,
    n: int = 1000, ics_every: int = 100, ics_layers: Sequence[int] = (3, 6, 9, 12, 15, 18, 21, 24),
) -> Setup:
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
        scalars = ics_scalars(gradient_ics(model, measured, loss_fn, sgd(lr))) if ics_every and i % ics_every == 0 else {}
        opt.step()
        return loss, scalars

    return Setup(model, opt, step, _identity_slots(model, -1))


def _santurkar_vgg(
    kind: str, gen: torch.Generator, device: torch.device, *, lr: float = 0.05, batch: int = 64, width: int = 16,
    ics_every: int = 25, ics_layers: Sequence[str] = ("conv2", "conv3", "conv4", "fc"),
) -> Setup:
    x, y = _image_task(gen, 4096, 10, 16, 1.0)
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

    return Setup(model, opt, step, _identity_slots(model, 1))


# -- the table --------------------------------------------------------------------------------------
_BUILDERS: dict[str, tuple[str, tuple[str, ...], int, Callable[..., Setup], dict[str, list[str]]]] = {
    "label-smoothing": (
        "plain CE vs the seed's label smoothing (eps/(K-1)) vs nn.CrossEntropyLoss(label_smoothing) (eps/K), one classifier",
        ("none",), 300, _label_smoothing, {},
    ),
    "seed-bn-ln": (
        "the seed's MLP with and without BatchNorm / LayerNorm (full-batch SGD 1e-3, 100 steps)",
        ("batch", "layer", "none"), 100, _seed_mlp, {},
    ),
    "ioffe-fig1": (
        "Ioffe & Szegedy 2015 Fig. 1: 3x100 sigmoid MLP +- BN, per-unit percentiles of the last sigmoid input (try --every 10)",
        ("batch", "none"), 2000, _ioffe, {"channel_percentiles": ["norm3"]},
    ),
    "xiong-ln": (
        "Xiong et al. 2020: Pre-LN vs Post-LN transformer at init, FFN gradient norm vs depth (lr 0)",
        ("layer",), 3, _xiong, {},
    ),
    "wu-he-batch": (
        "Wu & He 2018: BN batch-stat noise vs batch size (probes 16/8/4/2), GN batch-independent; Fig. 6 percentiles",
        ("none", "batch", "group"), 300, _wu_he, {},
    ),
    "santurkar-ics": (
        "Santurkar et al. 2018: gradient-based ICS of a 25x10 deep linear network +- BN (try --every 10)",
        ("batch", "none"), 1000, _santurkar_dln, {},
    ),
    "santurkar-ics-vgg": (
        "Santurkar et al. 2018: gradient-based ICS of a VGG-style CNN, with and without BN",
        ("batch", "none"), 300, _santurkar_vgg, {},
    ),
}


def paper_experiment(name: str, *, steps: int | None = None, **options: Any) -> Experiment:
    """The built-in experiment ``name`` with builder options changed (sizes, learning rate, …).

    ``options`` are keyword arguments of the experiment's builder (e.g. ``layers=6`` for
    ``xiong-ln``, ``flip=0.1`` for ``ioffe-fig1``, ``ics_every=50``); ``steps`` replaces the
    default number of training steps. ``paper_experiment(name)`` is ``EXPERIMENTS[name]``.
    """
    try:
        description, kinds, default_steps, build, statistics = _BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown paper experiment {name!r}; known: {', '.join(_BUILDERS)}") from None
    exp = Experiment(name, description, kinds, default_steps, partial(build, **options) if options else build,
                     {k: list(v) for k, v in statistics.items()})
    return replace(exp, steps=steps) if steps is not None else exp


PAPER_EXPERIMENTS: dict[str, Experiment] = {name: paper_experiment(name) for name in _BUILDERS}


# -- findings, measured from recorded runs ----------------------------------------------------------
def spearman(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""
    a, b = _ranks(np.asarray(x, dtype=float)), _ranks(np.asarray(y, dtype=float))
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0 else math.nan


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):
        tie = v == value
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def _last_finite(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite[-1]) if finite.size else math.nan


def _at_step(run: Any, name: str, step: int) -> float:
    """A sparse scalar (e.g. test accuracy) at the last step <= ``step`` where it was given."""
    values, steps = run.scalar(name), run.scalar_steps
    keep = np.isfinite(values) & (steps <= step)
    return float(values[keep][-1]) if keep.any() else math.nan


def final_loss(run: Any, name: str = "loss", last: int = 1) -> float:
    """Mean of the last ``last`` values of a scalar."""
    values = run.scalar(name)
    values = values[np.isfinite(values)]
    return float(values[-last:].mean())


def label_smoothing_findings(run: Any, *, last: int = 5) -> dict[str, dict[str, float]]:
    """Per variant (``ce``, ``seed``, ``torch``): logit statistics of its ``head`` at the end of training.

    ``std`` (spread of the logits over batch and classes), ``max``, ``range`` (99th − 1st
    percentile), ``rms`` (√(mean² + std²), the logit norm per entry), each averaged over
    the last ``last`` recorded steps; ``test_acc`` last measured.
    """
    out: dict[str, dict[str, float]] = {}
    levels = list(run.layout.percentile_levels)
    for name in SMOOTHING_VARIANTS:
        layer = f"copies.{name}.head"
        rows = slice(-last, None)
        std = run.stat("std", layer, steps=rows)
        mean = run.stat("mean", layer, steps=rows)
        pct = run.stat("percentiles", layer, steps=rows)
        out[name] = {
            "std": float(std.mean()),
            "max": float(run.stat("max", layer, steps=rows).mean()),
            "range": float((pct[:, levels.index(99.0)] - pct[:, levels.index(1.0)]).mean()),
            "rms": float(np.sqrt(mean**2 + std**2).mean()),
            "test_acc": _last_finite(run.scalar(f"test_acc_{name}")),
        }
    return out


def ioffe_findings(run: Any, *, layer: str = "norm3", t0: int = 100, acc_step: int = 500) -> dict[str, float]:
    """Ioffe & Szegedy Fig. 1 figures from the per-unit 15/50/85th percentiles of ``layer``'s output.

    ``spread_ratio``: median over the stored units of spread(T)/spread(t0), spread = q85 − q15,
    T the last recorded step. ``shift``: median of mean_k |q_k(T) − q_k(t0)| / mean_t spread(t)
    (t ≥ t0). ``pooled_spread_ratio``: the same ratio from the pooled percentiles of all
    units. ``acc_early`` (test accuracy at ``acc_step``) and ``acc_final``.
    """
    levels = list(run.layout.percentile_levels)
    i15, i50, i85 = (levels.index(v) for v in (15.0, 50.0, 85.0))
    per = run.stat("channel_percentiles", layer, "output")
    q = per.reshape(per.shape[0], -1, len(levels))
    steps = np.asarray(run.steps)
    a = int(np.searchsorted(steps, t0))
    spread = q[:, :, i85] - q[:, :, i15]
    ratio = spread[-1] / spread[a]
    shift = np.mean([np.abs(q[-1, :, k] - q[a, :, k]) for k in (i15, i50, i85)], axis=0) / spread[a:].mean(0)
    pooled = run.stat("percentiles", layer, "output")
    pooled_spread = pooled[:, i85] - pooled[:, i15]
    return {
        "spread_ratio": float(np.median(ratio)),
        "shift": float(np.median(shift)),
        "pooled_spread_ratio": float(pooled_spread[-1] / pooled_spread[a]),
        "acc_early": _at_step(run, "test_acc", acc_step),
        "acc_final": _last_finite(run.scalar("test_acc")),
        "t0": float(steps[a]),
        "T": float(steps[-1]),
    }


def xiong_findings(run: Any) -> dict[str, dict[str, Any]]:
    """Per stack (``pre``, ``post``) and FFN weight (``fc`` = W¹, ``proj`` = W²): gradient norm vs depth.

    ``norms``: the recorded gradient norm of each block's layer averaged over the recorded
    steps (weight and bias together; the biases start at 0 and add little);
    ``spearman``: Spearman correlation of norm with block index; ``last_first``: ratio of the
    last block's norm to the first's.
    """
    names, grad = run.grad("grad_norm")
    mean = np.nanmean(grad, axis=0)
    col = {n: i for i, n in enumerate(names)}
    out: dict[str, dict[str, Any]] = {}
    for stack in ("pre", "post"):
        for sub in ("fc", "proj"):
            keys = [k for k in names if k.startswith(f"{stack}.blocks.") and k.endswith(f".mlp.{sub}")]
            keys.sort(key=lambda k: int(k.split(".")[2]))
            norms = np.array([mean[col[k]] for k in keys])
            out[f"{stack}.{sub}"] = {
                "norms": norms,
                "spearman": spearman(np.arange(len(norms)), norms),
                "last_first": float(norms[-1] / norms[0]),
            }
    return out


def _probe_sizes(run: Any, layer: str) -> np.ndarray:
    """Batch size of each call of ``layer`` relative to call 0, from the recorded ``numel``."""
    calls = next(info.calls for info in run.layers if info.name == layer)
    numel = np.array([np.nanmean(run.stat("numel", layer, "input" if _is_norm(run, layer) else "output", call=c))
                      for c in range(calls)])
    return numel / numel[0]


def _is_norm(run: Any, layer: str) -> bool:
    return any(info.name == layer and info.kind is not None for info in run.layers)


def wu_he_batch_findings(run: Any, *, batch: int = 32, skip: float = 0.5) -> dict[str, Any]:
    """How the statistics a norm normalizes with depend on the batch size (probe calls of ``wu-he-batch``).

    For each norm layer (``net.norm1..4``) and call (batch ``m``, call 0 = the training batch):

    * ``mean_dev`` (BatchNorm runs only): mean over channels of |batch mean − running mean| /
      √running var, with the running statistics of the previous recorded step (independent
      of this batch); Wu & He: BN's estimate gets noisy as the batch shrinks, ~1/√m.
    * ``scale``: the median over normalization groups of their std (``group_scale``), relative
      to call 0 — per channel over the batch for BN, per (sample, group) for GN.

    Averaged over recorded steps after the first ``skip`` fraction. ``slope``: least-squares slope
    of log ``mean_dev`` against log ``m`` per layer (−0.5 for 1/√m). ``r2``: how well
    ``mean_dev² = a/m + b`` fits (noise variance ∝ 1/m plus a batch-independent floor: the
    running statistics lag behind the moving weights); ``floor_share``: b / mean_dev² at the
    smallest batch.
    """
    norms = [info.name for info in run.layers if info.kind is not None and info.name.startswith("net.norm")]
    sizes = np.round(_probe_sizes(run, norms[0]) * batch).astype(int)
    n_rows = len(run.steps)
    start = max(1, int(skip * n_rows))
    out: dict[str, Any] = {"m": sizes, "layers": {}}
    levels = list(run.layout.group_levels)
    for layer in norms:
        entry: dict[str, Any] = {}
        if run.norm_kind != "none":
            scales = []
            for call in range(len(sizes)):
                group_scale = run.stat("group_scale", layer, "input", call=call)[start:, levels.index(50.0)]
                scales.append(np.nanmean(group_scale))
            entry["scale"] = np.array(scales) / scales[0]
        if run.norm_kind == "batch":
            running_mean = run.module_stat("running_mean", layer)
            running_std = np.sqrt(run.module_stat("running_var", layer))
            devs = []
            for call in range(len(sizes)):
                mean = run.stat("channel_mean", layer, "input", call=call)
                dev = np.abs(mean[start:] - running_mean[start - 1 : -1]) / running_std[start - 1 : -1]
                devs.append(float(np.nanmean(dev)))
            entry["mean_dev"] = np.array(devs)
            entry["slope"] = float(np.polyfit(np.log(sizes), np.log(entry["mean_dev"]), 1)[0])
            # deviation² = a/m + b: batch-mean noise (∝ 1/m) plus a floor that does not depend on the
            # batch (the running statistics lag behind weights that move).
            inv, sq = 1.0 / sizes, entry["mean_dev"] ** 2
            a, b = np.polyfit(inv, sq, 1)
            fit = a * inv + b
            entry["r2"] = float(1.0 - ((sq - fit) ** 2).sum() / ((sq - sq.mean()) ** 2).sum())
            entry["floor_share"] = float(max(b, 0.0) / sq[np.argmin(sizes)])
        out["layers"][layer] = entry
    return out


def wu_he_fig6_findings(run: Any, *, layer: str = "net.conv4", window: float = 0.1) -> dict[str, float]:
    """Wu & He Fig. 6: the 1/20/80/99th percentiles of ``layer``'s output (before its norm) over training.

    ``range_start`` / ``range_end``: 99th − 1st percentile averaged over the first / last
    ``window`` of the recorded steps; ``growth``: their ratio; ``p1`` … ``p99`` at the end.
    """
    levels = list(run.layout.percentile_levels)
    pct = run.stat("percentiles", layer, "output", call=0)
    k = max(1, int(window * len(pct)))
    rng = pct[:, levels.index(99.0)] - pct[:, levels.index(1.0)]
    out = {"range_start": float(rng[:k].mean()), "range_end": float(rng[-k:].mean())}
    out["growth"] = out["range_end"] / out["range_start"]
    for level in (1.0, 20.0, 80.0, 99.0):
        out[f"p{level:g}"] = float(pct[-k:, levels.index(level)].mean())
    return out


def santurkar_findings(run: Any) -> dict[str, float]:
    """Gradient-ICS figures from the ``ics_rel/…`` and ``ics_cos/…`` scalars of a run.

    Medians over every measured (layer, step): ``l2`` (‖G − G′‖), ``rel`` (‖G − G′‖/‖G‖), ``cos``, and
    ``frac_cos_below_0.9``; ``min_cos``.
    """
    def pooled(prefix: str) -> np.ndarray:
        values = np.concatenate([run.scalar(n) for n in run.scalar_names if n.startswith(prefix)])
        return values[np.isfinite(values)]

    l2, rel, cos = pooled("ics_l2/"), pooled("ics_rel/"), pooled("ics_cos/")
    return {
        "l2": float(np.median(l2)),
        "rel": float(np.median(rel)),
        "cos": float(np.median(cos)),
        "frac_cos_below_0.9": float(np.mean(cos < 0.9)),
        "min_cos": float(cos.min()),
        "measurements": float(cos.size),
    }
