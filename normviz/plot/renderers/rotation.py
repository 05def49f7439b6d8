"""Built-in renderer ``rotation``: the angle each optimizer step turns the weights that feed a norm
layer, against the rotational equilibrium their optimizer predicts (Kosson et al. 2024).

A weight whose output a norm layer normalizes is scale-invariant: only its direction
matters, and weight decay and the gradient steps settle at a fixed angle per step —
sqrt(2ηλ/(1+α)) for SGD with momentum α and weight decay λ at learning rate η,
sqrt(2ηλ(1−β₁)/(1+β₁)) for AdamW (:mod:`normviz.analysis.rotation`). Per such layer
(lighter = shallower; several runs: one colour per run):

1. the measured angle ``update_angle`` (block means over training), the prediction dashed;
2. their ratio, with the band 0.8–1.25 shaded: inside it, the layer turns as predicted —
   its effective learning rate is set by the hyperparameters, not by its history;
3. the weight norm, which the equilibrium fixes too (without weight decay it only grows).

The layers are those the recorder saw feeding a norm layer (``meta["feeds_norm"]``; every
layer with parameters in a run without one), or ``layers``; an optimizer other than SGD and
AdamW, no weight decay, or a weight that does not feed a norm has no prediction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normviz import analysis
from normviz.analysis.rotation import predicted_angles, scale_invariant_layers
from normviz.errors import MissingDataError
from normviz.plot import common

STAT = "update_angle"


def _read(run: Any, steps: Any, layers: str | None, max_steps: int) -> dict[str, Any]:
    if STAT not in run.statistics.get("grad", ()):
        raise MissingDataError(f"{run.path}: no {STAT!r} in this run (recorded by an older normviz); record it again",
                               statistic=STAT)
    rows = common.step_rows(run, steps)
    names, angle = run.grad(STAT, steps=rows)
    _, norm = run.grad("weight_norm", steps=rows)
    # The layers that feed a norm (scale-invariant weights); a run without any shows them all.
    invariant = [n for n in scale_invariant_layers(run) if n in names]
    chosen = analysis.select_names(names if layers is not None or not invariant else invariant, layers)
    if not chosen:
        raise MissingDataError(f"{run.path}: no layer with parameters matches {layers!r}; layers: {names}",
                               statistic=STAT)
    x = np.asarray(run.steps[rows], dtype=np.float64)
    idx = [names.index(n) for n in chosen]
    out: dict[str, Any] = {"names": chosen}
    out["steps"], out["angle"] = analysis.block_mean(x, np.asarray(angle, dtype=np.float64)[:, idx], max_steps)
    _, out["norm"] = analysis.block_mean(x, np.asarray(norm, dtype=np.float64)[:, idx], max_steps)
    predicted = np.stack([predicted_angles(run, n, rows) if n in invariant else np.full(len(x), np.nan)
                          for n in chosen], axis=1)
    _, out["predicted"] = analysis.block_mean(x, predicted, max_steps)
    return out


def draw(
    runs: Any,
    fig: Figure,
    *,
    layers: str | None = None,
    steps: Any = None,
    max_layers: int = 6,
    max_steps: int = 60,
) -> Figure:
    """Draw the rotation figure of ``runs`` into ``fig``.

    Options: ``layers`` (glob over layer names; default: the layers that feed a norm layer),
    ``steps`` (training steps ``"START:STOP"``), ``max_layers`` (per run, evenly spaced in
    depth), ``max_steps`` (points per line: the recorded steps are averaged in blocks, as
    the angle of single steps is noisy).
    """
    runs = common.as_runs(runs)
    data = [_read(run, steps, layers, max_steps) for run in runs]
    looks = common.run_looks(runs)
    common.fit_rows(fig, 3)
    axes = fig.subplots(3, 1, sharex=True)
    ax_a, ax_r, ax_n = axes
    single = len(runs) == 1
    handles: list[Line2D] = []
    labels: list[str] = []
    predicted_any = any(np.isfinite(d["predicted"]).any() for d in data)
    for run, d, look in zip(runs, data, looks):
        for name, color in common.layer_shades(d["names"], look.color, max_layers):
            j = d["names"].index(name)
            tag = f"{run.label}:{name}"
            ax_a.plot(d["steps"], d["angle"][:, j], color=color, gid=f"{STAT}:{tag}")
            ax_a.plot(d["steps"], d["predicted"][:, j], color=color, linestyle="--", linewidth=0.8,
                      gid=f"{STAT}_predicted:{tag}")
            with np.errstate(invalid="ignore", divide="ignore"):
                ax_r.plot(d["steps"], d["angle"][:, j] / d["predicted"][:, j], color=color, gid=f"{STAT}_ratio:{tag}")
            ax_n.plot(d["steps"], d["norm"][:, j], color=color, gid=f"weight_norm:{tag}")
            if single:
                handles.append(Line2D([], [], color=color))
                labels.append(name)
    ax_a.set_title("angle per step (dashed: the equilibrium predicted)", loc="left", fontsize="small")
    ax_a.set_ylabel("radians")
    if common.wants_log(common.drawn_values(ax_a), ratio=5.0):
        ax_a.set_yscale("log")
    ax_r.set_title("measured / predicted", loc="left", fontsize="small")
    if predicted_any:
        ax_r.axhspan(0.8, 1.25, color="0.92", zorder=0)
        ax_r.axhline(1.0, color="0.6", linewidth=0.6, zorder=0)
        ax_r.set_ylabel("ratio")
    else:
        common.no_data(ax_r, "no prediction: it needs weights that feed a norm,\nSGD or AdamW, and weight decay")
    ax_n.set_title("weight norm", loc="left", fontsize="small")
    ax_n.set_ylabel("‖w‖")
    common.step_axis(ax_n)
    if not single:
        handles, labels = common.look_handles(looks)
    common.figure_legend(fig, handles, labels, title="layer (lighter = shallower)" if single
                         else common.legend_title(runs))
    common.figure_title(fig, "rotational equilibrium", runs)
    return fig
