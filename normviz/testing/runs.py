"""Small CPU runs for renderer tests: :func:`record_run` and :func:`record_contract_runs`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class ContractRuns:
    """Runs for :class:`RendererContract`: ``full`` (several kinds), ``small``, ``nonfinite``."""

    full: list[Any]
    small: list[Any]
    nonfinite: list[Any]


def _tiny_cnn(kind: str) -> Any:
    from torch import nn

    from normviz.experiments.models import make_norm

    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), make_norm(kind, 4, dims=2), nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    )


def record_run(
    path: str | os.PathLike[str],
    model: Any,
    make_batch: Any,
    *,
    steps: int = 4,
    lr: float = 0.05,
    poison_at: int | None = None,
    **recorder: Any,
) -> Any:
    """Train ``model`` for ``steps`` SGD steps under a Recorder and open the run.

    ``make_batch(generator)`` returns an input batch; the loss is the mean
    square of the output. ``poison_at`` sets the first parameter to +inf before
    that step, so the run turns non-finite there. Extra keyword arguments go to
    :class:`normviz.Recorder`.
    """
    import torch

    import normviz

    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    with normviz.Recorder(model, path, **recorder) as rec:
        for step in range(steps):
            if poison_at is not None and step == poison_at:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("inf"))
            opt.zero_grad()
            loss = model(make_batch(gen)).float().square().mean()
            loss.backward()
            opt.step()
            rec.step(loss=loss)
    return normviz.open(path)


def record_contract_runs(
    folder: str | os.PathLike[str], *, kinds: Sequence[str] = ("batch", "layer", "none"), steps: int = 4,
    plugins: Any = None,
) -> ContractRuns:
    """Record small CPU runs for the contract into ``folder`` (a few seconds).

    ``full``: a tiny CNN (conv → norm → ReLU → conv → pool → linear) per kind in
    ``kinds``, experiment ``"contract"``; ``small``: a lone BatchNorm1d layer,
    one recorded step; ``nonfinite``: the CNN with BatchNorm, made non-finite
    at step 2. ``plugins`` is passed to the recorders (a PluginHost).
    """
    import torch
    from torch import nn

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def images(gen: Any) -> Any:
        return torch.randn(4, 3, 4, 4, generator=gen) * 2 + 1

    def vectors(gen: Any) -> Any:
        return torch.randn(6, 4, generator=gen) + 3

    extra = {} if plugins is None else {"plugins": plugins}
    full = [
        record_run(folder / f"contract-{kind}.h5", _tiny_cnn(kind), images, steps=steps, experiment="contract",
                   label=f"contract-{kind}", norm_kind=kind, **extra)
        for kind in kinds
    ]
    small = [record_run(folder / "small.h5", nn.Sequential(nn.BatchNorm1d(4)), vectors, steps=1, label="small",
                        **extra)]
    nonfinite = [record_run(folder / "nonfinite.h5", _tiny_cnn("batch"), images, steps=steps, poison_at=2,
                            label="nonfinite", norm_kind="batch", **extra)]
    return ContractRuns(full, small, nonfinite)
