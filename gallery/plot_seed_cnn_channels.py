"""What each norm holds at mean 0 / scale 1 on the seed CNN.

The seed notebook's CNN, ``Conv(3, 16) - norm - ReLU - Conv(16, 32)`` and a
linear head, trained for 100 SGD steps on 4-class synthetic 8x8 images with
each of the four norms the notebook treats: BatchNorm, LayerNorm (over the
channels, ConvNeXt-style), InstanceNorm and GroupNorm (G=4).

The ``channels`` renderer shows, for the norm layer ``1``:

- per channel, mean ± std of the values entering (left) and leaving (right)
  the norm at the first, middle and last step; behind the output, each
  channel's β ± |γ|. BatchNorm (each channel over the batch) and InstanceNorm
  (each sample's channel) put every channel at β with spread |γ|; LayerNorm
  and GroupNorm, whose groups cut across channels, do not;
- the normalization groups at the last step, the sets one mean and variance
  are computed over: group means and scales of the input (hollow boxes) and
  the output (filled), which each kind holds at mean 0 / scale 1 before γ and β;
- BatchNorm's batch statistics (dots) against its running statistics (lines),
  which eval mode uses.

    python gallery/plot_seed_cnn_channels.py   # writes gallery/images/plot_seed_cnn_channels.png
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
KINDS = ("batch", "layer", "instance", "group")  # the seed's four norms


def main() -> Path:
    # Tiny models train fastest on one thread, and the numbers do not depend on the core count.
    torch.set_num_threads(1)
    experiment = EXPERIMENTS["seed-cnn"]
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for kind in KINDS:
            path = Path(tmp) / f"seed-cnn-{kind}.h5"
            run_experiment(experiment, kind, path, steps=6 if QUICK else None, seed=0, device="cpu")
            runs.append(normviz.open(path))
        fig = normviz.plot(runs, "channels", style=STYLE)
        with style_context(STYLE):
            out = save_figure(fig, OUT / f"{Path(__file__).stem}.png", "png", dpi=DPI)
        for run in runs:
            run.close()
    print(out)
    return out


if __name__ == "__main__":
    main()
