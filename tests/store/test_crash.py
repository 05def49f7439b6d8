"""A recording process killed with SIGKILL leaves a file that opens with every flushed step."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

import normviz
from normviz.crashtest import _flushed_step, kill_recorder


def test_a_flush_line_cut_by_the_kill_does_not_count():
    # The kill can land mid-line; only a whole "flushed N" line says step N reached the file.
    assert _flushed_step("flushed 15\n") == 15
    assert _flushed_step("flushed 1") is None
    assert _flushed_step("flushed") is None
    assert _flushed_step("flushed \n") is None


@pytest.mark.parametrize("seed", range(4))
def test_sigkill_at_random_moments_leaves_readable_file(tmp_path, seed):
    rng = random.Random(seed)
    result = kill_recorder(tmp_path, f"kill{seed}", rng.uniform(0.0, 0.6), every=rng.choice([1, 2]))
    assert result.ok, result.problem
    assert result.flushed_step >= 0 and result.recovered_steps > 0


def test_sigkill_during_normviz_record_leaves_readable_runs(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "normviz", "record", "--experiment", "seed-cnn", "--steps", "400", "--out", "out", "-q"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    files = []
    while time.monotonic() < deadline and len(files) < 2:
        time.sleep(0.2)
        files = sorted((tmp_path / "out").glob("*.h5")) if (tmp_path / "out").exists() else []
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    files = sorted((tmp_path / "out").glob("*.h5"))
    assert files
    for path in files:
        with normviz.open(path) as run:  # every run file there opens: finished ones and the killed one
            n = len(run.steps)
            assert run.steps.tolist() == list(range(n))
        cli = subprocess.run([sys.executable, "-m", "normviz", "info", str(path)], capture_output=True, text=True)
        assert cli.returncode == 0, cli.stderr
