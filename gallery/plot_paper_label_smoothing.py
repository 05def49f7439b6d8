"""Label smoothing shrinks the logits: the seed's version against PyTorch's.

The ``label-smoothing`` experiment: one classifier (``Linear(32, 128) - ReLU - Linear(128, 10)``,
Adam 3e-3, batch 128, ten Gaussian classes) copied three times and trained on the same
batches with plain cross-entropy, with the seed notebook's ``LabelSmoothingCrossEntropy(0.1)``
(0.9 on the target, ε/(K−1) = 0.011 on each other class) and with
``nn.CrossEntropyLoss(label_smoothing=0.1)`` (0.91 and ε/K = 0.01). Left: the spread (std) of
each copy's logits over training; middle: its largest logit; right: the 1st–99th
percentiles of the logits at the last step. Plain CE keeps pushing the logits apart; both
smoothings stop them at a gap near log 81 (seed) or log 91 (PyTorch), with the same accuracy.

    python gallery/plot_paper_label_smoothing.py   # writes gallery/images/plot_paper_label_smoothing.png
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

import normviz
from normviz.experiments import run_experiment
from normviz.experiments.papers import SMOOTHING_VARIANTS, paper_experiment
from normviz.plot.palette import label_colors
from normviz.plot.save import save_figure
from normviz.plot.style import new_figure, style_context

QUICK = os.environ.get("NORMVIZ_GALLERY_QUICK") == "1"  # a few steps only, for CI
OUT = Path(os.environ.get("NORMVIZ_GALLERY_OUT") or Path(__file__).resolve().parent / "images")
STYLE, DPI = "paper-wide", 250
NAMES = {"ce": "plain CE", "seed": "seed: ε/(K−1)", "torch": "PyTorch: ε/K"}


def main() -> Path:
    torch.set_num_threads(1)  # tiny models train fastest on one thread
    experiment = paper_experiment("label-smoothing", steps=20 if QUICK else 300)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "label-smoothing-none.h5"
        run_experiment(experiment, "none", path, seed=0, device="cpu")
        with normviz.open(path) as run, style_context(STYLE):
            colors = label_colors(NAMES.values(), sort=False)
            fig = new_figure(STYLE, height_ratio=0.36)
            ax_std, ax_max, ax_pct = fig.subplots(1, 3)
            levels = list(run.layout.percentile_levels)
            for i, name in enumerate(SMOOTHING_VARIANTS):
                layer, color = f"copies.{name}.head", colors[NAMES[name]]
                ax_std.plot(run.steps, run.stat("std", layer), color=color, label=NAMES[name])
                ax_max.plot(run.steps, run.stat("max", layer), color=color)
                last = run.stat("percentiles", layer)[-1]
                ax_pct.vlines(i, last[0], last[-1], color=color, linewidth=1.0)
                ax_pct.vlines(i, last[levels.index(20.0)], last[levels.index(80.0)], color=color, linewidth=5.0)
                ax_pct.plot([i], [last[levels.index(50.0)]], marker="o", color="white", markeredgecolor=color)
            ax_std.set(title="logit std", xlabel="training step")
            ax_max.set(title="largest logit", xlabel="training step")
            ax_pct.set(title="logits at the last step", ylabel="1st–20th–50th–80th–99th percentile", xlim=(-0.6, 2.6))
            ax_pct.set_xticks(range(3), ["CE", "seed", "PyTorch"])
            ax_std.legend(loc="center right")
            out = save_figure(fig, OUT / f"{Path(__file__).stem}.png", "png", dpi=DPI)
    print(out)
    return out


if __name__ == "__main__":
    main()
