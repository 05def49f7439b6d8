"""Wortsman et al. 2023: without QK-norm, attention logits explode and attention entropy collapses.

The ``wortsman-qk`` experiment: a 4-block pre-LN GPT (d 64, 4 heads) on a synthetic language,
AdamW at lr 0.1 with 20 warm-up steps and a cosine decay over 300 steps, without and with
QK-norm (a LayerNorm over each head's queries and keys; Dehghani et al. 2023), recorded every
fifth step with the opt-in attention statistics: per head, the largest logit q·k/√d and the
entropy of the attention rows, recomputed from the queries and keys.

The ``attention`` renderer draws per attention layer the largest logit over its heads and
its lowest head entropy. Without QK-norm the logits grow by three orders of magnitude within
tens of steps and the entropy of every head falls to near 0 — one-hot attention, the
collapse Zhai et al. 2023 tie to unstable training; with QK-norm the logits stay in the tens
and the heads keep attending broadly.

    python gallery/plot_paper_wortsman_qk.py   # writes gallery/images/plot_paper_wortsman_qk.png
"""

from __future__ import annotations

from pathlib import Path

from _gallery import draw_variants, quick

STYLE, DPI = "paper-wide", 150


def main() -> Path:
    variants = [("layer", {"qk_norm": False}, "no QK-norm"), ("layer", {"qk_norm": True}, "QK-norm")]
    return draw_variants(__file__, "wortsman-qk", variants, "attention", style=STYLE, dpi=DPI,
                         steps=10 if quick() else 300, every=1 if quick() else 5)


if __name__ == "__main__":
    main()
