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

from pathlib import Path

from _gallery import draw_experiment, quick

STYLE, DPI = "paper-wide", 150
KINDS = ("batch", "group", "none")


def main() -> Path:
    return draw_experiment(__file__, "resnet8", KINDS, "gradient-flow", style=STYLE, dpi=DPI,
                           steps=4 if quick() else 60, every=1 if quick() else 2)


if __name__ == "__main__":
    main()
