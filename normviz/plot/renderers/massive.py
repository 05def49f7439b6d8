"""Built-in renderer ``massive``: massive activations (Sun et al. 2024) — the largest |activation| of
each recorded layer, how far above the median it is, and which channel carries it.

Reads the opt-in statistic ``massive_activations`` (the 3 largest |x| of a site with their
channels and positions, and the median |x| of its value sample):

1. per layer over training, the largest |x| over the median |x| (log scale; Sun et al.
   call an activation massive at about 1000× and |x| > 100, marked by a dotted line);
2. the channel of the largest |x| at each recorded step: a fixed channel is a lasting
   outlier feature (He et al.), a changing one is not;
3. at the last recorded step, the three largest |x| and the median by depth (Sun et al.'s
   layer-wise figure).

Several runs: one colour per run, lighter for shallower layers.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normviz import analysis
from normviz.errors import MissingDataError
from normviz.plot import common

STAT = "massive_activations"
TOP = 3


def _read(run: Any, steps: Any, layers: str | None, role: str | None) -> dict[str, Any]:
    entry = run.layout.stat("act", STAT)
    if entry is None or STAT not in run.statistics.get("act", ()):
        raise MissingDataError(
            f"{run.path}: no {STAT!r} in this run: it is opt-in (Recorder(statistics=[{STAT!r}]) or "
            f"--stat {STAT})", statistic=STAT)
    rows = common.step_rows(run, steps)
    sites = [run.sites[r] for r in entry.rows]
    if role is None:  # norm layers' inputs (the residual stream) when recorded there, else every site
        role = "input" if any(s.role == "input" for s in sites) else "all"
    sites = [s for s in sites if role == "all" or s.role == role]
    names = [f"{s.layer} {s.role}" if s.role != "output" else s.layer for s in sites]
    chosen = analysis.select_names(names, layers)
    if not chosen:
        raise MissingDataError(f"{run.path}: no site with {STAT} matches {layers!r}", statistic=STAT)
    data = {}
    for name in chosen:
        site = sites[names.index(name)]
        data[name] = np.asarray(run.stat(STAT, site.layer, site.role, call=site.call, steps=rows), dtype=np.float64)
    return {"steps": np.asarray(run.steps[rows], dtype=np.float64), "names": chosen, "data": data}


def draw(runs: Any, fig: Figure, *, layers: str | None = None, role: str | None = None, steps: Any = None,
         max_layers: int = 6) -> Figure:
    """Draw the massive-activation figure of ``runs`` into ``fig``.

    Options: ``layers`` (glob over site names: the layer, followed by `` input`` for a norm
    layer's input), ``role`` (``input``, ``output`` or ``all``; default: the norm layers'
    inputs where recorded), ``steps`` (training steps ``"START:STOP"``), ``max_layers``
    (lines per run, evenly spaced in depth).
    """
    runs = common.as_runs(runs)
    if role not in (None, "input", "output", "all"):
        raise ValueError(f"massive: role must be input, output or all, not {role!r}")
    data = [_read(run, steps, layers, role) for run in runs]
    looks = common.run_looks(runs)
    single = len(runs) == 1
    common.fit_rows(fig, 2.2)
    grid = fig.add_gridspec(2, 2, height_ratios=[1.0, 1.0])
    ax_ratio = fig.add_subplot(grid[0, :])
    ax_chan = fig.add_subplot(grid[1, 0], sharex=ax_ratio)
    ax_depth = fig.add_subplot(grid[1, 1])
    handles: list[Line2D] = []
    labels: list[str] = []
    order = common.depth_order([d["names"] for d in data])
    for run, d, look in zip(runs, data, looks):
        for name, color in common.layer_shades(d["names"], look.color, max_layers):
            v = d["data"][name]
            with np.errstate(invalid="ignore", divide="ignore"):
                ratio = v[:, 0] / v[:, 3 * TOP]
            ax_ratio.plot(d["steps"], ratio, color=color, gid=f"{STAT}_ratio:{run.label}:{name}")
            ax_chan.plot(d["steps"], v[:, TOP], color=color, linestyle="none", marker=".", markersize=3,
                         gid=f"{STAT}_channel:{run.label}:{name}")
            if single:
                handles.append(Line2D([], [], color=color))
                labels.append(name)
        last = np.array([d["data"][n][-1] for n in d["names"]])
        depth = [order[n] for n in d["names"]]
        for k, alpha in zip(range(TOP), (1.0, 0.6, 0.35)):
            ax_depth.plot(depth, last[:, k], color=look.color, alpha=alpha, marker=look.marker, markersize=3,
                          linestyle=look.linestyle, gid=f"{STAT}_top{k + 1}:{run.label}")
        ax_depth.plot(depth, last[:, 3 * TOP], color=look.color, linestyle=":", gid=f"{STAT}_median:{run.label}")
    ax_ratio.axhline(1000, color="0.6", linestyle=":", linewidth=0.8)
    ax_ratio.set_yscale("log")
    ax_ratio.set_title("largest |x| / median |x| per layer (dotted: Sun et al.'s 1000×)", loc="left",
                       fontsize="small")
    ax_chan.set_title("channel of the largest |x|", loc="left", fontsize="small")
    ax_chan.set_ylabel("channel")
    common.step_axis(ax_chan)
    ax_depth.set_yscale("log")
    ax_depth.set_title("last step: top 3 |x| (fading), median (dotted)", loc="left", fontsize="small")
    common.depth_ticks(ax_depth, list(order), 4)
    if not single:
        handles, labels = common.look_handles(looks)
    common.figure_legend(fig, handles, labels, title="site (lighter = shallower)" if single
                         else common.legend_title(runs))
    common.figure_title(fig, "massive activations", runs)
    return fig
