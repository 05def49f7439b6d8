"""The command line: record, info, plugins; exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from normviz.cli import main


def run_cli(args, monkeypatch, tmp_path, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """`normviz record` on the seed MLP, few steps, in a fresh folder."""
    folder = tmp_path_factory.mktemp("cli")
    proc = subprocess.run(
        [sys.executable, "-m", "normviz", "record", "--experiment", "seed-mlp", "--steps", "6", "--every", "2", "-q"],
        cwd=folder, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    runs = sorted((folder / "normviz-runs").iterdir())
    assert len(runs) == 1
    return runs[0]


def test_record_writes_one_file_per_kind(recorded):
    names = sorted(p.name for p in recorded.glob("*.h5"))
    assert names == sorted(f"seed-mlp-{k}.h5" for k in ("batch", "layer", "group", "rms", "none"))


def test_info_json_has_the_stable_keys(recorded, monkeypatch, tmp_path, capsys):
    code, out, err = run_cli(["info", str(recorded / "seed-mlp-batch.h5"), "--json"], monkeypatch, tmp_path, capsys)
    assert code == 0, err
    data = json.loads(out)
    for key in ("schema", "schema_version", "label", "experiment", "norm_kind", "steps", "rank", "world_size", "scalars", "layers"):
        assert key in data
    assert data["schema"] == "normviz.run" and data["experiment"] == "seed-mlp" and data["norm_kind"] == "batch"
    assert data["steps"] == 3 and data["rank"] == 0 and data["world_size"] == 1
    assert "loss" in data["scalars"]
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert layers["1"] == {"name": "1", "kind": "batch", "module_type": "BatchNorm1d", "channels": 64, "calls": 1}
    assert layers["0"]["kind"] is None and layers["0"]["module_type"] == "Linear"


def test_none_run_records_the_identity_slot(recorded, monkeypatch, tmp_path, capsys):
    code, out, _ = run_cli(["info", str(recorded / "seed-mlp-none.h5"), "--json"], monkeypatch, tmp_path, capsys)
    data = json.loads(out)
    assert data["norm_kind"] == "none"
    assert {"name": "1", "kind": "none", "module_type": "Identity", "channels": 64, "calls": 1} in data["layers"]


def test_info_text_shows_batchnorm_running_stats(recorded, monkeypatch, tmp_path, capsys):
    code, out, _ = run_cli(["info", str(recorded / "seed-mlp-batch.h5")], monkeypatch, tmp_path, capsys)
    assert code == 0
    assert "running_mean" in out and "running_var" in out and "BatchNorm1d" in out


def test_record_list(monkeypatch, tmp_path, capsys):
    code, out, _ = run_cli(["record", "--list"], monkeypatch, tmp_path, capsys)
    assert code == 0 and "seed-mlp" in out and "seed-cnn" in out and "(default)" in out


@pytest.mark.parametrize(
    "args,needle",
    [
        (["info", "missing.h5"], "no such file"),
        (["info", "."], "directory"),
        (["record", "--experiment", "nope"], "unknown experiment"),
        (["record", "--experiment", "seed-mlp", "--norm", "instance"], "unknown norm kind"),
        (["record", "--every", "0"], "--every"),
        (["record", "--steps", "-3"], "--steps"),
        (["record", "--device", "tpu"], "--device"),
        (["record", "--stat", "nope"], "unknown statistic 'nope' (--stat)"),
    ],
)
def test_bad_usage_exits_2_with_one_line(args, needle, monkeypatch, tmp_path, capsys):
    code, out, err = run_cli(args, monkeypatch, tmp_path, capsys)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err


@pytest.mark.parametrize("content", [b"", b"not an hdf5 file at all" * 10])
def test_bad_files_exit_2(content, monkeypatch, tmp_path, capsys):
    (tmp_path / "bad.h5").write_bytes(content)
    code, _, err = run_cli(["info", "bad.h5"], monkeypatch, tmp_path, capsys)
    assert code == 2 and "bad.h5" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_foreign_hdf5_and_newer_schema(monkeypatch, tmp_path, capsys, recorded):
    import shutil

    import h5py

    with h5py.File(tmp_path / "foreign.h5", "w") as f:
        f["x"] = [1, 2, 3]
    code, _, err = run_cli(["info", "foreign.h5"], monkeypatch, tmp_path, capsys)
    assert code == 2 and "not a normviz run" in err
    newer = tmp_path / "newer.h5"
    shutil.copy(recorded / "seed-mlp-batch.h5", newer)
    with h5py.File(newer, "r+") as f:
        f.attrs["schema_version"] = "9.0"
    code, _, err = run_cli(["info", "newer.h5"], monkeypatch, tmp_path, capsys)
    assert code == 2 and "upgrade normviz" in err


def test_python_dash_m_and_version():
    proc = subprocess.run([sys.executable, "-m", "normviz", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "normviz" in proc.stdout


# --------------------------------------------------------------------------- plot: nothing claims success


@pytest.fixture(scope="module")
def one_run(tmp_path_factory):
    """A three-step run of a LayerNorm MLP, and an empty run (its model ran, no step was closed)."""
    import torch
    from conftest import train
    from torch import nn

    import normviz

    folder = tmp_path_factory.mktemp("one")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))
    train(model, folder / "run.h5", steps=3, lr=0.05, make_batch=lambda g: torch.randn(16, 4, generator=g))
    rec = normviz.Recorder(model, folder / "empty.h5")
    model(torch.randn(4, 4))
    rec.close()
    return folder


def _plot(args, cwd):
    return subprocess.run([sys.executable, "-m", "normviz", "plot", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**__import__("os").environ, "MPLBACKEND": "Agg"})


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--steps", "100:200"], "--steps 100:200 selects no step of the runs drawn; they hold training steps 0..2"),
        (["--layers", "nosuch*"], "--layers 'nosuch*' matches no layer"),
    ],
)
def test_plot_of_an_empty_selection_exits_2_with_the_reason(one_run, tmp_path, args, needle):
    """Item 3: an empty selection is bad input, said in one line; no folder of nothing is left."""
    proc = _plot([str(one_run / "run.h5"), "--out", "figs", *args], tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "figs").exists()


def test_plot_of_a_run_without_steps_says_why_each_renderer_drew_nothing(one_run, tmp_path):
    """Item 3: every renderer skipped → one line each, then exit 2; no empty figure is written."""
    proc = _plot([str(one_run / "empty.h5"), "--out", "figs"], tmp_path)
    assert proc.returncode == 2, proc.stderr
    skipped = [line for line in proc.stderr.splitlines() if line.startswith("normviz: skipped renderer")]
    for name in ("channels", "covariate-shift", "gradient-flow", "histograms", "loss", "ranks"):
        assert any(f"'{name}'" in line for line in skipped), proc.stderr
    assert "nothing drawn" in proc.stderr.splitlines()[-1]
    assert not (tmp_path / "figs").exists()


def test_plot_says_why_a_default_renderer_was_skipped_and_quiet_lists_no_files(one_run, tmp_path):
    proc = _plot([str(one_run / "run.h5"), "--out", "figs", "--format", "png", "-q"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""  # -q: warnings and errors only
    assert "skipped renderer 'ranks'" in proc.stderr and "single rank" in proc.stderr
    proc = _plot([str(one_run / "run.h5"), "--out", "figs2", "--format", "png", "--renderer", "loss",
                  "--steps", "1:3"], tmp_path)
    assert proc.returncode == 0 and proc.stdout.split() == [str(Path("figs2") / "run-loss.png")]


def test_loss_of_steps_that_hold_no_scalar_is_not_an_empty_figure(one_run, tmp_path):
    """Item 3: a step range with no point in it gives no empty axis from −0.045 to 0.045."""
    import normviz
    from normviz.errors import MissingDataError

    with normviz.open(one_run / "run.h5") as run, pytest.raises(MissingDataError, match="between steps 5:9"):
        normviz.plot(run, "loss", steps="5:9")


def test_info_of_a_thinned_layer_and_of_a_run_without_steps(one_run, recorded, monkeypatch, tmp_path, capsys):
    """Item 8: "32 of 64 channels kept", and no "training steps None..None"."""
    import shutil

    import torch
    from torch import nn

    import normviz

    model = nn.Sequential(nn.Linear(4, 64), nn.BatchNorm1d(64))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with normviz.Recorder(model, tmp_path / "wide.h5") as rec:
        opt.zero_grad()
        model(torch.randn(8, 4)).square().mean().backward()
        opt.step()
        rec.step()
    code, out, _ = run_cli(["info", "wide.h5"], monkeypatch, tmp_path, capsys)
    assert code == 0 and "(32 of 64 channels kept)" in out
    shutil.copy(one_run / "empty.h5", tmp_path / "empty.h5")
    code, out, _ = run_cli(["info", "empty.h5"], monkeypatch, tmp_path, capsys)
    assert code == 0 and "0 recorded steps," in out and "training steps None" not in out


def test_a_file_held_open_for_writing_is_not_called_damaged(one_run, tmp_path):
    """Item 8: another h5py handle open for writing is a lock-out, and the message says how to get in."""
    import shutil

    import h5py

    shutil.copy(one_run / "run.h5", tmp_path / "held.h5")
    with h5py.File(tmp_path / "held.h5", "a"):
        proc = subprocess.run([sys.executable, "-m", "normviz", "info", "held.h5"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "held open for writing" in proc.stderr and "damaged" not in proc.stderr
    assert "h5clear -s" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_record_stat_opts_in_on_every_layer(monkeypatch, tmp_path, capsys):
    code, _, err = run_cli(["record", "-e", "seed-mlp", "--norm", "batch", "--steps", "2", "--out", "runs", "-q",
                            "--stat", "massive_activations"], monkeypatch, tmp_path, capsys)
    assert code == 0, err
    import normviz

    with normviz.open(tmp_path / "runs" / "seed-mlp-batch.h5") as run:
        rows = run.layout.stat("act", "massive_activations").rows
        assert len(rows) == len(run.sites)
