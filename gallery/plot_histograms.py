"""Activation histograms deep in an 8-layer MLP, with BatchNorm, LayerNorm and no norm.

An MLP of 8 blocks ``Linear(128) - norm - ReLU`` trained for 100 SGD steps
(momentum 0.9, lr 0.05) on a 10-class linear task, with BatchNorm, LayerNorm
and no norm, every step recorded.

The ``histograms`` renderer draws, for the deepest norm slot (the 8th), the
histogram of the values entering (left) and leaving (right) it at every
recorded step, counts on a log colour scale ("colorful dimension" view). Bins
are fixed per layer at the first recorded step; the thin rows beyond the white
lines at the top and bottom are the under- and overflow bins, so values
outside the first step's range still show. With a norm, the output stays at unit scale; without
one, the activations that deep have shrunk to a narrow band, each unit nearly
constant across samples (the horizontal streaks).

    python gallery/plot_histograms.py   # writes gallery/images/plot_histograms.png
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
KINDS = ("batch", "layer", "none")


def main() -> Path:
    # Small models train fastest on one thread, and the numbers do not depend on the core count.
    torch.set_num_threads(1)
    experiment = EXPERIMENTS["deep-mlp"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for kind in KINDS:
            path = Path(tmp) / f"deep-mlp-{kind}.h5"
            run_experiment(experiment, kind, path, steps=6 if QUICK else None, seed=0, device="cpu")
            runs.append(normviz.open(path))
        deepest = runs[0].norm_layers[-1].name  # the same slot in every run (kind "none": nn.Identity)
        fig = normviz.plot(runs, "histograms", style=STYLE, layers=deepest)
        with style_context(STYLE):
            out = save_figure(fig, OUT / f"{Path(__file__).stem}.png", "png", dpi=DPI)
        for run in runs:
            run.close()
    print(out)
    return out


if __name__ == "__main__":
    main()
