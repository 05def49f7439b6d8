"""Kosson et al. 2024: weights that feed a norm layer settle at the angle per step their optimizer predicts.

The ``kosson-rotation`` experiment: an MLP 64 → 256 → 256 → 10 whose hidden Linears (no
bias) feed a BatchNorm1d or a LayerNorm, trained 3000 steps on noisy Gaussian prototypes
with weight decay on those two matrices only — BatchNorm with SGD (lr 0.1, momentum 0.9,
weight decay 5e-4; predicted 7.3e-3 rad per step) and LayerNorm with AdamW (lr 1e-2,
weight decay 0.1; predicted 1.03e-2 rad) — recorded every fifth step.

The ``rotation`` renderer draws, for the two matrices the recorder saw feeding a norm,
the angle each step turns them (block means) against the predicted equilibrium (dashed),
their ratio and the weight norms. Both start 3-5x above the prediction, because the
initial weights are shorter than the equilibrium's, and within a few hundred steps settle
near it (LayerNorm with AdamW within 10%; BatchNorm with SGD 10-20% below, closing in
slowly) as their norms move to the equilibrium's.

    python gallery/plot_paper_kosson_rotation.py   # writes gallery/images/plot_paper_kosson_rotation.png
"""

from __future__ import annotations

from pathlib import Path

from _gallery import draw_variants, quick

STYLE, DPI = "paper-wide", 150


def main() -> Path:
    variants = [("batch", {"optimizer": "sgd"}, None), ("layer", {"optimizer": "adamw"}, None)]
    return draw_variants(__file__, "kosson-rotation", variants, "rotation", style=STYLE, dpi=DPI,
                         steps=40 if quick() else 3000, every=1 if quick() else 5)


if __name__ == "__main__":
    main()
