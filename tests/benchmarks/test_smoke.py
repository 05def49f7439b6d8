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
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_overhead.py"), "--device", "cpu", "--quick", "--models",
         "gpt2", "--rounds", "1", "--steps", "1"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "every=1" in proc.stdout and "KiB per recorded step" in proc.stdout
