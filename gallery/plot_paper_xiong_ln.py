"""Xiong et al. 2020: FFN gradient norms across depth in Pre-LN and Post-LN transformers at initialization.

The ``xiong-ln`` experiment: a 12-block GPT-style transformer (d_model 64, Xavier-normal
weights, zero biases, N(0, 1) embeddings) built twice with the same weights, once with the
norms after each residual add (Post-LN) and once before each sub-layer plus a final norm
(Pre-LN). At lr 0, each recorded step accumulates 8 batches of random tokens with random
targets, so the recorded gradient norm is that of the batch-averaged gradient, as in the
paper's Figure 3. Left and middle: the gradient norm of each block's FFN weights W¹ and W²
against the block index, averaged over 3 seeds (thin lines: single seeds). Post-LN's
gradients grow towards the output; Pre-LN's do not (here they even shrink). Right: the last
block's W² gradient against depth (2 seeds): Post-LN's does not fall, Pre-LN's does, if
more slowly than Theorem 1's bound O(d√(ln d / L)) (dashed: 1/√L through the 6-block value).

    python gallery/plot_paper_xiong_ln.py   # writes gallery/images/plot_paper_xiong_ln.png
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

import normviz
from normviz.analysis.findings import xiong_findings
from normviz.experiments import run_experiment
from normviz.experiments.papers import paper_experiment
from normviz.plot.palette import label_colors
from normviz.plot.save import save_figure
from normviz.plot.style import new_figure, style_context

QUICK = os.environ.get("NORMVIZ_GALLERY_QUICK") == "1"  # tiny models, for CI
OUT = Path(os.environ.get("NORMVIZ_GALLERY_OUT") or Path(__file__).resolve().parent / "images")
STYLE, DPI = "paper-wide", 250
SMALL = {"d_model": 32, "micro": 1} if QUICK else {}
SEEDS = (0,) if QUICK else (0, 1, 2)
LAYERS = 4 if QUICK else 12
DEPTHS = (2, 3) if QUICK else (6, 10, 14)
NAMES = {"pre": "Pre-LN", "post": "Post-LN"}


def measure(tmp: Path, seed: int, layers: int, steps: int) -> dict:
    path = tmp / f"xiong-{layers}-{seed}-{steps}.h5"
    run_experiment(paper_experiment("xiong-ln", steps=steps, layers=layers, **SMALL), "layer", path, seed=seed, device="cpu")
    with normviz.open(path) as run:
        return xiong_findings(run)


def main() -> Path:
    torch.set_num_threads(1)  # small models run fastest on one thread
    with tempfile.TemporaryDirectory() as tmp:
        profiles = [measure(Path(tmp), seed, LAYERS, 1 if QUICK else 3) for seed in SEEDS]
        depth = {layers: [measure(Path(tmp), seed, layers, 1 if QUICK else 2) for seed in SEEDS[:2]] for layers in DEPTHS}
    colors = label_colors(NAMES.values(), sort=False)
    with style_context(STYLE):
        fig = new_figure(STYLE, height_ratio=0.36)
        axes = fig.subplots(1, 3)
        blocks = np.arange(LAYERS)
        for ax, sub, title in ((axes[0], "fc", "FFN W¹"), (axes[1], "proj", "FFN W²")):
            for stack, name in NAMES.items():
                norms = np.array([p[f"{stack}.{sub}"]["norms"] for p in profiles]) / 8  # 8 batches per step
                for row in norms:
                    ax.plot(blocks, row, color=colors[name], linewidth=0.5, alpha=0.5)
                ax.plot(blocks, norms.mean(0), color=colors[name], marker="o", markersize=3, label=name)
            ax.set(title=f"{title}: ‖E[∇W]‖ per block", xlabel="block (input → output)", yscale="log")
            ax.set_xticks(blocks[:: max(1, LAYERS // 6)])
        axes[0].legend(loc="center right")
        ax = axes[2]
        ls = np.array(DEPTHS, dtype=float)
        for stack, name in NAMES.items():
            last = np.array([np.mean([f[f"{stack}.proj"]["norms"][-1] for f in depth[n]]) for n in DEPTHS]) / 8
            ax.plot(ls, last, color=colors[name], marker="o", markersize=3, label=name)
            if stack == "pre":
                ax.plot(ls, last[0] * np.sqrt(ls[0] / ls), color=colors[name], linestyle="--", linewidth=0.8)
        ax.set(title="last block's W² vs depth", xlabel="blocks L", yscale="log")
        ax.set_xticks(ls)
        out = save_figure(fig, OUT / f"{Path(__file__).stem}.png", "png", dpi=DPI)
    print(out)
    return out


if __name__ == "__main__":
    main()
