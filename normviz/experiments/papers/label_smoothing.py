"""Label smoothing: plain CE vs the seed's smoothing vs ``nn.CrossEntropyLoss(label_smoothing=ε)``.

One classifier copied three times (same initial weights, same batches), one copy per loss
(:data:`SMOOTHING_VARIANTS`); :func:`normviz.analysis.findings.label_smoothing_findings`
compares their logits.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normviz.analysis.findings import SMOOTHING_COPIES
from normviz.experiments.base import Setup, StepResult
from normviz.experiments.papers.common import accuracy

__all__ = ["SMOOTHING_VARIANTS", "Copies", "SeedLabelSmoothingCE", "build_label_smoothing"]


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


#: The three losses of ``label-smoothing``: name -> (description, loss factory). The names are
#: :data:`normviz.analysis.findings.SMOOTHING_COPIES`, which the findings read without torch.
SMOOTHING_VARIANTS: dict[str, tuple[str, Callable[[float], nn.Module]]] = {
    "ce": ("plain cross-entropy", lambda eps: nn.CrossEntropyLoss()),
    "seed": ("seed's smoothing, ε/(K−1) on wrong classes", SeedLabelSmoothingCE),
    "torch": ("nn.CrossEntropyLoss(label_smoothing=ε), ε/K on all",
              lambda eps: nn.CrossEntropyLoss(label_smoothing=eps)),
}
assert tuple(SMOOTHING_VARIANTS) == SMOOTHING_COPIES, "SMOOTHING_VARIANTS and SMOOTHING_COPIES disagree"


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


def build_label_smoothing(
    kind: str, gen: torch.Generator, device: torch.device, *, eps: float = 0.1, classes: int = 10,
    scale: float = 1.0, eval_every: int = 10,
) -> Setup:
    """The three copies of a Linear-ReLU-Linear classifier on ``classes`` Gaussian classes, Adam 3e-3, batch 128.

    ``scale`` sizes the hidden layer and the training set; test accuracy of each copy every ``eval_every`` steps.
    """
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
                    scalars[f"test_acc_{name}"] = accuracy(model, x_test, y_test, m)
        return total, scalars

    return Setup(trio, opt, step, {})

