"""Built-in renderer ``covariate-shift``: how much what enters each layer moves during training.

Top: the drift between consecutive recorded steps of what enters each layer
(:func:`normviz.analysis.channel_drift`: the mean over channels of the
symmetric KL divergence between per-channel Gaussians, each channel's variance
floored at 5 % of the layer's pooled variance so that near-constant channels do
not blow it up). For a norm layer that is its input ("in"); for another layer,
its output ("out"), i.e. what enters the layer after it (see
:mod:`normviz.analysis`). The figure says so above the top panel, with how
many of the model's layers are drawn. One run: one line per layer, up to
3 × ``max_layers`` layers evenly spaced in depth, lighter for shallower layers
and changing line style from one to the next (nine shades of one colour alone
cannot be told apart). Several runs: one panel per layer, runs overlaid on
shared axes so that, e.g., none vs batch can be compared at a glance.

Bottom: Ioffe & Szegedy (2015, Fig. 1) bands: the 15th, 50th and 85th
percentiles of the values entering and leaving a norm layer (by default the
deepest norm layer the runs share) over training, runs overlaid. A run of kind
``none`` whose model lacks that layer is drawn with the output of the layer
that feeds the norm in the other runs (its "input", unchanged at the "output").
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normviz import analysis
from normviz.errors import MissingDataError
from normviz.plot import common

#: Percentile levels of the bands (Ioffe & Szegedy 2015, Figure 1).
BAND_LEVELS = (15.0, 50.0, 85.0)
#: Line styles of one run's layers, in turn: neighbouring shades of one colour differ in style.
LAYER_STYLES = ("-", "--", ":", "-.")
#: The drift measure, as the figure explains it (see :func:`normviz.analysis.channel_drift`).
DRIFT_MEASURE = "sym. KL between each channel's Gaussians, mean over channels (variances floored at 5 % of the layer's)"


def _sites(run: Any, layers: str | None) -> list[analysis.DriftSite]:
    sites = analysis.drift_sites(run)
    names = set(analysis.select_names([s.layer for s in sites], layers))
    return [site for site in sites if site.layer in names]


def _drift(run: Any, site: analysis.DriftSite, rows: slice) -> np.ndarray:
    """Read only this site's columns (a long run is never read whole for the few sites drawn)."""
    mean = run.stat("channel_mean", site.layer, site.role, steps=rows)
    var = run.stat("channel_var", site.layer, site.role, steps=rows)
    return analysis.channel_drift(mean, var)


def _band(ax: Any, run: Any, look: Any, layer: str, role: str, rows: slice, max_points: int, fill: bool,
          panel: str) -> bool:
    try:
        values = run.stat("percentiles", layer, role, steps=rows)
    except MissingDataError as exc:
        if exc.statistic == "percentiles":
            raise  # the run lacks them: the figure cannot be drawn
        return False  # this run has no such layer
    band = analysis.percentile_band(values, run.layout.percentile_levels, *BAND_LEVELS)
    x = np.asarray(run.steps[rows], dtype=np.float64)
    xs, ys = analysis.block_mean(x, np.stack([band.lo, band.mid, band.hi], axis=1), max_points)
    lo, mid, hi = ys[:, 0], ys[:, 1], ys[:, 2]
    if fill:
        ax.fill_between(xs, lo, hi, color=look.color, alpha=0.15, linewidth=0)
    for level, series, width in zip(BAND_LEVELS, (lo, mid, hi), (0.6, 1.0, 0.6)):
        ax.plot(xs, series, color=look.color, linewidth=width,
                linestyle=look.linestyle if level == 50 else "-",
                gid=f"p{level:g}:{run.label}:{layer}:{role}" + ("" if panel == role else f"->{panel}"))
    return True


def draw(
    runs: Any,
    fig: Figure,
    *,
    layers: str | None = None,
    steps: Any = None,
    max_layers: int = 3,
    band_layer: str | None = None,
    max_points: int = 1000,
) -> Figure:
    """Draw covariate-shift drift and percentile bands for ``runs`` into ``fig``.

    Options: ``layers`` (glob over layer names), ``steps`` (training steps
    ``"START:STOP"``), ``max_layers`` (panels when comparing runs; a single run
    draws up to 3 × ``max_layers`` lines), ``band_layer`` (the norm layer of the
    bands; default the deepest norm layer the runs share), ``max_points``.
    """
    runs = common.as_runs(runs)
    looks = common.run_looks(runs)
    single = len(runs) == 1
    windows = []
    for run in runs:
        rows = common.step_rows(run, steps)
        windows.append(common.divergence(run, rows))
    drifts = [_sites(run, layers) for run in runs]
    if not any(drifts):
        raise MissingDataError("covariate-shift: no layer with per-channel statistics"
                               + (f" matches {layers!r}" if layers else ""))
    keys = [[site.key for site in per_run] for per_run in drifts]
    titles: dict[tuple[str, str], str] = {}
    for per_run in drifts:
        for site in per_run:
            if site.same_as is not None:
                titles[site.key] = f"{site.layer or '(root)'} input = {site.same_as[0] or '(root)'} output"
    order = analysis.merged_order([[layer.name for layer in run.layers] for run in runs])
    position = {key: (order.index(key[0]), key[1] == "output") for k in keys for key in k}
    count = {key: sum(key in k for k in keys) for key in position}
    limit = 3 * max_layers if single else max_layers
    # Sites most runs share first, evenly spread in depth; then the rest.
    best = max(count.values())
    shared = sorted((k for k in count if count[k] == best), key=position.__getitem__)
    panels = [shared[int(i)] for i in analysis.select_names([str(i) for i in range(len(shared))], None, limit)]
    others = sorted((k for k in count if k not in panels), key=lambda k: (-count[k], position[k]))
    panels += others[: max(0, limit - len(panels))]
    panels.sort(key=position.__getitem__)
    name = band_layer if band_layer is not None else common.focus_layer(runs, layers, deepest=True)
    if name is None:  # no norm layer anywhere: follow the deepest drift site instead
        name = panels[-1][0]
    drift_rows = 1 if single else len(panels)
    heights = [0.6] if single else [0.32] * drift_rows
    heights.append(0.6)
    # Stacked drift panels share their x axis: they need less room for text than a full row.
    common.fit_rows(fig, 1, row_ratio=sum(heights) + 0.1, panel_rows=1.5 + (0 if single else 0.55 * drift_rows))
    grid = fig.add_gridspec(len(heights), 2, height_ratios=heights)
    drift_axes: list[Any] = []
    handles: list[Line2D] = []
    labels: list[str] = []
    for p in range(drift_rows):
        ax = fig.add_subplot(grid[p, :], sharex=drift_axes[0] if drift_axes else None,
                             sharey=drift_axes[0] if drift_axes else None)
        drift_axes.append(ax)
    for run, look, per_run, (rows, diverged) in zip(runs, looks, drifts, windows):
        x = np.asarray(run.steps[rows], dtype=np.float64)
        shown = [(site, _drift(run, site, rows)) for site in per_run if site.key in panels]
        # One run: a shade per layer, lighter for shallower ones, and a line style that
        # changes from each line to the next, so neighbouring shades stay apart.
        colors = common.shades(look.color, len(shown)) if single else [look.color] * len(shown)
        for i, (color, (site, d)) in enumerate(zip(colors, shown)):
            ax = drift_axes[0] if single else drift_axes[panels.index(site.key)]
            style = LAYER_STYLES[i % len(LAYER_STYLES)] if single else look.linestyle
            common.line(ax, x, d, max_points=max_points, color=color, linestyle=style,
                        gid=f"drift:{run.label}:{site.layer}:{site.role}")
            common.mark_nonfinite(ax, diverged, label=False)
            if single:
                handles.append(Line2D([], [], color=color, linestyle=style))  # type: ignore[arg-type]
                labels.append(f"{site.label} {site.module_type}")
    values = np.concatenate([common.drawn_values(ax) for ax in drift_axes])
    total = len({key for k in keys for key in k})
    what = (f"{len(panels)} of {total} layers, evenly spaced in depth" if len(panels) < total
            else f"all {total} layers")
    for p, ax in enumerate(drift_axes):
        if common.positive(values):
            ax.set_yscale("log")
        ax.tick_params(labelbottom=(p == drift_rows - 1))
        if not single:
            layer, role = panels[p]
            ax.set_title(titles.get(panels[p], f"{layer or '(root)'} {role}"), loc="left", fontsize="small")
    # What the drift is, said where the reader looks first: above the top panel.
    top = drift_axes[0]
    below = "" if single else f"\n{top.get_title(loc='left')}"
    text = f"drift between recorded steps of what enters each layer ({what}): {DRIFT_MEASURE}"
    top.set_title(text.split(":")[0] + below, loc="left", fontsize="small")  # wrapped once laid out, below
    common.step_axis(drift_axes[-1])
    drift_axes[len(drift_axes) // 2].set_ylabel("drift (nats)")
    band_axes = [fig.add_subplot(grid[-1, 0]), fig.add_subplot(grid[-1, 1])]
    band_axes[1].sharey(band_axes[0])
    band_axes[1].sharex(band_axes[0])
    drawn = {"input": False, "output": False}
    # A run without normalization has no layer `name`; what would enter that norm
    # is the output of the layer before it, and with no norm it also leaves unchanged.
    stand_in = next((site.same_as for per_run in drifts for site in per_run
                     if site.layer == name and site.same_as is not None), None)
    for run, look, (rows, diverged) in zip(runs, looks, windows):
        has = any(layer.name == name for layer in run.layers)
        for ax, role in zip(band_axes, ("input", "output")):
            if has:
                ok = _band(ax, run, look, name, role, rows, max_points, fill=single, panel=role)
            elif stand_in is not None and run.norm_kind == "none":
                ok = _band(ax, run, look, stand_in[0], stand_in[1], rows, max_points, fill=single, panel=role)
            else:
                ok = False
            if ok:
                drawn[role] = True
                common.mark_nonfinite(ax, diverged, label=False)
    for ax, role in zip(band_axes, ("input", "output")):
        ax.set_title(f"{role} of {name or '(root)'}" if role == "input" else role, loc="left", fontsize="small")
        common.step_axis(ax)
        if not drawn[role]:
            common.no_data(ax, f"{role} of {name or '(root)'} not recorded")
    band_axes[0].set_ylabel("{:g}/{:g}/{:g}th pct.".format(*BAND_LEVELS))
    band_axes[1].tick_params(labelleft=False)
    if not single:
        handles, labels = common.look_handles(looks)
    if any(d is not None for _, d in windows):
        handles, labels = [*handles, common.nonfinite_handle()], [*labels, "non-finite"]
    common.figure_legend(fig, handles, labels,
                         title="in: a norm layer's input; out: a layer's output (lighter = shallower)"
                         if single else common.legend_title(runs))
    common.figure_title(fig, "internal covariate shift", runs)
    common.wrap_titles_to_panels(fig, [(top, text, below)])
    return fig
