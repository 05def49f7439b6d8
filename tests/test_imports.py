"""Each job imports only what it needs: plotting no torch, recording no matplotlib.

Every check runs in a fresh interpreter (this one has loaded everything already), with no
third-party plugin (``NORMVIZ_LOAD_PLUGINS=""``): a plugin may import what it likes.

- Building the plugin host imports neither torch, matplotlib nor h5py: the built-in
  renderers import their drawing code at the first draw, the built-in statistics and
  norm kinds import torch when they compute.
- Opening a run and drawing it (``normviz.plot``, ``render_to_files`` with every built-in
  renderer) imports no torch.
- Recording a few steps with ``normviz.Recorder`` imports no matplotlib.
- Each built-in renderer's drawing module imports neither torch nor h5py.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from normviz.plugins import DEFAULT_PLUGINS

HEAVY = ("torch", "matplotlib", "h5py")

# Printed last by every script: the heavy packages loaded, and normviz's own modules (to see who).
REPORT = textwrap.dedent(
    """
    def loaded():
        return {"heavy": [m for m in HEAVY if m in sys.modules],
                "normviz": sorted(m for m in sys.modules if m.startswith("normviz"))}
    """
)

RECORD = textwrap.dedent(
    """
    import json, sys
    import torch
    from torch import nn
    import normviz

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with normviz.Recorder(model, sys.argv[1]) as rec:
        for _ in range(3):
            loss = model(torch.randn(16, 4)).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(loss=loss.detach())
    print(json.dumps(loaded()))
    """
)

PLOT = textwrap.dedent(
    """
    import json, sys
    import normviz
    import normviz.plugins

    host = normviz.plugins.get_plugin_host()
    host.statistics()  # what `normviz plugins` lists: the statistics' descriptors, without torch
    registered = loaded()
    builtin = sorted(n for n in host.renderers() if host.owner("renderer", n) == "built-in")
    from normviz.plot.api import render_to_files

    with normviz.open(sys.argv[1]) as run:
        fig = normviz.plot(run, "loss")
        report = render_to_files([run], sys.argv[2], renderers=builtin, formats="png", host=host)
    print(json.dumps({"registered": registered, "plotted": loaded(), "renderers": builtin,
                      "written": [p.name for p in report.written], "failures": report.failures}))
    """
)

IMPORT = textwrap.dedent(
    """
    import importlib, json, sys
    importlib.import_module(sys.argv[1])
    print(json.dumps(loaded()))
    """
)


def _python(script: str, *args: str | Path) -> Any:
    """Run *script* in a fresh interpreter; its last line of output, parsed as JSON."""
    env = {**os.environ, "MPLBACKEND": "Agg", "NORMVIZ_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1"}
    code = f"import sys\nHEAVY = {HEAVY!r}\n{REPORT}\n{script}"
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A run of a tiny model, recorded in an interpreter of its own, and what that interpreter loaded."""
    path = tmp_path_factory.mktemp("imports") / "tiny.h5"
    return path, _python(RECORD, path)


def test_recording_imports_no_matplotlib(recorded: tuple[Path, Any]) -> None:
    _, loaded = recorded
    assert "matplotlib" not in loaded["heavy"], loaded["normviz"]


def test_registering_and_plotting_import_no_torch(recorded: tuple[Path, Any], tmp_path: Path) -> None:
    path, _ = recorded
    out = _python(PLOT, path, tmp_path / "figs")
    assert out["registered"]["heavy"] == [], out["registered"]["normviz"]
    assert "torch" not in out["plotted"]["heavy"], out["plotted"]["normviz"]
    assert set(out["renderers"]) >= {"channels", "covariate-shift", "gradient-flow", "histograms", "loss", "ranks"}
    assert out["failures"] == {}
    assert "tiny-loss.png" in out["written"]


def _drawing_modules() -> list[str]:
    """The drawing module of each built-in renderer: ``normviz.plot.renderers.<plugin module's name>``."""
    plugins = [name for name in DEFAULT_PLUGINS if hasattr(importlib.import_module(name), "RENDERER")]
    return [f"normviz.plot.renderers.{name.rsplit('.', 1)[1]}" for name in plugins]


@pytest.mark.parametrize("module", _drawing_modules())
def test_drawing_module_imports_no_torch_nor_h5py(module: str) -> None:
    loaded = _python(IMPORT, module)
    assert module in loaded["normviz"]
    assert "torch" not in loaded["heavy"] and "h5py" not in loaded["heavy"], loaded["normviz"]
