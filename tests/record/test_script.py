"""Zero-code recording of unmodified scripts: `normviz record train.py -- ARGS`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

import normviz

ROOT = Path(__file__).resolve().parents[2]


def record(args, cwd):
    return subprocess.run([sys.executable, "-m", "normviz", "record", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_unmodified_gallery_script_is_recorded(tmp_path):
    proc = record([str(ROOT / "gallery" / "train_mlp.py"), "--out", "run.h5", "--steps", "7", "--", "--epochs", "3"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    with normviz.open(tmp_path / "run.h5") as run:
        assert run.steps.tolist() == list(range(7))
        assert run.norm_kind == "batch"
        loss = run.scalar("loss")
        assert len(loss) == 7 and np.isfinite(loss).all()


SCRIPT = """
import argparse, torch
from torch import nn
parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--fail", action="store_true")
args = parser.parse_args()
teacher = nn.Linear(4, 1)            # never trained: must not be picked
with torch.no_grad():
    y_all = teacher(torch.randn(64, 4))
model = nn.Sequential(nn.Linear(4, 16), nn.LayerNorm(16), nn.ReLU(), nn.Linear(16, 1))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for i in range(args.steps):
    x = torch.randn(64, 4)
    loss = (model(x) - y_all).square().mean()
    opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    with torch.no_grad():
        model(x)
    model.train()
    if args.fail and i == 2:
        raise RuntimeError("training diverged")
print("done")
"""


def test_script_model_is_found_and_eval_and_teacher_ignored(tmp_path):
    (tmp_path / "train.py").write_text(textwrap.dedent(SCRIPT))
    proc = record(["train.py", "--out", "a.h5", "--", "--steps", "5"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "done" in proc.stdout
    with normviz.open(tmp_path / "a.h5") as run:
        assert [layer.name for layer in run.layers] == ["0", "1", "3"]
        assert len(run.steps) == 5 and run.norm_kind == "layer"


def test_failing_script_keeps_its_steps_and_exits_1(tmp_path):
    (tmp_path / "train.py").write_text(textwrap.dedent(SCRIPT))
    proc = record(["train.py", "--out", "b.h5", "--", "--steps", "9", "--fail"], tmp_path)
    assert proc.returncode == 1
    assert "training diverged" in proc.stderr
    with normviz.open(tmp_path / "b.h5") as run:
        assert len(run.steps) == 3


def test_script_without_training_is_a_clear_error(tmp_path):
    (tmp_path / "noop.py").write_text("print('hello')\n")
    proc = record(["noop.py", "--out", "c.h5"], tmp_path)
    assert proc.returncode == 2 and "no model was trained" in proc.stderr
