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

from pathlib import Path

from _gallery import draw_experiment, quick

from normviz.experiments import EXPERIMENTS

STYLE, DPI = "paper-wide", 150


def main() -> Path:
    kinds = EXPERIMENTS["transformer"].kinds  # layer, rms, none
    return draw_experiment(__file__, "transformer", kinds, "covariate-shift", style=STYLE, dpi=DPI,
                           steps=6 if quick() else None, every=1 if quick() else 2,
                           options={"layers": "blocks.*.norm1"})


if __name__ == "__main__":
    main()
