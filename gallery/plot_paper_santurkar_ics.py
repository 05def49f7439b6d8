"""Santurkar et al. 2018: BatchNorm does not reduce internal covariate shift in its gradient sense.

Gradient ICS of layer i (the paper's Definition 2.1): G is the gradient of W_i at the current
weights, G′ the same gradient on the same batch after every earlier layer took its step;
``normviz.record.ics.gradient_ics`` measures ‖G − G′‖/‖G‖ and cos(G, G′), recorded as scalars.
Top (the ``santurkar-ics`` experiment): a 25-layer deep linear network of width 10,
full-batch gradient descent at lr 1e-4, with and without BatchNorm after each layer; the
cosine between G and G′ at layers 3, 6, …, 24 every 100 steps (lighter = shallower). Without
BN, G′ ≈ G (cos ≈ 1); with BN, the two are often barely correlated or opposite, as in the
paper's Fig. 3(b). Bottom: the median relative ICS per layer, for the deep linear network
and for a small VGG-style CNN (``santurkar-ics-vgg``: SGD 0.05, batch 64, conv2–conv4 and
the head every 25 steps). In the CNN, at this scale, BN *lowers* it — the paper's VGG claim
(similar or worse ICS with BN) does not reproduce here.

    python gallery/plot_paper_santurkar_ics.py   # writes gallery/images/plot_paper_santurkar_ics.png
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
from normviz.plot.common import shades
from normviz.plot.palette import kind_color
from normviz.plot.save import save_figure
from normviz.plot.style import new_figure, style_context

QUICK = os.environ.get("NORMVIZ_GALLERY_QUICK") == "1"  # a few steps only, for CI
OUT = Path(os.environ.get("NORMVIZ_GALLERY_OUT") or Path(__file__).resolve().parent / "images")
STYLE, DPI = "paper-wide", 250
NAMES = {"none": "no norm", "batch": "BatchNorm"}


def record(tmp: Path, name: str, kind: str, steps: int, ics_every: int) -> normviz.Run:
    path = tmp / f"{name}-{kind}.h5"
    experiment = paper_experiment(name, steps=steps, ics_every=ics_every)
    run_experiment(experiment, kind, path, every=max(1, steps // 20), seed=0, device="cpu")
    return normviz.open(path)


def ics_series(run: normviz.Run, what: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Layer -> (steps, values) of the ``ics_<what>/<layer>`` scalars where they were measured."""
    out = {}
    for name in run.scalar_names:
        if name.startswith(f"ics_{what}/"):
            values = run.scalar(name)
            keep = np.isfinite(values)
            out[name.split("/", 1)[1]] = (run.scalar_steps[keep], values[keep])
    return out


def main() -> Path:
    torch.set_num_threads(1)  # small models train fastest on one thread
    with tempfile.TemporaryDirectory() as tmp:
        dln = {k: record(Path(tmp), "santurkar-ics", k, 20 if QUICK else 1000, 10 if QUICK else 100) for k in NAMES}
        vgg = {k: record(Path(tmp), "santurkar-ics-vgg", k, 10 if QUICK else 300, 5 if QUICK else 25) for k in NAMES}
        with style_context(STYLE):
            fig = new_figure(STYLE, height_ratio=0.62)
            mosaic = fig.subplot_mosaic([["none", "batch"], ["dln", "vgg"]])
            for kind, name in NAMES.items():
                ax = mosaic[kind]
                series = ics_series(dln[kind], "cos")
                for (layer, (steps, cos)), color in zip(series.items(), shades(kind_color(kind), len(series), lightest=0.7)):
                    ax.plot(steps, cos, marker="o", markersize=2, linewidth=0.8, color=color, label=layer)
                ax.axhline(1.0, color="0.6", linewidth=0.5, zorder=0)
                ax.set(title=f"deep linear net, {name}: cos(G, G′)", xlabel="training step", ylim=(-1.05, 1.05))
            mosaic["none"].legend(fontsize="xx-small", ncols=4, loc="lower left")
            for key, runs, title in (("dln", dln, "deep linear net"), ("vgg", vgg, "VGG-style CNN")):
                ax = mosaic[key]
                for j, (kind, name) in enumerate(NAMES.items()):
                    series = ics_series(runs[kind], "rel")
                    layers = list(series)
                    medians = [float(np.median(series[layer][1])) for layer in layers]
                    x = np.arange(len(layers)) + (j - 0.5) * 0.38
                    ax.bar(x, medians, width=0.36, color=kind_color(kind), label=name)
                ax.set_xticks(np.arange(len(layers)), layers, fontsize="small")
                ax.set(title=f"{title}: median ‖G − G′‖ / ‖G‖", yscale="log")
            mosaic["dln"].legend(fontsize="x-small", loc="upper left")
            out = save_figure(fig, OUT / f"{Path(__file__).stem}.png", "png", dpi=DPI)
        for run in [*dln.values(), *vgg.values()]:
            run.close()
    print(out)
    return out


if __name__ == "__main__":
    main()
