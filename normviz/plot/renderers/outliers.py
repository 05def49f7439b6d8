"""Built-in renderer ``outliers``: outlier features (He et al. 2024) — how unevenly the
channels of each layer carry the signal, over training.

The statistic is ``rms_kurtosis``: for one site and step, the kurtosis over all its
channels of each channel's RMS, mean(s⁴)/mean(s²)². It is 1 when every channel has
the same RMS and equals the channel count when one channel carries everything; it is
scale-invariant, and read against its value at initialization.

1. Per layer over training: one line per recorded layer, lighter for shallower layers
   (several runs: one panel per run). The sites are the inputs of the norm layers —
   the residual stream of a pre-norm transformer — or, in a model without norm
   sites, every layer's output (``role`` chooses).
2. The largest kurtosis over those layers, per run over training, coloured by norm
   kind: the comparison of He et al.'s figures (pre-norm blocks against blocks
   without norms, learning rates, optimizers).
3. Kurtosis across depth at the last recorded step (dashed: at the first), per run.

A run that became non-finite is drawn up to that step, marked in red.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normviz import analysis
from normviz.errors import MissingDataError
from normviz.plot import common

STAT = "rms_kurtosis"


def _read(run: Any, steps: Any, role: str | None, layers: str | None) -> dict[str, Any]:
    if STAT not in run.statistics.get("act", ()):
        raise MissingDataError(
            f"{run.path}: no {STAT!r} in this run (recorded by normviz before outlier features were added); "
            "record it again", statistic=STAT)
    rows = common.step_rows(run, steps)
    rows, diverged = common.divergence(run, rows)
    sites, values = run.stat_all(STAT, steps=rows)
    if role is None:
        norm_inputs = [s for s in sites if s.role == "input"]
        role = "input" if norm_inputs else "output"
    keep = [i for i, s in enumerate(sites) if role == "all" or s.role == role]
    names = [f"{sites[i].layer}" if role != "all" else f"{sites[i].layer} {sites[i].role}" for i in keep]
    chosen = analysis.select_names(names, layers)
    if not chosen:
        raise MissingDataError(f"{run.path}: no {role} site matches {layers!r} for {STAT}", statistic=STAT)
    idx = [keep[names.index(n)] for n in chosen]
    return {
        "steps": np.asarray(run.steps[rows], dtype=np.float64),
        "names": chosen,
        "values": np.asarray(values, dtype=np.float64)[:, idx],
        "diverged": diverged,
        "role": role,
    }


def draw(
    runs: Any,
    fig: Figure,
    *,
    layers: str | None = None,
    role: str | None = None,
    steps: Any = None,
    max_layers: int = 8,
    max_points: int = 1000,
) -> Figure:
    """Draw the outlier-feature figure of ``runs`` into ``fig``.

    Options: ``layers`` (glob over layer names), ``role`` (``input``: the norm layers'
    inputs, ``output``: every layer's output, ``all``; default: the norm inputs when the
    run has any), ``steps`` (training steps ``"START:STOP"``), ``max_layers`` (lines per
    run in the per-layer panels, evenly spaced in depth), ``max_points``.
    """
    runs = common.as_runs(runs)
    if role not in (None, "input", "output", "all"):
        raise ValueError(f"outliers: role must be input, output or all, not {role!r}")
    data = [_read(run, steps, role, layers) for run in runs]
    looks = common.run_looks(runs)
    n = len(runs)
    common.fit_rows(fig, 1 + 0.6 * n, panel_rows=1.6 + 0.6 * n)
    grid = fig.add_gridspec(n + 1, 2, height_ratios=[1.0] * n + [1.1])
    first_ax = None
    handles: list[Line2D] = []
    labels: list[str] = []
    for i, (run, d, look) in enumerate(zip(runs, data, looks)):
        ax = fig.add_subplot(grid[i, :], sharex=first_ax)
        first_ax = first_ax or ax
        for name, color in common.layer_shades(d["names"], look.color, max_layers):
            j = d["names"].index(name)
            common.line(ax, d["steps"], d["values"][:, j], max_points=max_points, color=color,
                        gid=f"{STAT}:{run.label}:{name}")
            if n == 1:
                handles.append(Line2D([], [], color=color))
                labels.append(name or "(root)")
        common.mark_nonfinite(ax, d["diverged"], label=False)
        where = {"input": "norm inputs", "output": "layer outputs"}.get(d["role"], "sites")
        ax.set_title(f"{look.label}: per layer, {where}" + (" (lighter = shallower)" if n == 1 else ""),
                     loc="left", color=look.color, fontsize="small")
        ax.set_ylabel("kurtosis")
        ax.tick_params(labelbottom=False)
        if common.wants_log(common.drawn_values(ax)):
            ax.set_yscale("log")
    ax_max = fig.add_subplot(grid[n, 0], sharex=first_ax)
    ax_depth = fig.add_subplot(grid[n, 1])
    order = common.depth_order([d["names"] for d in data])
    for run, d, look in zip(runs, data, looks):
        values = d["values"]
        top = np.full(len(d["steps"]), np.nan)
        finite_rows = np.isfinite(values).any(axis=1)
        top[finite_rows] = np.nanmax(np.where(np.isfinite(values[finite_rows]), values[finite_rows], np.nan), axis=1)
        common.line(ax_max, d["steps"], top, max_points=max_points, color=look.color, linestyle=look.linestyle,
                    gid=f"{STAT}_max:{run.label}")
        common.mark_nonfinite(ax_max, d["diverged"], label=False)
        if len(values):
            depth = [order[name] for name in d["names"]]
            ax_depth.plot(depth, values[-1], color=look.color, linestyle=look.linestyle, marker=look.marker,
                          markersize=3, gid=f"{STAT}_depth:{run.label}")
            ax_depth.plot(depth, values[0], color=look.color, linestyle="--", linewidth=0.8, alpha=0.6,
                          gid=f"{STAT}_depth_first:{run.label}")
    ax_max.set_title("largest over layers", loc="left", fontsize="small")
    ax_max.set_ylabel("kurtosis")
    common.step_axis(ax_max)
    ax_depth.set_title("by depth, last step (dashed: first)", loc="left", fontsize="small")
    ax_depth.set_xlabel("layer (input → output)")
    common.depth_ticks(ax_depth, list(order), 5)
    for ax in (ax_max, ax_depth):
        ax.axhline(1.0, color="0.8", linewidth=0.6, zorder=0)  # equal channel RMS
        if common.wants_log(common.drawn_values(ax)):
            ax.set_yscale("log")
    if not any(np.isfinite(d["values"]).any() for d in data):
        raise MissingDataError(f"outliers: no finite {STAT} value in the selected steps", statistic=STAT)
    if n > 1:
        handles, labels = common.look_handles(looks)
    common.figure_legend(fig, handles, labels, title="layer" if n == 1 else common.legend_title(runs))
    common.figure_title(fig, "outlier features: kurtosis of channel RMS", runs)
    return fig
