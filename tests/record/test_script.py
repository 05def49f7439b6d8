"""Zero-code recording of unmodified scripts: `normviz record train.py -- ARGS`."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import normviz
import normviz.errors

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "tests" / "scripts"


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
        # The eval-mode forward after each step is the eval series, not a training forward.
        ev = run.eval()
        assert ev.steps.tolist() == [1, 2, 3, 4, 5]
        assert [layer.name for layer in ev.layers] == ["0", "1", "3"]
        assert np.isfinite(ev.stat("std", "1", "output")).all()


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


# --------------------------------------------------------------------------- a new user's first hour

PROBE = """
import json, os, sys
import helper_beside_me                       # a module in the script's own folder
with open("data.txt") as fh:                  # a path relative to the working folder
    data = fh.read().strip()
print(json.dumps({"name": __name__, "file": __file__, "argv": sys.argv, "path0": sys.path[0],
                  "cwd": os.getcwd(), "helper": helper_beside_me.VALUE, "data": data,
                  "main_is_me": sys.modules["__main__"].__dict__ is globals()}))
import torch
from torch import nn
model = nn.Sequential(nn.Linear(2, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(2):
    opt.zero_grad(); model(torch.ones(3, 2)).sum().backward(); opt.step()
"""


def test_script_runs_as_python_would_run_it(tmp_path):
    """Item 2: sys.path[0], sys.argv, __file__, __name__ and relative paths as under `python script.py`."""
    import json

    code = tmp_path / "code"
    code.mkdir()
    (code / "probe.py").write_text(PROBE)
    (code / "helper_beside_me.py").write_text("VALUE = 42\n")
    work = tmp_path / "work"
    work.mkdir()
    (work / "data.txt").write_text("relative\n")
    args = ["../code/probe.py", "--lr", "3"]
    plain = subprocess.run([sys.executable, *args], cwd=work, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 0, plain.stderr
    proc = record([args[0], "--out", "probe.h5", "--", *args[1:]], work)
    assert proc.returncode == 0, proc.stderr
    want = json.loads(plain.stdout.splitlines()[0])
    got = json.loads(proc.stdout.splitlines()[0])
    assert got == want
    assert want["argv"] == args and want["helper"] == 42 and want["main_is_me"]


def test_script_mode_records_the_update_ratio(tmp_path):
    """Item 1: the update ratio is measured although script mode closes the step first."""
    proc = record([str(ROOT / "gallery" / "train_mlp.py"), "--out", "run.h5", "--steps", "3", "--", "--epochs", "1"],
                  tmp_path)
    assert proc.returncode == 0, proc.stderr
    with normviz.open(tmp_path / "run.h5") as run:
        names, ratio = run.grad("update_ratio")
        assert ratio.shape == (3, len(names)) and np.isfinite(ratio).all() and (ratio > 0).all()


def test_update_ratio_whatever_the_order_of_optimizer_post_hooks(tmp_path):
    """Item 1, at the mechanism: a post-hook registered before the recorder's closes the step."""
    import torch
    from torch import nn
    from torch.optim.optimizer import register_optimizer_step_post_hook

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    box = {}
    handle = register_optimizer_step_post_hook(lambda o, a, k: box["rec"].step())  # before the Recorder's
    try:
        with normviz.Recorder(model, tmp_path / "run.h5") as rec:
            box["rec"] = rec
            for _ in range(3):
                opt.zero_grad()
                model(torch.randn(16, 4)).square().mean().backward()
                opt.step()
    finally:
        handle.remove()
    with normviz.open(tmp_path / "run.h5") as run:
        ratio = run.grad("update_ratio")[1]
        assert ratio.shape == (3, 3) and np.isfinite(ratio).all() and (ratio > 0).all()


HAND_WRITTEN_SGD = """
import sys, torch
from torch import nn
model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 1))
for step in range(4):
    loss = model(torch.randn(16, 4)).square().mean()
    model.zero_grad()
    loss.backward()
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.1 * p.grad
    if "--mark" in sys.argv:
        import normviz
        normviz.mark_step()
print("trained")
"""


def test_script_without_optimizer_step_exits_2_and_says_what_to_do(tmp_path):
    """Item 4: no optimizer.step() → one line naming the model and the way out; no file, no folder."""
    (tmp_path / "sgd.py").write_text(HAND_WRITTEN_SGD)
    proc = record(["sgd.py"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("normviz")]
    assert len(lines) == 1, proc.stderr
    assert "Sequential" in lines[0] and "no optimizer.step()" in lines[0] and "normviz.mark_step()" in lines[0]
    assert not list(tmp_path.glob("normviz-runs/*/*.h5")) and not list(tmp_path.glob("normviz-runs/*"))


def test_mark_step_counts_the_steps_of_a_hand_written_update(tmp_path):
    (tmp_path / "sgd.py").write_text(HAND_WRITTEN_SGD)
    proc = record(["sgd.py", "--out", "sgd.h5", "--steps", "3", "--", "--mark"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    with normviz.open(tmp_path / "sgd.h5") as run:
        assert run.steps.tolist() == [0, 1, 2]
        assert np.isfinite(run.scalar("loss")).all()
        assert np.isfinite(run.grad("grad_norm")[1]).all()
    plain = subprocess.run([sys.executable, "sgd.py", "--mark"], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
    assert plain.returncode == 0 and "trained" in plain.stdout  # a no-op outside normviz record


def test_script_out_must_be_an_h5_file_or_an_existing_folder(tmp_path):
    """Item 8: --out foo.csv is an error, not a folder named foo.csv."""
    (tmp_path / "train.py").write_text(textwrap.dedent(SCRIPT))
    proc = record(["train.py", "--out", "foo.csv"], tmp_path)
    assert proc.returncode == 2 and "FILE.h5 or an existing folder" in proc.stderr
    assert not (tmp_path / "foo.csv").exists()
    (tmp_path / "runs").mkdir()
    proc = record(["train.py", "--out", "runs", "-q"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "runs" / "train.h5").is_file()
    assert proc.stdout.strip() == "done"  # -q: the script's own output, no list of files
    proc = record(["train.py", "--out", "runs"], tmp_path)
    assert proc.returncode == 2 and "use --overwrite" in proc.stderr and "overwrite=True" not in proc.stderr


def test_record_help_explains_script_arguments_and_steps():
    """Item 8: `--` and what --steps does to a script."""
    proc = subprocess.run([sys.executable, "-m", "normviz", "record", "--help"], capture_output=True, text=True,
                          timeout=60)
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0
    assert "train.py -- --epochs 3" in text and "its own arguments after --" in text
    assert "stop the script after N optimizer steps" in text
    assert "Print only warnings and errors" in text


def test_recorder_creates_the_folder_of_its_file(tmp_path):
    """Item 8: Recorder("runs/x/run.h5") works without a mkdir first, as SummaryWriter does."""
    import torch
    from torch import nn

    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with normviz.Recorder(model, tmp_path / "runs" / "x" / "run.h5") as rec:
        opt.zero_grad()
        model(torch.ones(2, 2)).sum().backward()
        opt.step()
        rec.step()
    assert (tmp_path / "runs" / "x" / "run.h5").is_file()


def _every_statistic(run):
    out = {}
    for group, names in run.statistics.items():
        for name in names:
            if group == "grad":
                out[(group, name)] = run.grad(name)[1]
            elif group == "module":
                for layer in run.layers:
                    try:
                        out[(group, name, layer.name)] = run.module_stat(name, layer.name)
                    except normviz.errors.MissingDataError:
                        continue
            else:
                for site in run.sites:
                    try:
                        out[(group, name, site.layer, site.role)] = run.stat(name, site.layer, site.role)
                    except normviz.errors.MissingDataError:
                        continue
    for name in run.scalar_names:
        if name != "wall_time":
            out[("scalar", name)] = run.scalar(name)
    return out


# The training loops of tests/scripts/train_*.py with the defaults the fixture uses, written
# against the Python API as a user would (same seeds, same batches, so the same training).
API_LOOPS = {
    "resnet18": """
import sys, torch
import torch.nn.functional as F
sys.path.insert(0, {folder!r})
from resnet18 import resnet18
import normviz
torch.manual_seed(0)
model = resnet18(num_classes=10, width=64)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
gen = torch.Generator().manual_seed(0)
model.train()
with normviz.Recorder(model, {out!r}) as rec:
    for step in range(3):
        x = torch.randn(8, 3, 16, 16, generator=gen)
        y = torch.randint(0, 10, (8,), generator=gen)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        rec.step(loss=loss)
""",
    "gpt2": """
import torch
from transformers import GPT2Config, GPT2LMHeadModel
import normviz
torch.manual_seed(0)
config = GPT2Config(vocab_size=128, n_positions=16, n_embd=64, n_layer=4, n_head=4)
model = GPT2LMHeadModel(config)
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
gen = torch.Generator().manual_seed(0)
model.train()
with normviz.Recorder(model, {out!r}) as rec:
    for step in range(3):
        ids = torch.randint(0, 128, (4, 16), generator=gen)
        optimizer.zero_grad()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        rec.step(loss=loss)
""",
}


@pytest.mark.parametrize("which", ["resnet18", "gpt2"])
def test_script_mode_records_what_the_api_records(real_runs, tmp_path, which):
    """Done-when: every statistic the Python API records as finite on the same script is finite
    (and equal: training is bit-for-bit the same) in script mode, update_ratio included."""
    assert real_runs.RESNET18_ARGS == ("--steps", "3", "--size", "16") and real_runs.GPT2_ARGS == ("--steps", "3")
    out = tmp_path / "api.h5"
    code = API_LOOPS[which].format(folder=str(SCRIPTS), out=str(out))
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    with normviz.open(out) as api, normviz.open(getattr(real_runs, which)) as script_run:
        assert [l.name for l in api.layers] == [l.name for l in script_run.layers]
        want, got = _every_statistic(api), _every_statistic(script_run)
        assert want.keys() == got.keys()
        assert ("grad", "update_ratio") in want and np.isfinite(want[("grad", "update_ratio")]).all()
        for key, value in want.items():
            finite = np.isfinite(value)
            assert np.isfinite(got[key])[finite].all(), key
            np.testing.assert_allclose(got[key][finite], value[finite], rtol=1e-5, atol=1e-7, err_msg=str(key))
    # the script's own output is the same as under plain Python
    assert "step 2: loss" in getattr(real_runs, f"{which}_stdout")


INTERRUPTED = """
import time, torch
from torch import nn
model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(1000):
    opt.zero_grad(); model(torch.randn(8, 4)).square().mean().backward(); opt.step()
    if step == 2:
        print("ready", flush=True)
    if step >= 2:
        time.sleep(0.05)
"""


def test_ctrl_c_exits_130_with_the_file_closed_cleanly(tmp_path):
    """Item 8: the documented exit code 130, and nothing recorded is lost."""
    import signal

    (tmp_path / "long.py").write_text(INTERRUPTED)
    proc = subprocess.Popen([sys.executable, "-m", "normviz", "record", "long.py", "--out", "long.h5"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "long.h5" in err
    with normviz.open(tmp_path / "long.h5") as run:
        assert run.status["clean"] == 1 and len(run.steps) >= 3
