"""Internal covariate shift in a pre-LN transformer with LayerNorm, RMSNorm and no norm.

A 4-block pre-LN GPT-style transformer (d_model 64, 4 heads) trained with
AdamW for 100 steps on a repeated-motif token task, with LayerNorm, RMSNorm
and no norm (``nn.Identity`` in each norm's place), every second step
recorded.

The ``covariate-shift`` renderer draws, on top, how far the distribution
entering each block's first norm (``blocks.*.norm1``) moves between recorded
steps (mean over channels of the symmetric KL divergence between per-channel
Gaussians), runs overlaid; below, Ioffe & Szegedy (2015, Fig. 1)-style
15/50/85th percentile bands of what enters and leaves the deepest of those
norms. In a pre-LN transformer the residual stream entering a norm drifts
about as much with the norm as without it; what the norm changes is its
output, held near unit scale.

    python gallery/plot_transformer_covariate_shift.py   # writes gallery/images/plot_transformer_covariate_shift.png
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


def main() -> Path:
    # Small models train fastest on one thread, and the numbers do not depend on the core count.
    torch.set_num_threads(1)
    experiment = EXPERIMENTS["transformer"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for kind in experiment.kinds:  # layer, rms, none
            path = Path(tmp) / f"transformer-{kind}.h5"
            run_experiment(experiment, kind, path, steps=6 if QUICK else None, every=1 if QUICK else 2,
                           seed=0, device="cpu")
            runs.append(normviz.open(path))
        fig = normviz.plot(runs, "covariate-shift", style=STYLE, layers="blocks.*.norm1")
        with style_context(STYLE):
            out = save_figure(fig, OUT / f"{Path(__file__).stem}.png", "png", dpi=DPI)
        for run in runs:
            run.close()
    print(out)
    return out


if __name__ == "__main__":
    main()
