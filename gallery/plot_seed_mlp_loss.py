"""The seed MLP with and without each norm.

The seed notebook's first simulation: the regression MLP
``Linear(10, 64) - norm - ReLU - Linear(64, 1)`` on ``y = x0 + 0.1 noise``,
trained full-batch with SGD at lr 1e-3 for 100 steps, once for every norm kind
that applies to vectors (BatchNorm, LayerNorm, GroupNorm with G=4, RMSNorm) and
once with no norm (``nn.Identity`` in its place), all from the same seed. The
``loss`` renderer overlays the training losses, one colour per norm kind.

    python gallery/plot_seed_mlp_loss.py   # writes gallery/images/plot_seed_mlp_loss.png
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

import normviz
from normviz.experiments.registry import EXPERIMENTS, run_experiment
from normviz.plot.save import save_figure
from normviz.plot.style import style_context

QUICK = os.environ.get("NORMVIZ_GALLERY_QUICK") == "1"  # a few steps only, for CI
OUT = Path(os.environ.get("NORMVIZ_GALLERY_OUT") or Path(__file__).resolve().parent / "images")
STYLE, DPI = "paper", 250


def main() -> Path:
    # Tiny models train fastest on one thread, and the numbers do not depend on the core count.
    torch.set_num_threads(1)
    experiment = EXPERIMENTS["seed-mlp"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for kind in experiment.kinds:  # batch, layer, group, rms, none
            path = Path(tmp) / f"seed-mlp-{kind}.h5"
            run_experiment(experiment, kind, path, steps=10 if QUICK else None, seed=0, device="cpu")
            runs.append(normviz.open(path))
        fig = normviz.plot(runs, "loss", style=STYLE)
        with style_context(STYLE):
            out = save_figure(fig, OUT / f"{Path(__file__).stem}.png", "png", dpi=DPI)
        for run in runs:
            run.close()
    print(out)
    return out


if __name__ == "__main__":
    main()
