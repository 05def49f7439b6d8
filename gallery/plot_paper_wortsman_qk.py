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

import tempfile
from pathlib import Path

import torch
from _gallery import out_dir, quick

import normviz
from normviz.experiments import run_experiment
from normviz.experiments.papers import paper_experiment
from normviz.plot.save import save_figure
from normviz.plot.style import style_context

STYLE, DPI = "paper-wide", 150


def main() -> Path:
    torch.set_num_threads(1)  # a small model runs fastest on one thread
    steps = 10 if quick() else 300
    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for label, qk in (("no QK-norm", False), ("QK-norm", True)):
            path = Path(tmp) / f"wortsman-{qk}.h5"
            run_experiment(paper_experiment("wortsman-qk", steps=steps, qk_norm=qk), "layer", path,
                           every=1 if quick() else 5, seed=0, device="cpu", recorder_options={"label": label})
            runs.append(normviz.open(path))
        fig = normviz.plot(runs, "attention", style=STYLE)
        with style_context(STYLE):
            out = save_figure(fig, out_dir() / f"{Path(__file__).stem}.png", "png", dpi=DPI)
        for run in runs:
            run.close()
    print(out)
    return out


if __name__ == "__main__":
    main()
