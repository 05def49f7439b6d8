"""Built-in renderer ``attention``: attention-logit growth and entropy collapse.

Reads the opt-in statistics ``attention_max_logit`` and ``attention_entropy`` (per head
of each attention module). Per attention layer over training (lighter = shallower;
several runs: one colour per run):

1. the largest logit over its heads (log scale): without QK-norm it can grow without
   bound at high learning rates (Dehghani et al. 2023, Wortsman et al. 2023);
2. the lowest entropy over its heads (mean over queries), with log T of the longest
   causal row marked when known: near 0 means one-hot attention, the collapse Zhai et
   al. 2023 tie to unstable training;
3. at the last recorded step, both by depth.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normviz import analysis
from normviz.errors import MissingDataError
from normviz.plot import common

LOGIT, ENTROPY = "attention_max_logit", "attention_entropy"


def _read(run: Any, steps: Any, layers: str | None) -> dict[str, Any]:
    entry = run.layout.stat("act", LOGIT)
    recorded = run.statistics.get("act", ())
    if entry is None or LOGIT not in recorded or ENTROPY not in recorded:
        raise MissingDataError(
            f"{run.path}: no attention statistics ({LOGIT!r}, {ENTROPY!r}) in this run: they are opt-in "
            f"(Recorder(statistics=[{LOGIT!r}, {ENTROPY!r}]) or --stat {LOGIT},{ENTROPY})", statistic=LOGIT)
    rows = common.step_rows(run, steps)
    sites = [run.sites[r] for r in entry.rows]
    names = analysis.select_names([s.layer for s in sites], layers)
    if not names:
        raise MissingDataError(f"{run.path}: no attention layer matches {layers!r}", statistic=LOGIT)
    logit, entropy = [], []
    for name in names:
        site = next(s for s in sites if s.layer == name)
        with np.errstate(invalid="ignore"):
            logit.append(np.nanmax(np.asarray(run.stat(LOGIT, name, call=site.call, steps=rows), dtype=np.float64),
                                   axis=1))
            entropy.append(np.nanmin(np.asarray(run.stat(ENTROPY, name, call=site.call, steps=rows),
                                                dtype=np.float64), axis=1))
    return {"steps": np.asarray(run.steps[rows], dtype=np.float64), "names": names,
            "logit": np.stack(logit, axis=1), "entropy": np.stack(entropy, axis=1)}


def draw(runs: Any, fig: Figure, *, layers: str | None = None, steps: Any = None, max_layers: int = 6) -> Figure:
    """Draw the attention figure of ``runs`` into ``fig``.

    Options: ``layers`` (glob over attention layer names), ``steps`` (training steps
    ``"START:STOP"``), ``max_layers`` (lines per run, evenly spaced in depth).
    """
    runs = common.as_runs(runs)
    data = [_read(run, steps, layers) for run in runs]
    looks = common.run_looks(runs)
    single = len(runs) == 1
    common.fit_rows(fig, 2.2)
    grid = fig.add_gridspec(2, 2, width_ratios=[2.2, 1.0])
    ax_l = fig.add_subplot(grid[0, 0])
    ax_e = fig.add_subplot(grid[1, 0], sharex=ax_l)
    ax_dl = fig.add_subplot(grid[0, 1])
    ax_de = fig.add_subplot(grid[1, 1], sharex=ax_dl)
    handles: list[Line2D] = []
    labels: list[str] = []
    order = common.depth_order([d["names"] for d in data])
    for run, d, look in zip(runs, data, looks):
        for name, color in common.layer_shades(d["names"], look.color, max_layers):
            j = d["names"].index(name)
            ax_l.plot(d["steps"], d["logit"][:, j], color=color, gid=f"{LOGIT}:{run.label}:{name}")
            ax_e.plot(d["steps"], d["entropy"][:, j], color=color, gid=f"{ENTROPY}:{run.label}:{name}")
            if single:
                handles.append(Line2D([], [], color=color))
                labels.append(name)
        depth = [order[n] for n in d["names"]]
        ax_dl.plot(depth, d["logit"][-1], color=look.color, marker=look.marker, markersize=3,
                   linestyle=look.linestyle, gid=f"{LOGIT}_depth:{run.label}")
        ax_de.plot(depth, d["entropy"][-1], color=look.color, marker=look.marker, markersize=3,
                   linestyle=look.linestyle, gid=f"{ENTROPY}_depth:{run.label}")
    ax_l.set_title("largest attention logit (over heads)", loc="left", fontsize="small")
    if common.positive(common.drawn_values(ax_l)) and common.wants_log(common.drawn_values(ax_l), ratio=10.0):
        ax_l.set_yscale("log")
        ax_dl.set_yscale("log")
    ax_e.set_title("lowest head entropy (mean over queries)", loc="left", fontsize="small")
    ax_e.set_ylabel("nats")
    ax_e.axhline(0.0, color="0.85", linewidth=0.6, zorder=0)
    common.step_axis(ax_e)
    ax_dl.set_title("last step, by depth", loc="left", fontsize="small")
    common.depth_ticks(ax_de, list(order), 4)
    ax_dl.tick_params(labelbottom=False)
    if not single:
        handles, labels = common.look_handles(looks)
    common.figure_legend(fig, handles, labels, title="attention layer (lighter = shallower)" if single
                         else common.legend_title(runs))
    common.figure_title(fig, "attention logits and entropy", runs)
    return fig
