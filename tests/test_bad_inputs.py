"""Bad files and bad options for every command that reads a run: one clear line, exit 2, nothing lost."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
from torch import nn

import normviz
from normviz.errors import RunFileError


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("good")
    path = folder / "good.h5"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with normviz.Recorder(model, path, experiment="tiny", norm_kind="batch") as rec:
        for _ in range(12):
            opt.zero_grad()
            loss = model(torch.randn(16, 4)).square().mean()
            loss.backward()
            opt.step()
            rec.step(loss=loss)
    return path


def cli(args, cwd, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "normviz", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "MPLBACKEND": "Agg"},
    )


def _bad_files(folder, good):
    """name -> path of each kind of broken input."""
    out = {}
    (folder / "empty.h5").write_bytes(b"")
    out["empty file"] = folder / "empty.h5"
    (folder / "random.h5").write_bytes(random.Random(0).randbytes(5000))
    out["random bytes"] = folder / "random.h5"
    with h5py.File(folder / "foreign.h5", "w") as f:
        f["data"] = np.arange(10)
    out["foreign HDF5"] = folder / "foreign.h5"
    newer = folder / "newer.h5"
    shutil.copy(good, newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["schema_version"] = "2.0"
    out["newer schema"] = newer
    missing = folder / "missing-ds.h5"
    shutil.copy(good, missing)
    with h5py.File(missing, "r+") as f:
        del f["act/mean"]
    out["dataset missing"] = missing
    wrong = folder / "wrong-shape.h5"
    shutil.copy(good, wrong)
    with h5py.File(wrong, "r+") as f:
        del f["act/std"]
        f.create_dataset("act/std", data=np.zeros((3, 2, 2), np.float32))
    out["dataset of the wrong shape"] = wrong
    return out


@pytest.mark.parametrize("command", ["info", "plot"])
def test_every_bad_file_gives_one_line_and_exit_2(command, good_run, tmp_path):
    for what, path in _bad_files(tmp_path, good_run).items():
        args = [command, str(path)] + (["--out", str(tmp_path / "fig"), "-q"] if command == "plot" else [])
        proc = cli(args, tmp_path)
        assert proc.returncode == 2, (what, proc.stderr)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, (what, proc.stderr)
        assert path.name in lines[0] and "Traceback" not in proc.stderr, (what, lines)
        assert not (tmp_path / "fig").exists() or not any((tmp_path / "fig").iterdir())


def test_reader_raises_run_file_error_for_each_bad_file(good_run, tmp_path):
    for path in _bad_files(tmp_path, good_run).values():
        with pytest.raises(RunFileError, match=path.name):
            normviz.open(path)
    with pytest.raises(RunFileError, match="no such file"):
        normviz.open(tmp_path / "nope.h5")
    with pytest.raises(RunFileError, match="directory"):
        normviz.open(tmp_path)


def test_truncated_runs_never_hang_and_fail_cleanly(good_run, tmp_path):
    data = good_run.read_bytes()
    rng = random.Random(1)
    for i, cut in enumerate(sorted(rng.sample(range(1, len(data)), 8))):
        path = tmp_path / f"cut{i}.h5"
        path.write_bytes(data[:cut])
        proc = cli(["info", str(path), "--json"], tmp_path, timeout=60)
        assert proc.returncode in (0, 2), proc.stderr
        if proc.returncode == 2:
            assert path.name in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--renderer", "nope"], "unknown renderer"),
        (["--format", "png,jpeg2000"], "--format"),
        (["--style", "poster"], "--style"),
        (["--steps", "10:a"], "steps"),
    ],
)
def test_plot_bad_options_exit_2(args, needle, good_run, tmp_path):
    proc = cli(["plot", str(good_run), "--out", str(tmp_path / "f"), "-q", *args], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_plot_folder_without_runs_and_no_runs_dir(tmp_path):
    (tmp_path / "emptydir").mkdir()
    proc = cli(["plot", "emptydir"], tmp_path)
    assert proc.returncode == 2 and "no run files" in proc.stderr
    proc = cli(["plot"], tmp_path)
    assert proc.returncode == 2 and "normviz-runs" in proc.stderr


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_plot_unwritable_output_folder(good_run, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    proc = cli(["plot", str(good_run), "--out", str(locked / "sub")], tmp_path)
    assert proc.returncode == 2 and "locked" in proc.stderr


def test_plot_output_is_a_file(good_run, tmp_path):
    (tmp_path / "afile").write_text("x")
    proc = cli(["plot", str(good_run), "--out", str(tmp_path / "afile"), "-q"], tmp_path)
    assert proc.returncode == 2 and "afile" in proc.stderr and "Traceback" not in proc.stderr


def test_record_refuses_to_overwrite_without_flag(tmp_path):
    args = ["record", "--experiment", "seed-mlp", "--norm", "batch", "--steps", "2", "--out", "o", "-q"]
    assert cli(args, tmp_path).returncode == 0
    before = (tmp_path / "o" / "seed-mlp-batch.h5").read_bytes()
    proc = cli(args, tmp_path)
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert (tmp_path / "o" / "seed-mlp-batch.h5").read_bytes() == before
    assert cli(args + ["--overwrite"], tmp_path).returncode == 0


def test_layer_names_with_odd_characters_round_trip(tmp_path):
    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            for name in ("a/b", "sp ace", "ünï", "dots"):
                self.add_module(name, nn.Linear(3, 3))

        def forward(self, x):
            for m in self.children():
                x = m(x)
            return x

    model = Named()
    path = tmp_path / "names.h5"
    with normviz.Recorder(model, path) as rec:
        model(torch.randn(2, 3)).sum().backward()
        rec.step()
    with normviz.open(path) as run:
        assert [layer.name for layer in run.layers] == ["a/b", "sp ace", "ünï", "dots"]
        assert np.isfinite(run.stat("mean", "a/b")).all()
    from normviz.plot.api import figure_name

    for evil in ("../../etc/passwd", "a/b", "..", "x\\y", ""):
        name = figure_name(evil)
        assert "/" not in name and "\\" not in name and ".." not in name and name
