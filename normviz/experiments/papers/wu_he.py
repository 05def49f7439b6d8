"""Wu & He 2018: how BatchNorm's and GroupNorm's statistics depend on the batch size; Figure 6.

A VGG-style CNN trains on batches of 32 while every forward also runs probe batches of
16/8/4/2 (:class:`BatchProbe`); :func:`normviz.analysis.findings.wu_he_batch_findings` and
:func:`~normviz.analysis.findings.wu_he_fig6_findings` read the run.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normviz.experiments.base import Setup, StepResult, identity_slots
from normviz.experiments.papers.common import accuracy, frozen_running_stats, image_task, vgg_small

__all__ = ["BatchProbe", "build_wu_he"]


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
            with torch.no_grad(), frozen_running_stats(self.net):
                for m in self.probes:
                    self.net(x[lo : lo + m])
                    lo += m
        return out


def build_wu_he(
    kind: str, gen: torch.Generator, device: torch.device, *, batch: int = 32, probes: Sequence[int] = (16, 8, 4, 2),
    lr: float = 0.02, width: int = 16, size: int = 16, eval_every: int = 25,
) -> Setup:
    """:class:`BatchProbe` around a He-initialized :func:`vgg_small` on noisy synthetic image classes,
    SGD with momentum, training batch ``batch`` plus probe batches of ``probes``; test accuracy every
    ``eval_every`` steps.
    """
    x, y = image_task(gen, 4096 + 1000, 10, size, 1.0)
    x, y = x.to(device), y.to(device)
    x_test, y_test, x, y = x[4096:], y[4096:], x[:4096], y[:4096]
    model = BatchProbe(vgg_small(kind, width=width), batch, probes).to(device)
    net = model.net
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    n = x.shape[0]
    # The probe rows come from their own generator: the training batches are the same without probes.
    probe_gen = torch.Generator().manual_seed(int(torch.randint(2**31 - 1, (1,), generator=gen)))

    def step(model: nn.Module, opt: torch.optim.Optimizer, i: int) -> StepResult:
        idx = torch.cat([torch.randint(n, (batch,), generator=gen),
                         torch.randint(n, (sum(probes),), generator=probe_gen)])
        idx = idx.to(device)
        opt.zero_grad()
        loss = F.cross_entropy(model(x[idx]), y[idx[:batch]])
        loss.backward()
        opt.step()
        if i % eval_every == 0:
            return loss, {"test_acc": accuracy(model, x_test, y_test, net)}
        return loss

    return Setup(model, opt, step, identity_slots(model, 1))

