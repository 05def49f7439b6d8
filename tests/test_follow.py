"""A run in progress: ``normviz plot`` on a file another process is still writing, and ``--follow``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import normviz
from normviz.cli import main

WRITER = textwrap.dedent(
    """
    import sys, time, torch
    from torch import nn
    import normviz
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with normviz.Recorder(model, sys.argv[1], flush_every=1, flush_secs=0.1) as rec:
        for step in range(int(sys.argv[2])):
            x = torch.randn(16, 4)
            loss = model(x).square().mean()
            opt.zero_grad(); loss.backward(); opt.step()
            rec.step(loss=loss.detach())
            rec.flush()
            time.sleep(float(sys.argv[3]))
    """
)


def _writer(path, steps, pause):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(steps), str(pause)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for_rows(path, rows, proc, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None or proc.returncode == 0, proc.stdout.read().decode(errors="replace")
        if path.exists():
            try:
                with normviz.open(path) as run:
                    if len(run.steps) >= rows:
                        return len(run.steps)
            except Exception:  # noqa: BLE001 - the file may be between creation and first row
                pass
        time.sleep(0.1)
    raise AssertionError(f"{path}: fewer than {rows} rows after {timeout} s")


def _plot(args, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


def test_plot_a_run_still_being_written(tmp_path, monkeypatch, capsys):
    path = tmp_path / "live.h5"
    proc = _writer(path, 400, 0.05)
    try:
        _wait_for_rows(path, 2, proc)
        code, out, err = _plot(["plot", str(path), "-r", "loss,histograms", "--format", "png", "--out", "a", "-q"],
                               monkeypatch, tmp_path, capsys)
        assert code == 0, err
        with normviz.open(path) as run:
            first = len(run.steps)
            assert run.status["clean"] == 0  # still being written
            _wait_for_rows(path, first + 3, proc)
            run.refresh()
            second = len(run.steps)
        assert second > first
        code, out, err = _plot(["plot", str(path), "-r", "loss,histograms", "--format", "png", "--out", "b", "-q"],
                               monkeypatch, tmp_path, capsys)
        assert code == 0, err
        assert (tmp_path / "b" / "live-loss.png").stat().st_size > 0
        assert (tmp_path / "b" / "live-histograms.png").stat().st_size > 0
    finally:
        proc.kill()
        proc.wait()


def test_follow_redraws_until_the_run_is_closed(tmp_path):
    path = tmp_path / "live.h5"
    proc = _writer(path, 30, 0.15)
    try:
        _wait_for_rows(path, 1, proc)
        follow = subprocess.run(
            [sys.executable, "-m", "normviz", "plot", str(path), "-r", "loss", "--format", "png", "--out",
             str(tmp_path / "figs"), "-q", "--follow", "--interval", "0.5"],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert follow.returncode == 0, follow.stderr
    drawn = [int(line.split("drew steps up to ")[1].split(";")[0]) for line in follow.stderr.splitlines()
             if "drew steps up to" in line]
    assert len(drawn) >= 2, follow.stderr
    assert drawn == sorted(drawn) and drawn[-1] > drawn[0]
    assert drawn[-1] == 29 and "every run is closed" in follow.stderr.splitlines()[-1]
    assert (tmp_path / "figs" / "live-loss.png").stat().st_size > 0


def test_follow_on_a_folder_joins_run_files_that_appear_later(tmp_path):
    folder = tmp_path / "runs"
    folder.mkdir()
    first, late = folder / "first.h5", folder / "late.h5"
    procs = [_writer(first, 70, 0.15)]  # long enough for the late one to start (~10 s)
    try:
        _wait_for_rows(first, 1, procs[0])
        follow = subprocess.Popen(
            # not -q: the files written are listed on stdout (-q prints only warnings and errors)
            [sys.executable, "-m", "normviz", "plot", str(folder), "-r", "loss", "--format", "png", "--out",
             str(tmp_path / "figs"), "--follow", "--interval", "0.3"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        time.sleep(1.0)  # the follower has drawn the first file alone by now
        procs.append(_writer(late, 10, 0.05))
        out, err = follow.communicate(timeout=120)
        assert all(p.wait(timeout=60) == 0 for p in procs)
    finally:
        for p in procs:
            p.kill()
    assert follow.returncode == 0, err
    assert f"following {late} too" in err
    assert "every run is closed" in err.splitlines()[-1]
    with normviz.open(late) as run:
        assert run.status["clean"] == 1
    # The last drawing holds both runs.
    written = [Path(line) for line in out.splitlines() if line.endswith(".png")]
    assert {p.name for p in written} == {"first-loss.png", "late-loss.png"}
    assert all(p.stat().st_size > 0 for p in written)
