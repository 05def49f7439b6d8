"""He et al. 2024: outlier features grow in a pre-LN transformer, not in a block without norms.

The ``he-outliers`` experiment: a 4-block pre-LN GPT (d 64, 4 heads, no biases) trained
with AdamW at lr 3e-3 for 1000 steps on a synthetic language (Markov "dialects" with
sentences and copied spans), against He et al.'s "outlier protected" block — no pre-norms,
QK-norm, residual branches scaled by 0.2, no final norm — recorded every 20 steps.

The ``outliers`` renderer draws the kurtosis over the 64 channels of each channel's RMS
(mean s⁴ / (mean s²)²; 1 when every channel carries the same share) at the inputs of the
blocks' norm slots and the final one, i.e. the residual stream (the QK-norms left out): per layer over training for each run, the largest
over layers for both, and by depth at the last step. The pre-LN stream's kurtosis climbs
from about 1.7 at initialization to about 9, more the deeper the layer (a few channels
carry ever more of the signal); the protected block's stays near 1 throughout.

    python gallery/plot_paper_he_outliers.py   # writes gallery/images/plot_paper_he_outliers.png
"""

from __future__ import annotations

from pathlib import Path

from _gallery import draw_experiment, quick

STYLE, DPI = "paper-wide", 150


def main() -> Path:
    return draw_experiment(__file__, "he-outliers", ("layer", "none"), "outliers", style=STYLE, dpi=DPI,
                           steps=20 if quick() else 1001, every=2 if quick() else 20,
                           options={"layers": ["blocks.*.norm1", "blocks.*.norm2", "norm_f"]})


if __name__ == "__main__":
    main()
