"""Ioffe & Szegedy 2015, Figure 1: a sigmoid's input with and without BatchNorm.

The ``ioffe-fig1`` experiment: a 3×100 sigmoid MLP (weights N(0, 0.1²)) trained with SGD
(lr 0.5, batch 60) on binary 28×28 "MNIST-like" images (10 random prototypes, each pixel
flipped with probability 0.4), with and without BatchNorm before each sigmoid. Left: test
accuracy. Middle and right: the 15th, 50th and 85th percentiles, over the training batch, of
the input to one sigmoid of the last hidden layer (``norm3``'s output; the unit whose
spread ratio is the median of the 32 stored units), as in the paper's panels (b) and (c),
each a running mean over 5 recorded steps (every 10th step is recorded; a batch of 60 gives
noisy percentiles). Without BN the unit's input drifts and widens; with BN it stays put.

    python gallery/plot_paper_ioffe_fig1.py   # writes gallery/images/plot_paper_ioffe_fig1.png
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

import normviz
from normviz.experiments import run_experiment
from normviz.experiments.papers import paper_experiment
from normviz.plot.palette import kind_color
from normviz.plot.save import save_figure
from normviz.plot.style import new_figure, style_context

QUICK = os.environ.get("NORMVIZ_GALLERY_QUICK") == "1"  # a few steps only, for CI
OUT = Path(os.environ.get("NORMVIZ_GALLERY_OUT") or Path(__file__).resolve().parent / "images")
STYLE, DPI = "paper-wide", 250
NAMES = {"none": "no BN", "batch": "BN"}


def typical_unit(q: np.ndarray, i15: int, i85: int) -> int:
    """The unit whose spread ratio (last / first recorded spread) is the median one."""
    spread = q[:, :, i85] - q[:, :, i15]
    ratio = spread[-1] / np.maximum(spread[min(5, len(spread) - 1)], 1e-12)
    return int(np.argsort(ratio)[len(ratio) // 2])


def smooth(values: np.ndarray, width: int = 5) -> np.ndarray:
    """Running mean over ``width`` rows (shorter at the start)."""
    csum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - width, 0)
    return (csum[idx] - csum[lo]) / (idx - lo)


def main() -> Path:
    torch.set_num_threads(1)  # tiny models train fastest on one thread
    experiment = paper_experiment("ioffe-fig1", steps=40 if QUICK else 2000)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for kind in ("none", "batch"):
            path = Path(tmp) / f"ioffe-fig1-{kind}.h5"
            run_experiment(experiment, kind, path, every=2 if QUICK else 10, seed=0, device="cpu")
            runs[kind] = normviz.open(path)
        with style_context(STYLE):
            fig = new_figure(STYLE, height_ratio=0.36)
            ax_acc, ax_none, ax_bn = fig.subplots(1, 3)
            for kind, run in runs.items():
                acc, steps = run.scalar("test_acc"), run.scalar_steps
                keep = np.isfinite(acc)
                ax_acc.plot(steps[keep], acc[keep], color=kind_color(kind), label=NAMES[kind])
            ax_acc.set(title="(a) test accuracy", xlabel="training step", ylim=(0, 1.02))
            ax_acc.legend(loc="lower right")
            for ax, kind, letter in ((ax_none, "none", "b"), (ax_bn, "batch", "c")):
                run = runs[kind]
                levels = list(run.layout.percentile_levels)
                i15, i50, i85 = (levels.index(v) for v in (15.0, 50.0, 85.0))
                per = run.stat("channel_percentiles", "norm3", "output")
                q = per.reshape(len(run.steps), -1, len(levels))
                unit = typical_unit(q, i15, i85)
                channel = int(run.channel_index("norm3", "output")[unit])
                color = kind_color(kind)
                lo, mid, hi = (smooth(q[:, unit, i]) for i in (i15, i50, i85))
                ax.fill_between(run.steps, lo, hi, color=color, alpha=0.2, linewidth=0)
                for series, width in ((lo, 0.8), (mid, 1.4), (hi, 0.8)):
                    ax.plot(run.steps, series, color=color, linewidth=width)
                ax.axhline(0.0, color="0.6", linewidth=0.5, zorder=0)
                ax.set(title=f"({letter}) {NAMES[kind]}: sigmoid input, unit {channel}", xlabel="training step")
            ax_none.set_ylabel("15th / 50th / 85th percentile")
            lo = min(ax_none.get_ylim()[0], ax_bn.get_ylim()[0])
            hi = max(ax_none.get_ylim()[1], ax_bn.get_ylim()[1])
            ax_none.set_ylim(lo, hi)
            ax_bn.set_ylim(lo, hi)
            out = save_figure(fig, OUT / f"{Path(__file__).stem}.png", "png", dpi=DPI)
        for run in runs.values():
            run.close()
    print(out)
    return out


if __name__ == "__main__":
    main()
