"""Sun et al. 2024: massive activations do not emerge in a tiny transformer; a fixed outlier channel does.

The ``he-outliers`` experiment again (a 4-block pre-LN GPT, d 64, AdamW at lr 3e-3 for 1000
steps on a synthetic language, against the outlier-protected block without norms), with
its opt-in ``massive_activations`` on the residual stream: the three largest |x| of the
batch with their channels and positions, and the median |x|.

The ``massive`` renderer draws the largest |x| over the median per layer (Sun et al. call
~1000× with |x| > 100 massive: dotted), the channel that holds it at each recorded step,
and the top three by depth at the last step. In the pre-LN model the ratio grows several
fold during training but stays one to two orders of magnitude short of 1000×, and the
largest value sits in one fixed channel at ordinary tokens: an outlier feature, not a
massive activation (papers2.md §2.4; the paper's models have 100M+ parameters).

    python gallery/plot_paper_sun_massive.py   # writes gallery/images/plot_paper_sun_massive.png
"""

from __future__ import annotations

from pathlib import Path

from _gallery import draw_experiment, quick

STYLE, DPI = "paper-wide", 150


def main() -> Path:
    return draw_experiment(__file__, "he-outliers", ("layer", "none"), "massive", style=STYLE, dpi=DPI,
                           steps=20 if quick() else 1001, every=2 if quick() else 20)


if __name__ == "__main__":
    main()
