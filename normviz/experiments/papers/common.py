"""What several paper reproductions share: eval-mode accuracy, frozen BatchNorm statistics, a noisy image task
and a VGG-style CNN."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from normviz.experiments import models

__all__ = ["accuracy", "frozen_running_stats", "image_task", "vgg_small"]


@torch.no_grad()
def accuracy(root: nn.Module, x: Tensor, y: Tensor, forward: Callable[[Tensor], Tensor] | None = None) -> Tensor:
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


@contextmanager
def frozen_running_stats(model: nn.Module) -> Iterator[None]:
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


def image_task(gen: torch.Generator, n: int, classes: int, size: int, noise: float) -> tuple[Tensor, Tensor]:
    """``n`` synthetic ``size``×``size`` images of ``classes`` classes plus ``noise`` × N(0, 1) noise, and labels."""
    x, y = models.image_classification_data(n, gen, num_classes=classes, size=size)
    return x + noise * torch.randn(x.shape, generator=gen), y


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

