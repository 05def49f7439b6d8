"""Built-in renderer ``gradient-flow``: gradients across depth over training.

- One heatmap per run: layers (rows, input at the top) × recorded steps, colour
  = the gradient L2 norm of the layer's parameters on a log scale shared by all
  runs, so vanishing or exploding gradients show as a colour gradient down the
  network.
- Per-layer lines of mean |grad| (solid) and max |grad| (dotted) over time: the
  familiar "plot_grad_flow" view, followed through training.
- The update-to-weight ratio ‖Δw‖/‖w‖ of each optimizer step, with the usual
  1e-3 rule of thumb marked.

Lines of one run share its kind's colour, lighter for shallower layers. Several
runs: |grad| across depth instead (the median over steps per layer; mean |grad|
as a line in the run's style, max |grad| as hollow markers) and the update ratio's
median over layers. A run that became non-finite is drawn up to that step, marked
in red.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normviz import analysis
from normviz.errors import MissingDataError
from normviz.plot import common

#: Update-to-weight ratio often quoted as healthy for SGD-like training.
RATIO_REFERENCE = 1e-3
#: Heatmap colours; cells with no gradient (zero, or after a divergence) are light grey.
CMAP = colormaps["viridis"].with_extremes(bad="0.85")


def _read(run: Any, steps: Any, layers: Any, max_steps: int) -> dict[str, Any]:
    rows = common.step_rows(run, steps)
    names, gnorm = run.grad("grad_norm", steps=rows)  # also what the divergence is checked on: read once
    rows, diverged = common.divergence(run, rows, grad_norm=gnorm)
    gnorm = gnorm[: rows.stop - rows.start]
    if not names:
        raise MissingDataError(f"{run.path}: no layer with parameters, so no gradient statistics (grad_norm)")
    chosen = analysis.select_names(names, layers)
    if not chosen:
        raise MissingDataError(f"{run.path}: no layer with gradients matches {layers!r}; layers: {names}")
    idx = [names.index(n) for n in chosen]
    x = np.asarray(run.steps[rows], dtype=np.float64)
    out: dict[str, Any] = {"names": chosen, "steps": x, "diverged": diverged}
    out["heat_steps"], heat = analysis.block_mean(x, np.asarray(gnorm)[:, idx], max_steps)
    out["grad_norm"] = analysis.flow_matrix(heat)
    for stat in ("grad_abs_mean", "grad_abs_max", "update_ratio"):
        out[stat] = np.asarray(run.grad(stat, steps=rows)[1])[:, idx]
    types = {layer.name: layer.module_type for layer in run.layers}
    out["types"] = [types.get(n, "") for n in chosen]
    return out


def _over_time(ax_g: Any, ax_r: Any, run: Any, d: dict[str, Any], look: Any, max_layers: int,
               max_points: int) -> tuple[list[Line2D], list[str]]:
    """One run: per-layer lines over time (mean and max |grad|, update ratio)."""
    handles, labels = [], []
    for name, color in common.layer_shades(d["names"], look.color, max_layers):
        j = d["names"].index(name)
        tag = f"{run.label}:{name}"
        common.line(ax_g, d["steps"], d["grad_abs_mean"][:, j], max_points=max_points, color=color,
                    gid=f"grad_abs_mean:{tag}")
        common.line(ax_g, d["steps"], d["grad_abs_max"][:, j], max_points=max_points, color=color,
                    linestyle=":", linewidth=0.8, gid=f"grad_abs_max:{tag}")
        common.line(ax_r, d["steps"], d["update_ratio"][:, j], max_points=max_points, color=color,
                    gid=f"update_ratio:{tag}")
        handles.append(Line2D([], [], color=color))
        labels.append(f"{name or '(root)'} {d['types'][j]}")
    ax_g.tick_params(labelbottom=False)
    ax_g.set_title("mean |grad| (solid), max |grad| (dotted)", loc="left", fontsize="small")
    return handles, labels


def _depth_profile(ax_g: Any, ax_r: Any, runs: list[Any], data: list[dict[str, Any]], looks: list[Any],
                   max_points: int) -> None:
    """Several runs: |grad| across depth (median over steps), and the median update ratio over time."""
    order: list[str] = []
    for d in data:
        order += [n for n in d["names"] if n not in order]
    pos = {name: i for i, name in enumerate(order)}
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns after a divergence
        for run, d, look in zip(runs, data, looks):
            x = [pos[n] for n in d["names"]]
            mean = np.nanmedian(np.where(np.isfinite(d["grad_abs_mean"]), d["grad_abs_mean"], np.nan), axis=0)
            peak = np.nanmedian(np.where(np.isfinite(d["grad_abs_max"]), d["grad_abs_max"], np.nan), axis=0)
            ax_g.plot(x, mean, color=look.color, linestyle=look.linestyle, marker=look.marker,
                      gid=f"grad_abs_mean:{run.label}")
            # Hollow markers alone: a dotted line would look like a kind drawn dotted (GroupNorm).
            ax_g.plot(x, peak, color=look.color, linestyle="none", marker=look.marker,
                      fillstyle="none", gid=f"grad_abs_max:{run.label}")
            ratio = np.where(np.isfinite(d["update_ratio"]), d["update_ratio"], np.nan)
            common.line(ax_r, d["steps"], np.nanmedian(ratio, axis=1) if ratio.shape[1] else ratio[:, 0],
                        max_points=max_points, color=look.color, linestyle=look.linestyle,
                        gid=f"update_ratio:{run.label}")
    picks = analysis.pick_rows(len(order), 6)
    ax_g.set_xticks(picks, [order[i] or "(root)" for i in picks], rotation=30, ha="right", fontsize="x-small")
    ax_g.set_xlabel("layer (input → output)")
    ax_g.set_title("median |grad| per layer (hollow: max)", loc="left", fontsize="small")


def draw(
    runs: Any,
    fig: Figure,
    *,
    layers: str | None = None,
    steps: Any = None,
    max_layers: int = 4,
    max_steps: int = 400,
    max_points: int = 1000,
) -> Figure:
    """Draw the gradient-flow figure of ``runs`` into ``fig``.

    Options: ``layers`` (glob over layer names), ``steps`` (training steps
    ``"START:STOP"``), ``max_layers`` (lines per run for a single run, evenly
    spaced in depth; heatmaps show every selected layer), ``max_steps``
    (heatmap columns; longer runs are averaged in blocks), ``max_points``.
    Several runs: the line panels become a depth profile of |grad| per run
    and the median update ratio over layers per run.
    """
    runs = common.as_runs(runs)
    data = [_read(run, steps, layers, max_steps) for run in runs]
    looks = common.run_looks(runs)
    single = len(runs) == 1
    heat_h = [min(0.5, 0.14 + 0.03 * len(d["names"])) for d in data]
    ratios = heat_h + [0.5, 0.45]
    # A heatmap needs room for its title and a few layer names; the two line panels, full rows.
    common.fit_rows(fig, 1, row_ratio=sum(ratios) + 0.1, panel_rows=2.3 + 0.5 * len(data))
    grid = fig.add_gridspec(len(ratios), 1, height_ratios=ratios)
    vmin, vmax = analysis.log_limits(*(d["grad_norm"] for d in data))
    norm = LogNorm(vmin=vmin, vmax=vmax)
    heat_axes: list[Any] = []
    mesh = None
    for i, (run, d, look) in enumerate(zip(runs, data, looks)):
        ax = fig.add_subplot(grid[i, 0], sharex=heat_axes[0] if heat_axes else None)
        x_edges = analysis.edges_from_centers(d["heat_steps"])
        y_edges = np.arange(len(d["names"]) + 1, dtype=np.float64)
        mesh = ax.pcolormesh(x_edges, y_edges, d["grad_norm"], norm=norm, cmap=CMAP, rasterized=True,
                             gid=f"grad_norm:{run.label}")
        ax.set_ylim(len(d["names"]), 0)
        picks = analysis.pick_rows(len(d["names"]), 6)
        ax.set_yticks([p + 0.5 for p in picks], [d["names"][p] or "(root)" for p in picks])
        ax.set_title(f"{look.label}: per-layer gradient norm" if not single else "gradient norm per layer",
                     loc="left", color=look.color, fontsize="small")
        common.mark_nonfinite(ax, d["diverged"], label=False)
        ax.tick_params(labelbottom=(i == len(runs) - 1 and not single))
        heat_axes.append(ax)
    if not single:
        common.step_axis(heat_axes[-1])
    assert mesh is not None  # one heatmap per run, and there is a run
    cbar = fig.colorbar(mesh, ax=heat_axes, pad=0.01, fraction=0.04, aspect=max(8, 8 * len(heat_axes)))
    cbar.set_label(r"$\|\nabla W\|_2$")
    ax_g = fig.add_subplot(grid[-2, 0])
    ax_r = fig.add_subplot(grid[-1, 0], sharex=heat_axes[0] if single else None)
    if single:
        ax_g.sharex(heat_axes[0])
    title: str | None
    if single:
        handles, labels = _over_time(ax_g, ax_r, runs[0], data[0], looks[0], max_layers, max_points)
        title = "layer (lighter = shallower)"
    else:
        _depth_profile(ax_g, ax_r, runs, data, looks, max_points)
        handles, labels = common.look_handles(looks)
        title = common.legend_title(runs)
    for d in data:
        common.mark_nonfinite(ax_r, d["diverged"], label=False)
        if single:
            common.mark_nonfinite(ax_g, d["diverged"], label=False)
    for ax in (ax_g, ax_r):
        if common.positive(common.drawn_values(ax)):
            ax.set_yscale("log")
    ax_r.axhline(RATIO_REFERENCE, color="0.5", linewidth=0.6, linestyle="--", zorder=0)
    ax_g.set_ylabel("|grad|")
    ax_r.set_ylabel(r"$\|\Delta W\| / \|W\|$")
    ratio_title = "update-to-weight ratio" + ("" if single else ", median over layers")
    ax_r.set_title(ratio_title, loc="left", fontsize="small")
    common.step_axis(ax_r)
    if any(d["diverged"] is not None for d in data):
        handles = [*handles, common.nonfinite_handle()]
        labels = [*labels, "non-finite"]
    common.figure_legend(fig, handles, labels, title=title)
    common.figure_title(fig, "gradient flow", runs)
    _fit_layer_ticks(fig, heat_axes, data)  # runs the layout, which the titles reuse
    common.wrap_titles_to_panels(fig, [(ax_r, ratio_title, ""), (ax_g, ax_g.get_title(loc="left"), "")],
                                 layout=False)
    return fig


def layer_tick_rows(n: int, panel_pt: float, label_pt: float, limit: int = 6) -> list[int]:
    """Rows (of ``n``) to label on a heatmap ``panel_pt`` points high.

    Labels at least ``1.3 × label_pt`` apart, evenly spaced from the first row,
    at most ``limit``; always the first row.
    """
    if n <= 0:
        return []
    row_pt = panel_pt / n
    step = max(1, int(np.ceil(1.3 * label_pt / max(row_pt, 1e-9))), int(np.ceil((n - 1) / max(limit - 1, 1))))
    return list(range(0, n, step))


def _fit_layer_ticks(fig: Figure, heat_axes: list[Any], data: list[dict[str, Any]]) -> None:
    """Label only as many heatmap rows as fit each panel's height (after layout)."""
    from matplotlib.font_manager import FontProperties

    engine = fig.get_layout_engine()
    if engine is not None:
        engine.execute(fig)
    height_pt = fig.get_figheight() * 72.0
    for ax, d in zip(heat_axes, data):
        labels = ax.get_yticklabels()
        size = labels[0].get_fontsize() if labels else FontProperties(size="medium").get_size_in_points()
        rows = layer_tick_rows(len(d["names"]), ax.get_position().height * height_pt, size)
        ax.set_yticks([p + 0.5 for p in rows], [d["names"][p] or "(root)" for p in rows])
