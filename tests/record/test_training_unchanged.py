"""Attaching the recorder never changes training, and its hooks never sync with the host."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import nn

import normviz


def resnet_block() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(8, 3),
    )


def mlp_dropout() -> nn.Module:
    return nn.Sequential(nn.Linear(10, 32), nn.LayerNorm(32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 1))


def _losses(build, shape, path=None, steps=6, every=1):
    torch.manual_seed(123)
    model = build()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = torch.randn((steps,) + shape)
    rec = normviz.Recorder(model, path, every=every) if path is not None else contextlib.nullcontext()
    losses = []
    with rec:
        for i in range(steps):
            opt.zero_grad()
            loss = model(data[i]).square().mean()
            loss.backward()
            opt.step()
            if path is not None:
                rec.step(loss=loss)
            losses.append(loss.detach().clone())
    return torch.stack(losses), [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("build,shape", [(resnet_block, (4, 3, 6, 6)), (mlp_dropout, (16, 10))])
@pytest.mark.parametrize("every", [1, 2])
def test_losses_bit_for_bit_identical(build, shape, every, tmp_path):
    bare, bare_params = _losses(build, shape)
    recorded, rec_params = _losses(build, shape, tmp_path / "r.h5", every=every)
    assert torch.equal(bare, recorded)
    assert all(torch.equal(a, b) for a, b in zip(bare_params, rec_params))


class _SyncGuard:
    """Makes every host-sync method raise on the training thread while active.

    The background writer thread converts finished rows with ``.numpy()``; that is
    off the training thread and allowed.
    """

    NAMES = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")

    def __enter__(self):
        self.saved = {n: getattr(torch.Tensor, n) for n in self.NAMES}

        import threading

        main = threading.current_thread()

        def boom(name):
            original = self.saved[name]

            def raise_(*a, **k):
                if threading.current_thread() is main:
                    raise AssertionError(f"host sync: Tensor.{name} called inside a hook")
                return original(*a, **k)

            return raise_

        for n in self.NAMES:
            setattr(torch.Tensor, n, boom(n))
        return self

    def __exit__(self, *exc):
        for n, f in self.saved.items():
            setattr(torch.Tensor, n, f)


def test_no_host_sync_inside_hooks(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(inplace=True), nn.GroupNorm(2, 6),
        nn.InstanceNorm2d(6, affine=True), nn.Flatten(), nn.Linear(6 * 16, 8), nn.LayerNorm(8), nn.RMSNorm(8),
        nn.Linear(8, 2),
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    warnings_seen = []
    import warnings

    with warnings.catch_warnings(record=True) as caught, normviz.Recorder(
        model, tmp_path / "s.h5", statistics=["channel_percentiles", "sample"]
    ) as rec:
        warnings.simplefilter("always")
        for _ in range(3):
            opt.zero_grad()
            x = torch.randn(4, 3, 4, 4)
            with _SyncGuard():
                loss = model(x).square().mean()
                loss.backward()
                opt.step()  # the gradient statistics run in the optimizer hooks
            rec.step(loss=loss)
        warnings_seen = [str(w.message) for w in caught if "normviz" in str(w.message)]
    assert not warnings_seen, warnings_seen  # a sync would have disabled a statistic with a warning
    with normviz.open(tmp_path / "s.h5") as run:
        assert len(run.steps) == 3
        assert run.stat("channel_percentiles", "7", "output").shape == (3, 8 * 9)
