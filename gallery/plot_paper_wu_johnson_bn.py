"""Wu & Johnson 2021: BatchNorm trains with each batch's statistics and evaluates with running
averages; the gap between them shrinks as 1/√B, and at a large batch and a constant learning
rate the running averages lag the weights, which population statistics (PreciseBN) fix.

The ``wu-johnson-bn`` experiment: a small CNN with three BatchNorms classifies shifted, noisy
12×12 prototypes for 3 epochs at batch B = 2 and B = 128 (lr 0.05·B/32), with the learning
rate constant or cosine-decayed. Twelve times during training the test set is evaluated with
the running averages (EMA), with population statistics of 40 training batches (PreciseBN) and
with each test batch's own statistics, each recorded as an eval series of the run.

The ``bn-gap`` renderer draws (top) per BatchNorm the gap |Δμ|/σ between a batch's statistics
and those it is compared with — training batches against the EMA (solid), eval batches
against the EMA (dashed) and against the population (dotted): at ``norm1`` B = 2 sits about 6x
above B = 128 (1/√B predicts 8); at ``norm3`` the EMA of B = 128 at a constant learning rate is
20x further from the eval batches than the population statistics are. Below, over training:
that gap of ``norm3``, and how far its eval-mode output moves from its training-mode output.
The EMA's test accuracy at B = 128, constant learning rate, is 0.54 against 0.91 with
PreciseBN; after a cosine decay 0.88 against 0.89.

    python gallery/plot_paper_wu_johnson_bn.py   # writes gallery/images/plot_paper_wu_johnson_bn.png
"""

from __future__ import annotations

from pathlib import Path

from _gallery import draw_variants, quick

STYLE, DPI = "paper-wide", 150


def main() -> Path:
    variants = [("batch", {"batch": b, "schedule": s}, f"B={b} {s}")
                for s in ("constant", "cosine") for b in (2, 128)]
    every = [1 if b == 128 else 30 for s in ("constant", "cosine") for b in (2, 128)]
    return draw_variants(__file__, "wu-johnson-bn", variants, "bn-gap", style=STYLE, dpi=DPI,
                         steps=40 if quick() else None, every=1 if quick() else every)


if __name__ == "__main__":
    main()
