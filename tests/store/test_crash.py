"""A recording process killed with SIGKILL leaves a file that opens with every flushed step."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import normviz

CHILD = r"""
import sys, torch
from torch import nn
import normviz
torch.set_num_threads(1)
path, every = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
                      nn.Flatten(), nn.Linear(8 * 8 * 8, 4), nn.LayerNorm(4))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
rec = normviz.Recorder(model, path, every=every, flush_every=3, flush_secs=0.05)
step = 0
while True:
    opt.zero_grad()
    loss = model(torch.randn(8, 3, 8, 8)).square().mean()
    loss.backward()
    opt.step()
    rec.step(loss=loss)
    if step % 5 == 0:
        rec.flush()
        print("flushed", step, flush=True)
    step += 1
"""


def _kill_and_check(tmp_path, delay: float, every: int) -> tuple[int, int]:
    path = tmp_path / f"kill-{delay:.3f}-{every}.h5"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), str(every)], stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    flushed = -1
    deadline = time.monotonic() + 60
    # wait for the first flush, then kill at a random moment after it
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if line.startswith("flushed"):
            flushed = int(line.split()[1])
            break
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate()
    for line in rest.splitlines():
        if line.startswith("flushed"):
            flushed = int(line.split()[1])
    assert flushed >= 0, "the child never flushed"
    with normviz.open(path) as run:
        steps = run.steps
        expected = np.arange(0, len(steps) * every, every)
        assert steps.tolist() == expected.tolist()  # a clean prefix, no torn rows
        assert steps[-1] >= flushed - (flushed % every)  # every flushed step is there
        assert np.isfinite(run.stat("mean", "1", "output")).all()
        assert len(run.scalar("loss")) >= flushed + 1
        assert run.status["clean"] == 0
        return int(steps[-1]), flushed


@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_random_moments_leaves_readable_file(tmp_path, seed):
    rng = random.Random(seed)
    last, flushed = _kill_and_check(tmp_path, rng.uniform(0.0, 0.6), every=rng.choice([1, 2]))
    assert last >= 0
