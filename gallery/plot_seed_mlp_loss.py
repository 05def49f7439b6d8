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

from pathlib import Path

from _gallery import draw_experiment, quick

from normviz.experiments import EXPERIMENTS

STYLE, DPI = "paper", 250


def main() -> Path:
    kinds = EXPERIMENTS["seed-mlp"].kinds  # batch, layer, group, rms, none
    return draw_experiment(__file__, "seed-mlp", kinds, "loss", style=STYLE, dpi=DPI, steps=10 if quick() else None)


if __name__ == "__main__":
    main()
