"""Wu & He 2018: BatchNorm's batch statistics get noisy as the batch shrinks; GroupNorm's do not; Figure 6.

The ``wu-he-batch`` experiment: a VGG-style CNN (conv 16-16-pool-32-32-pool, He init, SGD
0.02 with momentum, batch 32) on ten synthetic 16×16 image classes, with no norm, BatchNorm
and GroupNorm (4 groups). Every forward also runs probe batches of 16, 8, 4 and 2 other
images through the same layers (no gradient, running statistics untouched). Left: how far
each BatchNorm layer's batch mean lies from its running mean, in running standard
deviations, against the batch size m (second half of training) — it grows as the batch
shrinks, like 1/√m (dashed) at the first layer; deeper layers add a floor, the running
statistics lagging weights that move. Middle: the median std of the normalization groups
relative to m = 32 — GroupNorm's per-sample statistics are the same at every batch size,
BatchNorm's per-channel std is biased low at m = 2. Right three panels (Wu & He's Fig. 6):
the 1st, 20th, 80th and 99th percentiles of ``conv4``'s output (before its norm) over
training: without a norm they spread out; with BatchNorm or GroupNorm they stay put.

    python gallery/plot_paper_wu_he_batch.py   # writes gallery/images/plot_paper_wu_he_batch.png
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

import normviz
from normviz.analysis.findings import wu_he_batch_findings
from normviz.experiments import run_experiment
from normviz.experiments.papers import paper_experiment
from normviz.plot.common import shades
from normviz.plot.palette import kind_color
from normviz.plot.save import save_figure
from normviz.plot.style import new_figure, style_context

QUICK = os.environ.get("NORMVIZ_GALLERY_QUICK") == "1"  # a few steps only, for CI
OUT = Path(os.environ.get("NORMVIZ_GALLERY_OUT") or Path(__file__).resolve().parent / "images")
STYLE, DPI = "paper-wide", 250
NAMES = {"none": "no norm", "batch": "BatchNorm", "group": "GroupNorm"}


def main() -> Path:
    torch.set_num_threads(1)  # small models train fastest on one thread
    experiment = paper_experiment("wu-he-batch", steps=12 if QUICK else 300)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for kind in NAMES:
            path = Path(tmp) / f"wu-he-batch-{kind}.h5"
            run_experiment(experiment, kind, path, every=1 if QUICK else 2, seed=0, device="cpu")
            runs[kind] = normviz.open(path)
        bn, gn = wu_he_batch_findings(runs["batch"]), wu_he_batch_findings(runs["group"])
        with style_context(STYLE):
            fig = new_figure(STYLE, height_ratio=0.62)
            mosaic = fig.subplot_mosaic([["noise"] * 3 + ["scale"] * 3, ["none"] * 2 + ["batch"] * 2 + ["group"] * 2])
            axes = [mosaic[k] for k in ("noise", "scale", "none", "batch", "group")]
            m = np.asarray(bn["m"], dtype=float)
            ax = axes[0]
            layers = list(bn["layers"])
            for layer, color in zip(layers, shades(kind_color("batch"), len(layers), lightest=0.3)):
                dev = bn["layers"][layer]["mean_dev"]
                ax.plot(m, dev, marker="o", markersize=2.5, color=color, label=layer.split(".")[-1])
            first = bn["layers"][layers[0]]["mean_dev"]
            ax.plot(m, first[0] * np.sqrt(m[0] / m), color="0.4", linestyle="--", linewidth=0.8, label="1/√m")
            ax.set(xscale="log", yscale="log", xlabel="batch size m", title="BN: |batch mean − running mean| / σ",
                   ylabel="mean over channels")
            ax.set_xticks(m, [f"{v:g}" for v in m])
            ax.minorticks_off()
            low, high = ax.get_ylim()
            ax.set_ylim(low * 0.3, high)
            ax.legend(fontsize="x-small", loc="lower left", ncols=3)
            ax = axes[1]
            for kind, found in (("batch", bn), ("group", gn)):
                scales = np.array([e["scale"] for e in found["layers"].values()])
                for row in scales:
                    ax.plot(m, row, color=kind_color(kind), linewidth=0.6, alpha=0.6)
                ax.plot(m, scales.mean(0), color=kind_color(kind), marker="o", markersize=2.5, label=NAMES[kind])
            ax.axhline(1.0, color="0.6", linewidth=0.5, zorder=0)
            ax.set(xscale="log", xlabel="batch size m", title="median std of the norm groups",
                   ylabel="relative to m = 32")
            ax.set_xticks(m, [f"{v:g}" for v in m])
            ax.minorticks_off()
            ax.legend(fontsize="x-small", loc="lower right")
            for ax, (kind, run) in zip(axes[2:], runs.items()):
                levels = list(run.layout.percentile_levels)
                pct = run.stat("percentiles", "net.conv4", "output", call=0)
                color = kind_color(kind)
                for level, width in ((1.0, 0.6), (20.0, 1.1), (80.0, 1.1), (99.0, 0.6)):
                    ax.plot(run.steps, pct[:, levels.index(level)], color=color, linewidth=width)
                ax.fill_between(run.steps, pct[:, levels.index(20.0)], pct[:, levels.index(80.0)], color=color,
                                alpha=0.15, linewidth=0)
                ax.set(title=f"Fig. 6, {NAMES[kind]}", xlabel="training step")
            axes[2].set_ylabel("conv4 output: 1/20/80/99th pct")
            fig.get_layout_engine().set(hspace=0.08)
            out = save_figure(fig, OUT / f"{Path(__file__).stem}.png", "png", dpi=DPI)
        for run in runs.values():
            run.close()
    print(out)
    return out


if __name__ == "__main__":
    main()
