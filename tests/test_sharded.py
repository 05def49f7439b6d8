"""Sharded and checkpointed training (FSDP2, HSDP, tensor parallel, activation checkpointing):
real torchrun launches (gloo, CPU) of ``tests/scripts/train_sharded.py``, merged rank files against
the single-process run of the same model on the same global batch.

One module fixture runs every launch at once: one process (the references), 2-rank FSDP2 (plain,
with non-reentrant and reentrant checkpointed blocks, with the recorder attached before
``fully_shard``), a 2×2 HSDP mesh, and 2-way tensor parallelism (column-/row-parallel MLP with a
sequence-parallel LayerNorm; attached before ``parallelize_module`` too; thinned channels).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import normviz
from normviz.merge import MergedRun, merge_ranks

ROOT = Path(__file__).resolve().parent
TRAIN = ROOT / "scripts" / "train_sharded.py"
GRAD_STATS = ("grad_norm", "grad_abs_mean", "grad_abs_max", "weight_norm", "update_ratio", "update_angle")
RTOL = 1e-5


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded")
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    launches = [
        [sys.executable, str(TRAIN), "--mode", "single"],
        [sys.executable, str(TRAIN), "--mode", "single-tp"],
        [*torchrun, "--nproc_per_node=2", str(TRAIN), "--mode", "fsdp"],
        [*torchrun, "--nproc_per_node=4", str(TRAIN), "--mode", "hsdp"],
        [*torchrun, "--nproc_per_node=2", str(TRAIN), "--mode", "tp"],
    ]
    jobs = [subprocess.Popen([*cmd, "--out", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            for cmd in launches]
    for job in jobs:
        text, _ = job.communicate(timeout=300)
        assert job.returncode == 0, text.decode(errors="replace")[-4000:]
    return out


def _open(folder: Path, name: str):
    files = sorted(folder.glob(f"{name}.rank*.h5")) or [folder / f"{name}.h5"]
    merged = merge_ranks([normviz.open(f) for f in files])
    assert len(merged) == 1
    return merged[0]


def _close(*runs):
    for run in runs:
        run.close()


def _check_equal(run, ref, what: str) -> None:
    """Per-layer gradient statistics and every site's per-channel moments within RTOL."""
    for stat in GRAD_STATS:
        names, got = run.grad(stat)
        ref_names, want = ref.grad(stat)
        assert names == ref_names
        assert np.isfinite(got).all() and np.isfinite(want).all(), f"{what}: {stat} has NaN"
        np.testing.assert_allclose(got, want, rtol=RTOL, err_msg=f"{what}: {stat}")
    assert [s.key for s in run.sites] == [s.key for s in ref.sites]
    for site in ref.sites:
        spread = float(np.nanmax(ref.stat("std", site.layer, site.role)))
        for stat in ("channel_mean", "channel_var", "mean", "std", "min", "max", "numel", "output_grad_norm"):
            if stat == "output_grad_norm" and site.role != "output":
                continue
            got = run.stat(stat, site.layer, site.role)
            want = ref.stat(stat, site.layer, site.role)
            # means that are 0 in one run (a LayerNorm's output at β = 0) are float noise in
            # the other: compared at the activations' scale
            scale = max(float(np.nanmax(np.abs(want))), spread if stat.endswith("mean") else 0.0, 1e-3)
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-6 * scale, err_msg=f"{what}: {stat} of {site.key}")
        assert list(run.channel_index(site.layer, site.role)) == list(ref.channel_index(site.layer, site.role))
    assert [(lay.name, lay.calls) for lay in run.layers] == [(lay.name, lay.calls) for lay in ref.layers]
    assert all(lay.calls == 1 for lay in run.layers)
    for lay in ref.norm_layers:
        for stat in ("weight", "bias"):  # float32 parameters trained by other reduction orders
            want = ref.module_stat(stat, lay.name)
            np.testing.assert_allclose(run.module_stat(stat, lay.name), want, rtol=RTOL,
                                       atol=1e-6 * float(np.abs(want).max()), err_msg=f"{what}: {stat} of {lay.name}")


@pytest.mark.parametrize("name,ref", [
    ("fsdp", "single"), ("fsdp-early", "single"), ("hsdp", "single"),
    ("tp", "single-tp"), ("tp-early", "single-tp"), ("tp-thin", "single-tp-thin"),
])
def test_merged_sharded_run_equals_the_single_process_run(folder, name, ref):
    run, reference = _open(folder, name), _open(folder, ref)
    try:
        assert isinstance(run, MergedRun) and run.sharded
        _check_equal(run, reference, name)
    finally:
        _close(run, reference)


@pytest.mark.parametrize("name,ref", [
    ("single-ckpt", "single"), ("single-ckpt-reentrant", "single"),
    ("fsdp-ckpt", "single"), ("fsdp-ckpt-reentrant", "single"),
])
def test_checkpointed_blocks_are_recorded_once_with_the_same_statistics(folder, name, ref):
    run, reference = _open(folder, name), _open(folder, ref)
    try:
        _check_equal(run, reference, name)
    finally:
        _close(run, reference)


@pytest.mark.parametrize("name", ["single", "single-ckpt", "single-ckpt-reentrant", "single-tp", "fsdp",
                                  "fsdp-ckpt", "fsdp-ckpt-reentrant", "fsdp-early", "hsdp", "tp", "tp-early"])
def test_training_is_bit_for_bit_the_same_without_the_recorder(folder, name):
    bare = name.split("-")[0] if not name.startswith("single-tp") else "single-tp"
    got = torch.load(folder / f"{name}.weights.pt")
    want = torch.load(folder / f"{bare}-bare.weights.pt")
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), f"{name}: {key}"


def test_rank_files_hold_the_mesh_and_each_parameters_placements(folder):
    with normviz.open(folder / "hsdp.rank3.h5") as run:
        sharding = run.meta["sharding"]
        assert sharding["mesh"]["shape"] == [2, 2]
        assert sharding["mesh"]["dim_names"] == ["replicate", "shard"]
        assert sharding["mesh"]["coordinate"] == [1, 1]
        assert sharding["placements"]["blocks.0.fc1.weight"] == ["R", "S(0)"]
        assert "grad_sumsq" in run.statistics["grad"]
    with normviz.open(folder / "tp.rank1.h5") as run:
        placements = run.meta["sharding"]["placements"]
        assert placements["fc1.weight"] == ["S(0)"] and placements["fc2.weight"] == ["S(1)"]
        assert placements["norm.weight"] == ["R"]
        assert run.meta["sharding"]["mesh"]["model_parallel_dims"] == [0]
        fc1 = next(s for s in run.sites if s.layer == "fc1")
        assert (fc1.channel_offset, fc1.channels, fc1.global_channels) == (16, 16, 32)
        # the sequence-parallel norm's weight gradient is a partial sum on each rank: its values are kept
        assert "grad_partial_values" in run.statistics["grad"]


def test_normviz_record_runs_an_fsdp2_script_under_torchrun(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--no-python",
           sys.executable, "-m", "normviz", "record", str(ROOT / "scripts" / "train_fsdp.py"), "--out", str(tmp_path),
           "--", "--steps", "3"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.glob("*.h5")) == ["train_fsdp.rank0.h5", "train_fsdp.rank1.h5"]
    (run,) = merge_ranks([normviz.open(p) for p in sorted(tmp_path.glob("*.h5"))])
    try:
        assert isinstance(run, MergedRun) and run.sharded and list(run.steps) == [0, 1, 2]
        names, norms = run.grad("grad_norm")
        assert names == ["0", "1", "3"] and np.isfinite(norms).all()
        # fully_shard renames a module's class FSDPLinear: the file keeps the user's class name
        assert [lay.module_type for lay in run.layers] == ["Linear", "LayerNorm", "Linear"]
        assert np.isfinite(run.grad("update_ratio")[1]).all()
    finally:
        run.close()
