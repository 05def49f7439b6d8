"""Run and MergedRun both answer RunLike in full, rows= included."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from torch import nn

import normviz
from normviz.datatypes import RunLike
from normviz.merge import MergedRun, merge_ranks


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runlike")
    paths = []
    for rank in range(2):
        torch.manual_seed(rank)
        model = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Linear(6, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        path = folder / f"run.rank{rank}.h5"
        with normviz.Recorder(model, path, rank=rank, world_size=2) as rec:
            for _ in range(5):
                opt.zero_grad()
                loss = model(torch.randn(8, 3)).square().mean()
                loss.backward()
                opt.step()
                rec.step(loss=loss)
        paths.append(path)
    runs = [normviz.open(p) for p in paths]
    yield runs
    for run in runs:
        run.close()


def _members(protocol):
    return [name for name in dir(protocol) if not name.startswith("_") and name not in ("register",)]


def test_run_and_merged_run_answer_every_member(ranks):
    merged = merge_ranks(ranks)[0]
    assert isinstance(merged, MergedRun)
    for run in (ranks[0], merged):
        assert isinstance(run, RunLike)
        for name in _members(RunLike) + list(RunLike.__annotations__):
            assert hasattr(run, name), (type(run).__name__, name)
            want = getattr(RunLike, name, None)
            if inspect.isfunction(want):
                have = inspect.signature(getattr(run, name)).parameters
                for param in list(inspect.signature(want).parameters)[1:]:
                    assert param in have, (type(run).__name__, name, param)


def test_merged_run_reads_rows_as_it_reads_steps(ranks):
    merged = merge_ranks(ranks)[0]
    rows = [3, 1]
    for name in ("channel_mean", "mean", "percentiles", "min", "numel"):  # (hist: edges differ without a group)
        np.testing.assert_array_equal(merged.stat(name, "1", "input", rows=rows),
                                      merged.stat(name, "1", "input")[rows])
    np.testing.assert_array_equal(merged.grad("grad_norm", rows=rows)[1], merged.grad("grad_norm")[1][rows])
    np.testing.assert_array_equal(merged.module_stat("running_var", "1", rows=rows),
                                  merged.module_stat("running_var", "1")[rows])
    np.testing.assert_array_equal(merged.stat_all("std", rows=rows)[1], merged.stat_all("std")[1][rows])
    with pytest.raises(TypeError):
        merged.stat("mean", "1", "input", steps=slice(0, 2), rows=rows)
