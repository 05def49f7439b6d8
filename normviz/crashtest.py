"""A harness that SIGKILLs recording processes and checks what they leave behind.

Used by the crash tests and by ``benchmarks/stress_kill.py``. POSIX only.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: A training loop under a Recorder that prints "flushed N" after each explicit flush.
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
        # One write per line: a kill can still cut it, but never between the word and the number.
        sys.stdout.write(f"flushed {step}\n"); sys.stdout.flush()
    step += 1
"""


_FLUSHED = re.compile(r"flushed (\d+)\n")


@dataclass
class KillResult:
    """What one kill left: steps recovered against the last step known to be flushed."""

    path: Path
    recovered_steps: int
    last_step: int
    flushed_step: int
    ok: bool
    problem: str = ""


def kill_recorder(folder: Path, name: str, delay: float, every: int = 1, timeout: float = 60.0) -> KillResult:
    """Start a recording child, wait for its first flush plus *delay* seconds, SIGKILL it, check the file."""
    path = folder / f"{name}.h5"
    script = folder / "crash_child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen(
        [sys.executable, str(script), str(path), str(every)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    flushed = -1
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        step = _flushed_step(line)
        if step is not None:
            flushed = step
            break
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate()
    for line in rest.splitlines(keepends=True):
        step = _flushed_step(line)
        if step is not None:
            flushed = step
    return check_killed_run(path, flushed, every)


def _flushed_step(line: str) -> int | None:
    """The step of a complete "flushed N" line; None for other output or a line the kill cut short."""
    match = _FLUSHED.fullmatch(line)
    return int(match.group(1)) if match else None


def check_killed_run(path: Path, flushed: int, every: int) -> KillResult:
    """The file opens, holds a clean prefix of recorded steps and every step flushed before the kill."""
    import normviz

    try:
        with normviz.open(path) as run:
            steps = run.steps
            n = len(steps)
            if steps.tolist() != list(range(0, n * every, every)):
                return KillResult(path, n, int(steps[-1]) if n else -1, flushed, False, "steps are not a clean prefix")
            last = int(steps[-1]) if n else -1
            if flushed >= 0 and last < flushed - (flushed % every):
                return KillResult(path, n, last, flushed, False, f"lost flushed steps: last {last} < flushed {flushed}")
            if n and not np.isfinite(run.stat("mean", "1", "output")).all():
                return KillResult(path, n, last, flushed, False, "non-finite statistics in recovered rows")
            if len(run.scalar("loss")) < flushed + 1:
                return KillResult(path, n, last, flushed, False, "lost flushed scalars")
            return KillResult(path, n, last, flushed, True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is the finding
        return KillResult(path, 0, -1, flushed, False, f"{type(exc).__name__}: {exc}")
