"""Disk full or I/O errors while recording: training goes on (or stops when asked), nothing flushed is lost."""

from __future__ import annotations

import errno

import numpy as np
import pytest
import torch
from torch import nn

import normviz
from normviz.store import datasets
from normviz.store import writer as writer_mod


@pytest.fixture
def failing_append(monkeypatch):
    """Every dataset append after the first 40 raises ENOSPC, as a full disk does."""
    calls = {"n": 0}
    original = datasets.Rows.append

    def append(rows, block):
        calls["n"] += 1
        if calls["n"] > 40:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(rows, block)

    monkeypatch.setattr(datasets.Rows, "append", append)
    return calls


def _train(path, steps, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    done = 0
    with normviz.Recorder(model, path, flush_every=2, **kwargs) as rec:
        for _ in range(steps):
            opt.zero_grad()
            loss = model(torch.randn(16, 4)).square().mean()
            loss.backward()
            opt.step()
            rec.step(loss=loss)
            rec.flush() if done % 2 else None
            done += 1
    return done


def test_disk_full_warns_once_and_training_goes_on(tmp_path, failing_append):
    path = tmp_path / "full.h5"
    with pytest.warns(RuntimeWarning, match="No space left") as caught:
        done = _train(path, 30)
    assert done == 30
    assert sum("No space left" in str(w.message) for w in caught) == 1
    with normviz.open(path) as run:
        n = len(run.steps)
        assert 0 < n < 30
        assert run.steps.tolist() == list(range(n))
        assert np.isfinite(run.stat("mean", "1", "input")).all()


def test_on_error_raise_stops_training(tmp_path, failing_append):
    path = tmp_path / "raise.h5"
    with pytest.warns(RuntimeWarning):
        with pytest.raises(writer_mod.RecordingError, match="No space left"):
            _train(path, 30, on_error="raise")
    with normviz.open(path) as run:
        assert len(run.steps) > 0


def test_unwritable_folder_is_a_clear_error(tmp_path):
    # A missing folder is made, as SummaryWriter does; one that cannot be made is a clear error.
    (tmp_path / "afile").write_text("x")
    with pytest.raises(normviz.errors.NormvizError, match="cannot create the output folder"):
        normviz.Recorder(nn.Linear(2, 2), tmp_path / "afile" / "missing" / "r.h5")


def test_file_size_stays_close_to_its_data(tmp_path):
    """Chunks are written once per flush: no space lost to rewritten compressed chunks."""
    import h5py

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.BatchNorm1d(64), nn.ReLU(), nn.Linear(64, 64), nn.LayerNorm(64))
    path = tmp_path / "size.h5"
    with normviz.Recorder(model, path, flush_every=10, flush_secs=0.01) as rec:
        for _ in range(200):
            model(torch.randn(32, 16)).sum().backward()
            rec.step(loss=1.0)
    sizes = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: sizes.append(obj.id.get_storage_size()) if isinstance(obj, h5py.Dataset) else None)
    stored = sum(sizes)
    print(f"file {path.stat().st_size} bytes, datasets {stored} bytes")
    assert path.stat().st_size < 2.5 * stored + 200_000, (path.stat().st_size, stored)
