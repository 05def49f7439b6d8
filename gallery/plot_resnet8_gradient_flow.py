"""Gradient flow through a ResNet-8 with BatchNorm, GroupNorm and no norm.

A CIFAR-style ResNet-8 (16/32/64 channels) trained for 60 SGD steps (momentum
0.9, lr 0.05, batch 64) on 10-class synthetic 32x32 images, with BatchNorm,
GroupNorm (G=4) and without normalization, every second step recorded.

The ``gradient-flow`` renderer draws, per run, a layers x steps heatmap of the
gradient L2 norm of each layer's parameters (one log colour scale for all
runs), then the median mean |grad| (solid) and max |grad| (dotted) across
depth, and the median update-to-weight ratio ‖Δw‖/‖w‖ over training with the
usual 1e-3 rule of thumb dashed.

    python gallery/plot_resnet8_gradient_flow.py   # writes gallery/images/plot_resnet8_gradient_flow.png
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
STYLE, DPI = "paper-wide", 150
KINDS = ("batch", "group", "none")


def main() -> Path:
    # Small models train fastest on one thread, and the numbers do not depend on the core count.
    torch.set_num_threads(1)
    experiment = EXPERIMENTS["resnet8"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for kind in KINDS:
            path = Path(tmp) / f"resnet8-{kind}.h5"
            run_experiment(experiment, kind, path, steps=4 if QUICK else 60, every=1 if QUICK else 2,
                           seed=0, device="cpu")
            runs.append(normviz.open(path))
        fig = normviz.plot(runs, "gradient-flow", style=STYLE)
        with style_context(STYLE):
            out = save_figure(fig, OUT / f"{Path(__file__).stem}.png", "png", dpi=DPI)
        for run in runs:
            run.close()
    print(out)
    return out


if __name__ == "__main__":
    main()
