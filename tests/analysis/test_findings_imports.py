"""normviz.analysis.findings: the paper findings are checked from a run file without torch."""

from __future__ import annotations

import subprocess
import sys


def test_findings_import_no_torch_plotting_or_h5py():
    code = (
        "import sys, normviz.analysis, normviz.analysis.findings; "
        "print([m for m in ('torch', 'matplotlib', 'h5py') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
