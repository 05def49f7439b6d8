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

from pathlib import Path

from _gallery import draw_experiment, quick

STYLE, DPI = "paper-wide", 150
KINDS = ("batch", "layer", "none")


def main() -> Path:
    # the deepest norm slot, the same in every run (kind "none": nn.Identity)
    return draw_experiment(__file__, "deep-mlp", KINDS, "histograms", style=STYLE, dpi=DPI,
                           steps=6 if quick() else None, options=lambda runs: {"layers": runs[0].norm_layers[-1].name})


if __name__ == "__main__":
    main()
