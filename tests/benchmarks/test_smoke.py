"""The benchmark scripts run (smoke tests: no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_overhead_quick_mode_runs(tmp_path):
    out = tmp_path / "o.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--quick", "--models", "seed-mlp-bn", "resnet8-bn",
         "--variants", "bare", "normviz-every1", "normviz-every10", "item-hooks", "--rounds", "1", "--steps", "2",
         "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "normviz every=1" in proc.stdout
    data = json.loads(out.read_text())
    assert data


def test_gpu_overhead_script_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_overhead.py"), "--device", "cpu", "--quick", "--models",
         "gpt2", "--rounds", "1", "--steps", "1", "--compile", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "every=1" in proc.stdout and "KiB per recorded step" in proc.stdout
    eager, compiled = json.loads(out.read_text())["results"]
    assert not eager["compiled"] and compiled["compiled"]
    assert eager["kernels"]["recorded"] > eager["kernels"]["bare"] > 0
    assert compiled["sites_recorded"] == eager["sites_recorded"]  # the compiled graph calls the hooks
    assert compiled["sites_recorded"]["every1"] == eager["kernels"]["sites"] > 0


def test_op_counts_a_step_that_is_not_recorded_dispatches_no_extra_op():
    """benchmarks/op_counts.py runs; and a step the recorder does not record (every=10) costs no
    tensor operation at all — its hooks are off — while a recorded one costs some."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "op_counts.py"), "--models", "seed-mlp-bn", "resnet8-bn"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| seed") or
            line.startswith("| resnet")]
    assert len(rows) == 2
    for cells in rows:
        bare, recorded, unrecorded_extra = int(cells[1]), int(cells[2]), int(cells[6])
        assert recorded > bare > 0
        assert unrecorded_extra == 0
