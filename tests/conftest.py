"""Shared fixtures: headless matplotlib, small models and a trained run."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(2)


def train(model, path, *, steps=5, every=1, batch=None, lr=1e-2, make_batch=None, **kwargs):
    """Train *model* for *steps* SGD steps under a Recorder; returns the losses."""
    import normviz

    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    with normviz.Recorder(model, path, every=every, **kwargs) as rec:
        for _ in range(steps):
            x = make_batch(gen) if make_batch else batch
            opt.zero_grad()
            loss = model(x).float().square().mean()
            loss.backward()
            opt.step()
            rec.step(loss=loss)
            losses.append(loss.item())
    return losses


@pytest.fixture
def run_path(tmp_path):
    return tmp_path / "run.h5"
