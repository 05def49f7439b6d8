"""The command line: record, info, plugins; exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

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
