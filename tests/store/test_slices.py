"""Reading parts of a run: row indices, strides, and the chunk shape that keeps them cheap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import normviz
from normviz.store import datasets


@pytest.fixture(scope="module")
def run_path(tmp_path_factory: pytest.TempPathFactory):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 40), nn.BatchNorm1d(40), nn.ReLU(), nn.Linear(40, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    path = tmp_path_factory.mktemp("slices") / "run.h5"
    with normviz.Recorder(model, path, every=1) as rec:
        for _ in range(12):
            opt.zero_grad()
            loss = model(torch.randn(16, 8)).pow(2).mean()
            loss.backward()
            opt.step()
            rec.step(loss=loss.item())
    return path


def test_rows_match_full_reads(run_path) -> None:
    with normviz.open(run_path) as run:
        rows = [7, 0, 3, 3, -1]
        full = run.stat("channel_mean", "1", "input")
        np.testing.assert_array_equal(run.stat("channel_mean", "1", "input", rows=rows), full[rows])
        np.testing.assert_array_equal(run.stat("mean", "1", "input", rows=rows), run.stat("mean", "1", "input")[rows])
        np.testing.assert_array_equal(run.stat("hist", "1", "output", rows=[2]), run.stat("hist", "1", "output")[[2]])
        np.testing.assert_array_equal(run.grad("grad_norm", rows=rows)[1], run.grad("grad_norm")[1][rows])
        np.testing.assert_array_equal(run.module_stat("weight", "1", rows=rows), run.module_stat("weight", "1")[rows])
        sites, counts = run.stat_all("nonfinite", rows=rows)
        np.testing.assert_array_equal(counts, run.stat_all("nonfinite")[1][rows])
        assert run.stat("channel_mean", "1", "input", rows=[]).shape == (0, full.shape[1])


def test_strided_steps(run_path) -> None:
    with normviz.open(run_path) as run:
        full = run.stat("percentiles", "0")
        np.testing.assert_array_equal(run.stat("percentiles", "0", steps=slice(1, None, 4)), full[1::4])


def test_rows_are_checked(run_path) -> None:
    with normviz.open(run_path) as run:
        with pytest.raises(IndexError):
            run.stat("mean", "1", "input", rows=[len(run.steps)])
        with pytest.raises(TypeError):
            run.stat("mean", "1", "input", rows=[0], steps=slice(0, 1))


def test_chunks_hold_one_flush_and_wide_datasets_split_columns() -> None:
    # one flush of rows fills whole chunks: a compressed chunk is written once
    assert datasets.chunks(100, 4, 10) == (10, 100)
    assert datasets.chunks(4800, 4, 10) == (10, datasets.COLUMN_BLOCK)
    assert datasets.chunks(None, 8, 10) == (4096,)
    # however many rows a flush holds, a chunk stays at most 1 MiB
    assert datasets.chunks(4800, 4, 10**9) == (1024, datasets.COLUMN_BLOCK)
    assert datasets.chunks(100, 4, 10**9) == (2621, 100)


def test_a_flush_that_never_comes_still_writes(tmp_path) -> None:
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(8, 700), nn.BatchNorm1d(700), nn.Linear(700, 1))  # wide datasets
    with normviz.Recorder(model, tmp_path / "r.h5", flush_every=10**9, flush_secs=1e9) as rec:
        for _ in range(3):
            model(torch.randn(16, 8)).sum().backward()
            rec.step()
    with normviz.open(tmp_path / "r.h5") as run:
        assert run.steps.tolist() == [0, 1, 2] and run.status["clean"] == 1
