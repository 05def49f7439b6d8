"""Built-in renderer ``histograms``: activation histograms over training, log counts.

The "colorful dimension" view: for each site, a heatmap with the training step
across and the activation value up, coloured by how many values of the
recorded sample fell in each bin (log scale, one scale for the whole figure).
The bins are the site's fixed histogram edges (chosen at its first recorded
step); values that fell below or above them are drawn as one extra bin under
and over the range, fenced off by white lines, so nothing is silently lost.

A norm layer is shown before (input) and after (output) normalization, side by
side; an ordinary layer by its output. One run: up to ``max_layers`` layers
(norm layers first choice). Several runs: one row per run, all showing the same
layer (the first norm layer they share, or the first match of ``layers``).
Steps where a site held non-finite values get a red tick on top.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from normviz import analysis
from normviz.errors import MissingDataError
from normviz.plot import common


def _sites_of(run: Any, name: str) -> list[tuple[str, str]]:
    roles = [s.role for s in run.sites if s.layer == name and s.call == 0]
    return [(name, role) for role in ("input", "output") if role in roles]


def _read(run: Any, layer: str, role: str, rows: slice, max_steps: int) -> dict[str, Any]:
    hist = np.asarray(run.stat("hist", layer, role, steps=rows), dtype=np.float64)
    edges = np.asarray(run.hist_edges(layer, role), dtype=np.float64)
    x = np.asarray(run.steps[rows], dtype=np.float64)
    try:
        bad = np.asarray(run.stat("nonfinite", layer, role, steps=rows)) > 0
    except MissingDataError:
        bad = np.zeros(len(x), dtype=bool)
    xs, counts = analysis.block_mean(x, hist, max_steps)
    width = edges[1] - edges[0] if len(edges) > 1 else 1.0
    y_edges = np.concatenate([[edges[0] - width], edges, [edges[-1] + width]])
    return {"x": xs, "x_edges": analysis.edges_from_centers(xs), "y_edges": y_edges, "edges": edges,
            "counts": counts.T, "bad_steps": x[bad]}


def _panel(ax: Any, d: dict[str, Any], norm: LogNorm, gid: str) -> Any:
    counts = np.where(d["counts"] > 0, d["counts"], np.nan)
    mesh = ax.pcolormesh(d["x_edges"], d["y_edges"], counts, norm=norm, cmap="magma_r", rasterized=True, gid=gid)
    for e in (d["edges"][0], d["edges"][-1]):
        ax.axhline(e, color="white", linewidth=0.6)
    ax.set_ylim(d["y_edges"][0], d["y_edges"][-1])
    ax.set_xlim(d["x_edges"][0], d["x_edges"][-1])
    if len(d["bad_steps"]):
        top = d["y_edges"][-1]
        ax.plot(d["bad_steps"], np.full(len(d["bad_steps"]), top), linestyle="none", marker="|",
                markersize=6, color=common.NONFINITE_COLOR, clip_on=False, gid="nonfinite")
    return mesh


def _layout(runs: list[Any], layers: str | None, max_layers: int) -> list[tuple[Any, str, list[tuple[str, str]]]]:
    """(run, row title, sites) per row of panels."""
    rows = []
    if len(runs) == 1:
        run = runs[0]
        every = analysis.select_names([layer.name for layer in run.layers], layers)
        norms = [layer.name for layer in run.layers if layer.kind is not None and layer.name in every]
        names = analysis.select_names(norms, None, max_layers)
        others = [n for n in every if n not in norms]
        names += analysis.select_names(others, None, max(0, max_layers - len(names))) if len(names) < max_layers else []
        for name in [n for n in every if n in names]:
            sites = _sites_of(run, name)
            if sites:
                rows.append((run, _layer_title(run, name), sites))
        if not rows:
            raise MissingDataError(f"{run.path}: no recorded layer matches {layers!r}" if layers
                                   else f"{run.path}: no recorded layer")
        return rows
    focus = common.focus_layer(runs, layers)
    if focus is None:
        raise MissingDataError("histograms: no layer matches " + (repr(layers) if layers else "in these runs"))
    looks = common.run_looks(runs)
    for run, look in zip(runs, looks):
        rows.append((run, look.label, _sites_of(run, focus)))
    return rows


def _layer_title(run: Any, name: str) -> str:
    types = {layer.name: layer.module_type for layer in run.layers}
    return f"{name or '(root)'} {types.get(name, '')}".strip()


def draw(
    runs: Any,
    fig: Figure,
    *,
    layers: str | None = None,
    steps: Any = None,
    max_layers: int = 3,
    max_steps: int = 400,
) -> Figure:
    """Draw activation histograms over training for ``runs`` into ``fig``.

    Options: ``layers`` (glob over layer names), ``steps`` (training steps
    ``"START:STOP"``), ``max_layers`` (rows for a single run), ``max_steps``
    (columns; longer runs are averaged in blocks of steps).
    """
    runs = common.as_runs(runs)
    plan = _layout(runs, layers, max_layers)
    plan_layer = common.focus_layer(runs, layers) if len(runs) > 1 else None
    panels = []
    windows: dict[int, tuple[slice, int | None]] = {}
    for run, title, sites in plan:
        if id(run) not in windows:  # read once per run: a single run's layers share its rows
            windows[id(run)] = common.divergence(run, common.step_rows(run, steps))
        rows, diverged = windows[id(run)]
        data = [(layer, role, _read(run, layer, role, rows, max_steps)) for layer, role in sites]
        panels.append((run, title, data, diverged))
    peak = max([float(np.nanmax(d["counts"])) for *_, data, _ in panels for *_, d in data if d["counts"].size]
               + [1.0])
    norm = LogNorm(vmin=1.0, vmax=max(peak, 10.0))
    looks = {id(r): lk for r, lk in zip(runs, common.run_looks(runs))}
    heights = [0.42 if data else 0.12 for _, _, data, _ in panels]
    common.fit_rows(fig, 1, row_ratio=sum(heights) + 0.12, panel_rows=0.3 + 0.85 * len(panels))
    # A thin heading row above each row of panels names its layer (or run) across both panels.
    ratios = [h for height in heights for h in (common.HEADING_RATIO, height)]
    grid = fig.add_gridspec(2 * len(panels), 2, height_ratios=ratios)
    mesh = None
    all_axes: list[Any] = []
    last_row: list[Any] = []
    last = max((i for i, p in enumerate(panels) if p[2]), default=-1)
    for i, (run, title, data, diverged) in enumerate(panels):
        color = looks[id(run)].color
        common.heading_row(fig, grid[2 * i, :], title, color=color)
        if not data:
            ax = fig.add_subplot(grid[2 * i + 1, :])
            common.no_data(ax, f"layer {plan_layer!r} not recorded in {run.label}")
            continue
        spans = [grid[2 * i + 1, :]] if len(data) == 1 else [grid[2 * i + 1, 0], grid[2 * i + 1, 1]]
        for j, (spec, (layer, role, d)) in enumerate(zip(spans, data)):
            ax = fig.add_subplot(spec, sharex=all_axes[0] if all_axes else None)
            mesh = _panel(ax, d, norm, gid=f"hist:{run.label}:{layer}:{role}")
            common.mark_nonfinite(ax, diverged, label=False)
            ax.set_title(role, loc="left", fontsize="small", color=color if j == 0 else "black")
            if j == 0:
                ax.set_ylabel("value")
            ax.tick_params(labelbottom=(i == last))
            all_axes.append(ax)
            if i == last:
                last_row.append(ax)
    for ax in last_row:
        common.step_axis(ax)
    if mesh is not None:
        cbar = fig.colorbar(mesh, ax=all_axes, pad=0.01, fraction=0.04, aspect=max(10, 10 * len(panels)))
        cbar.set_label("count in sample (log)")
    what = "activation histograms" if plan_layer is None else (
        f"activation histograms of layer {plan_layer or '(root)'}")
    common.figure_title(fig, what, runs)
    return fig
