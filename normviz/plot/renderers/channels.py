"""Built-in renderer ``channels``: what each norm kind actually normalizes.

1. Per-channel distributions before (input) and after (output) a norm layer at
   a few steps (first, middle and last recorded by default): each channel's
   mean ± standard deviation, lighter for earlier steps. At most
   ``max_channels`` channels, evenly spaced among the stored ones (a wide layer
   stores only some channels, see ``run.channel_index``) and drawn side by side
   at equal spacing; the x ticks name the true channel numbers. The output is
   the module's output, after γ and β. On the output side the
   layer's β (black tick) and β ± |γ| (grey bar) at the last step are drawn
   behind (those the forward pass used: recorded one step earlier, when that
   step was recorded, since γ and β are recorded after the update): a norm that
   normalizes each channel over the batch (BatchNorm) or each (sample, channel)
   (InstanceNorm) puts every channel's mean at β and its spread at |γ|; norms
   whose groups cut across channels (LayerNorm, GroupNorm, RMSNorm) do not.
2. The normalization groups (the sets one mean/variance or RMS is computed
   over) at the last step: box plots of the group means and group scales of the
   input (hollow) and the output (filled), one pair per run (one run: per norm
   layer, labelled by layer and kind). The recorded output is after γ and β, so
   the kind's normalization (mean 0 / scale 1, dashed) holds only before them:
   for kinds whose groups lie within one channel (BatchNorm, InstanceNorm) the
   output group means sit at the channels' β and the group scales at their |γ|,
   drawn as black ticks beside the output box (γ, β as the forward pass used
   them); for LayerNorm, GroupNorm and RMSNorm the groups mix channels with
   different γ and β.
3. BatchNorm's batch statistics against its running statistics (the ones eval
   mode uses) for a few channels over training, when a run has BatchNorm.

Each layer's pair of panels has a heading (the layer, or the run when runs are
compared) and its own y scales: a LayerNorm's input, often a few hundredths
wide, would be flat on its output's scale. On a figure wide enough
(``paper-wide``) two pairs stand side by side.

A run that became non-finite is shown up to its last finite step. One run: up
to ``max_layers`` norm layers, evenly spread in depth from the shallowest
(``max_layers=1``: the first norm layer; the same choice every renderer's
``max_layers`` makes). Several runs: one row per run, all
on the same layer (the first norm layer they share); runs without a norm
layer are left out of rows 1 and 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normviz import analysis
from normviz.errors import MissingDataError
from normviz.plot import common
from normviz.plot.palette import registered

BN_CHANNELS = 3
#: Labelled x ticks of a channel panel.
CHANNEL_TICKS = 6


def per_channel(kind: str | None) -> bool:
    """Whether the kind's normalization groups lie within one channel (its descriptor says):
    its output group means and scales are then the channels' β and |γ|."""
    found = registered(kind)
    return found is not None and found.per_channel


def _plan(runs: list[Any], layers: str | None, max_layers: int) -> list[tuple[Any, str]]:
    if len(runs) == 1:
        norms = [layer.name for layer in runs[0].layers if layer.kind is not None]
        return [(runs[0], n) for n in analysis.select_names(analysis.select_names(norms, layers), None, max_layers)]
    name = common.focus_layer(runs, layers)
    return [(run, name) for run in runs if name is not None and any(lay.name == name for lay in run.layers)]


def _finite_rows(run: Any, rows: slice) -> slice:
    """``rows`` up to (not including) the first non-finite row, when any row is left."""
    cut, diverged = common.divergence(run, rows)
    if diverged is not None and cut.stop - 1 > cut.start:
        return slice(cut.start, cut.stop - 1)
    return cut


def _rows_at(run: Any, rows: slice, at: Any) -> list[int]:
    if at is None:
        return [rows.start + i for i in analysis.pick_rows(rows.stop - rows.start, 3)]
    wanted = [int(s) for s in (at.split(",") if isinstance(at, str) else at)]
    steps = np.asarray(run.steps[rows])
    return sorted({rows.start + int(np.argmin(np.abs(steps - w))) for w in wanted})


def _channel_panel(ax: Any, run: Any, layer: str, role: str, picks: list[int], color: str, max_channels: int) -> None:
    # Evenly spaced positions among the stored channels, drawn at equal spacing
    # (slot k at x = k); the ticks name the true channel numbers.
    index = np.asarray(run.channel_index(layer, role))
    keep = analysis.pick_rows(len(index), max_channels)
    true = [int(index[k]) for k in keep]
    ids = np.arange(len(keep), dtype=np.float64)
    spacing = 1.0
    colors = common.shades(color, len(picks), lightest=0.65)
    width = 0.6 * spacing / max(1, len(picks))
    for k, (row, shade) in enumerate(zip(picks, colors)):
        mean = run.stat("channel_mean", layer, role, steps=slice(row, row + 1))[0][keep]
        std = np.sqrt(np.clip(run.stat("channel_var", layer, role, steps=slice(row, row + 1))[0][keep], 0, None))
        x = ids + (k - (len(picks) - 1) / 2) * width
        ax.errorbar(x, mean, yerr=std, fmt="o", markersize=2, elinewidth=0.6, color=shade, capsize=0,
                    gid=f"channels:{run.label}:{layer}:{role}:{int(run.steps[row])}")
    if role == "output":
        used = analysis.forward_row(run.steps, picks[-1])  # γ, β are recorded after the update
        last = slice(used, used + 1)
        try:
            gamma = np.abs(common.module_channels(run, "weight", layer, role, steps=last)[0][keep])
        except MissingDataError:
            gamma = None
        try:
            beta = common.module_channels(run, "bias", layer, role, steps=last)[0][keep]
        except MissingDataError:
            beta = np.zeros(len(keep))
        if gamma is not None:
            ax.bar(ids, 2 * gamma, bottom=beta - gamma, width=0.85 * spacing, color="0.88", zorder=0, gid="gamma")
            ax.plot(ids, beta, linestyle="none", marker="_", markersize=5, color="black", zorder=1, gid="beta")
    ax.set_xlim(ids[0] - spacing, ids[-1] + spacing)
    ticks = analysis.pick_rows(len(keep), CHANNEL_TICKS)
    ax.set_xticks([float(t) for t in ticks], [str(true[t]) for t in ticks])
    ax.set_xticks(ids, minor=True)
    total = next((s.channels for s in run.sites if s.layer == layer and s.role == role), len(index))
    ax.set_xlabel("channel" if len(keep) == total else f"channel ({len(keep)} of {total})")


def _group_label(run: Any, layer: str, look: Any, by_layer: bool) -> str:
    if not by_layer:
        return str(look.label)
    kind = {lay.name: lay.kind for lay in run.layers}.get(layer)
    return f"{layer or '(root)'}\n{common.kind_name(kind)}"


def _affine_reference(ax: Any, run: Any, layer: str, stat: str, row: int, x: float, label: str) -> list[float]:
    """β (group means) or |γ| (group scales) of every channel, as ticks at ``x``.

    Only for kinds whose groups lie within one channel; γ, β as the forward pass
    of ``row`` used them (recorded one row earlier, after that update).
    """
    if not per_channel({lay.name: lay.kind for lay in run.layers}.get(layer)):
        return []
    used = analysis.forward_row(run.steps, row)
    name = "bias" if stat == "group_mean" else "weight"
    try:
        values = np.asarray(run.module_stat(name, layer, steps=slice(used, used + 1)), dtype=np.float64)[0]
    except MissingDataError:
        if name == "weight":
            return []
        values = np.zeros(1)  # no β: the output is centred at 0
    values = np.abs(values) if name == "weight" else values
    values = values[np.isfinite(values)]
    if not values.size:
        return []
    ax.plot(np.full(values.size, x), values, linestyle="none", marker="_", markersize=5, markeredgewidth=0.6,
            color="black", zorder=3, gid=f"reference:{stat}:{label}")
    return [float(v) for v in values]


def _not_recorded(exc: MissingDataError, stat: str) -> bool:
    """The run lacks *stat* altogether (as opposed to this site lacking it)."""
    return exc.run_lacks(stat)


def _has_groups(run: Any, layer: str, rows: Sequence[int]) -> bool:
    """Whether *layer* recorded a finite group summary (input or output) at any of *rows*
    (a run that went non-finite later still gets its box, and says so)."""
    for role in ("input", "output"):
        try:
            if any(np.isfinite(run.stat("group_mean", layer, role, steps=slice(r, r + 1))).any() for r in rows):
                return True
        except MissingDataError as exc:
            if _not_recorded(exc, "group_mean"):
                raise
            continue
    return False


def _group_boxes(ax: Any, runs: list[tuple[Any, str, Any]], stat: str, row_of: dict[int, int],
                 by_layer: bool) -> list[float]:
    """One input/output box pair per entry, labelled by run, or by layer and kind (``by_layer``)."""
    drawn: list[float] = []
    labels = [_group_label(run, layer, look, by_layer) for run, layer, look in runs]
    for i, (run, layer, look) in enumerate(runs):
        for role, dx, filled in (("input", -0.2, False), ("output", 0.2, True)):
            try:
                q = run.stat(stat, layer, role, steps=slice(row_of[id(run)], row_of[id(run)] + 1))[0]
            except MissingDataError as exc:
                if _not_recorded(exc, stat):
                    raise
                continue
            if not np.all(np.isfinite(q)):
                continue
            p0, p5, p25, p50, p75, p95, p100 = (q[j] for j in analysis.level_columns(
                run.layout.group_levels, (0, 5, 25, 50, 75, 95, 100)))
            ax.bxp([{"whislo": p5, "q1": p25, "med": p50, "q3": p75, "whishi": p95, "fliers": [p0, p100]}],
                   positions=[i + dx], widths=0.32, patch_artist=True, manage_ticks=False,
                   boxprops={"facecolor": look.color if filled else "white", "edgecolor": look.color,
                             "linewidth": 0.7},
                   medianprops={"color": "white" if filled else look.color, "linewidth": 0.9},
                   whiskerprops={"color": look.color, "linewidth": 0.7}, capprops={"color": look.color},
                   flierprops={"marker": ".", "markersize": 2, "markeredgecolor": look.color})
            drawn += [float(v) for v in q]
            if role == "output":
                drawn += _affine_reference(ax, run, layer, stat, row_of[id(run)], i + 0.42, labels[i])
    # Slanted when the longest line of a label is wider than its slot (long layer names).
    fig = ax.get_figure()
    slot = ax.get_position().width * fig.get_figwidth() * 72.0 * 0.8 / max(1, len(runs))
    size = ax.xaxis.get_ticklabels()[0].get_fontsize() if ax.xaxis.get_ticklabels() else 7.0
    widest = max(common.text_width(line, size) for label in labels for line in label.split("\n"))
    slant = widest > 0.9 * slot
    # Slanted labels stand apart by slot · sin(angle): enough for their lines and a gap.
    lines = max(label.count("\n") + 1 for label in labels)
    angle = float(np.degrees(np.arcsin(min(1.0, (1.25 * lines * size + 2.0) / max(slot, 1e-9))))) if slant else 0.0
    angle = min(90.0, max(30.0, np.ceil(angle / 5) * 5)) if slant else 0.0
    ax.set_xticks(range(len(runs)), labels, rotation=angle, ha="right" if slant else "center",
                  rotation_mode="anchor" if slant else "default")
    return drawn


def _bn_panel(axes: list[Any], run: Any, layer: str, rows: slice, color: str, max_points: int) -> None:
    x = np.asarray(run.steps[rows], dtype=np.float64)
    index = run.channel_index(layer, "input")
    picks = analysis.pick_rows(len(index), BN_CHANNELS)
    colors = common.shades(color, len(picks), lightest=0.6)
    batch_var = None
    for ax, batch_stat, running in zip(axes, ("channel_mean", "channel_var"), ("running_mean", "running_var")):
        batch = run.stat(batch_stat, layer, "input", steps=rows)
        if batch_stat == "channel_var":
            batch_var = batch
        run_stat = common.module_channels(run, running, layer, "input", steps=rows)
        for c, shade in zip(picks, colors):
            # Long runs: the batch values become block means with their min/max band.
            env = analysis.envelope(x, batch[:, c], max_points)
            ax.plot(env.x, env.y, linestyle="none", marker=".", markersize=2.5, color=shade,
                    gid=f"batch:{batch_stat}:{int(index[c])}")
            if env.lo is not None and env.hi is not None:
                ax.fill_between(env.x, env.lo, env.hi, color=shade, alpha=0.2, linewidth=0)
            common.line(ax, x, run_stat[:, c], max_points=max_points, color=shade, linewidth=1.0,
                        gid=f"running:{running}:{int(index[c])}")
        common.step_axis(ax)
    axes[0].set_title(f"BN {layer}: channel mean", loc="left", fontsize="small")
    axes[1].set_title("channel variance", loc="left", fontsize="small")
    if common.wants_log(batch_var, 10.0):
        axes[1].set_yscale("log")


#: Two pairs of panels go side by side when a panel is at least this many font sizes wide
#: (its x label "channel (24 of 512)" must fit): on ``paper-wide``, not on the narrower
#: ``paper`` nor on the larger-type ``slides`` and ``notebook``.
WIDE_PANEL_FONTS = 15.0
#: Height of a row of each kind of panel pair, as a fraction of the paper style's width.
ROW_HEIGHTS = {"channels": 0.42, "groups": 0.55, "bn": 0.5}


def _pack(pairs: list[tuple[str, Any]], per_row: int) -> list[list[tuple[str, Any]]]:
    """Pairs of panels in rows of ``per_row``; the per-channel rows first, the summaries on rows of their own."""
    first = [p for p in pairs if p[0] == "channels"]
    rest = [p for p in pairs if p[0] != "channels"]
    return [chunk[i:i + per_row] for chunk in (first, rest) for i in range(0, len(chunk), per_row)]


def _layer_pair(axes: list[Any], run: Any, layer: str, look: Any, picks: list[int], max_channels: int) -> None:
    """A norm layer's channels before (input) and after (output) it, each on its own y scale:
    a LayerNorm's input std of 0.02 would vanish on its output's scale."""
    for ax, role in zip(axes, ("input", "output")):
        _channel_panel(ax, run, layer, role, picks, look.color, max_channels)
    axes[0].set_title("input", loc="left", fontsize="small", color=look.color)
    axes[1].set_title("output (after γ/β)", loc="right", fontsize="small")
    axes[0].set_ylabel("mean ± std")


def _group_pair(axes: list[Any], groups: list[tuple[Any, str, Any]], last: dict[int, int], by_layer: bool) -> None:
    for ax, stat, ref, title in ((axes[0], "group_mean", 0.0, "group means"),
                                 (axes[1], "group_scale", 1.0, "group scales")):
        # 0 / 1: what the kind's normalization holds fixed, before γ and β.
        ax.axhline(ref, color="0.6", linewidth=0.6, linestyle="--", zorder=0)
        values = _group_boxes(ax, groups, stat, last, by_layer=by_layer)
        if not values:
            ax.text(0.5, 0.5, "no finite values", transform=ax.transAxes, ha="center", va="center",
                    fontsize="small", color="0.4")
        ax.set_title(f"{title} (last step)", loc="left", fontsize="small")
        if stat == "group_scale" and common.wants_log(values, 30.0):
            ax.set_yscale("log")


def draw(
    runs: Any,
    fig: Figure,
    *,
    layers: str | None = None,
    steps: Any = None,
    max_layers: int = 2,
    at: Any = None,
    max_channels: int = 24,
    max_points: int = 1000,
) -> Figure:
    """Draw per-channel and per-group distributions of norm layers into ``fig``.

    Options: ``layers`` (glob over norm layer names), ``steps`` (training steps
    ``"START:STOP"``), ``max_layers`` (norm layers of a single run), ``at``
    (training steps to show, e.g. ``"0,500,1000"``; default first, middle and
    last), ``max_channels`` (evenly spaced channels per panel), ``max_points``
    (longer BatchNorm series become block means with a min/max band).
    """
    runs = common.as_runs(runs)
    plan = _plan(runs, layers, max_layers)
    if not plan:
        raise MissingDataError("channels: no norm layer" + (f" matches {layers!r}" if layers else "")
                               + " in " + ", ".join(r.label for r in runs))
    looks = {id(r): lk for r, lk in zip(runs, common.run_looks(runs))}
    # Once per run: a single run's layers share its rows (and where it diverged).
    runs_planned = list({id(run): run for run, _ in plan}.values())
    windows = {id(run): _finite_rows(run, common.step_rows(run, steps)) for run in runs_planned}
    picks = {id(run): _rows_at(run, windows[id(run)], at) for run in runs_planned}
    bn = next(((run, layer) for run, layer in plan if {lay.name: lay.kind for lay in run.layers}[layer] == "batch"
               and "running_mean" in run.statistics.get("module", [])), None)
    # Layers whose kind normalizes no group (DyT, say) record empty summaries: no box for them.
    groups = [(run, layer, looks[id(run)]) for run, layer in {(id(r), lay): (r, lay) for r, lay in plan}.values()
              if any(s.layer == layer and s.kind not in (None, "none") for s in run.sites)
              and _has_groups(run, layer, picks[id(run)])]
    # Pairs of panels (a layer's input and output; the group summaries; BatchNorm's
    # statistics), one pair per row, or two side by side on a wide figure.
    pairs: list[tuple[str, Any]] = [("channels", item) for item in plan]
    pairs += [("groups", None)] if groups else []
    pairs += [("bn", bn)] if bn else []
    per_row = 2 if fig.get_figwidth() * 72.0 / 4 >= WIDE_PANEL_FONTS * matplotlib.rcParams["font.size"] else 1
    rows = _pack(pairs, per_row)
    heights = [max(ROW_HEIGHTS[kind] for kind, _ in row) for row in rows]
    common.fit_rows(fig, 1, row_ratio=sum(heights) + 0.15, panel_rows=len(rows))
    # A thin heading row above each row of panels (the layer, or the run, of each pair).
    ratios = [h for height in heights for h in (common.HEADING_RATIO, height)]
    grid = fig.add_gridspec(2 * len(rows), 2 * per_row, height_ratios=ratios)
    for r, row in enumerate(rows):
        for c, (kind, item) in enumerate(row):
            axes = [fig.add_subplot(grid[2 * r + 1, 2 * c]), fig.add_subplot(grid[2 * r + 1, 2 * c + 1])]
            if kind == "channels":
                run, layer = item
                look = looks[id(run)]
                module_type = {lay.name: lay.module_type for lay in run.layers}[layer]
                head = look.label if len(runs) > 1 else f"{layer or '(root)'} {module_type}"
                common.heading_row(fig, grid[2 * r, 2 * c:2 * c + 2], head, color=look.color)
                _layer_pair(axes, run, layer, look, picks[id(run)], max_channels)
            elif kind == "groups":
                _group_pair(axes, groups, {id(run): picks[id(run)][-1] for run, _, _ in groups}, len(runs) == 1)
            else:
                run, layer = item
                _bn_panel(axes, run, layer, windows[id(run)], looks[id(run)].color, max_points)
    handles = [Line2D([], [], linestyle="none", marker="o", markersize=3, color=c)
               for c in common.shades("#555555", 3, lightest=0.65)]
    labels = ["first step", "middle", "last"]
    handles += [Line2D([], [], color="0.88", linewidth=4), Line2D([], [], color="black", marker="_",
                                                                   linestyle="none")]
    labels += ["β ± |γ|", "β"]
    if groups:
        handles += [Line2D([], [], marker="s", linestyle="none", markerfacecolor="white", markeredgecolor="0.3"),
                    Line2D([], [], marker="s", linestyle="none", color="0.3")]
        labels += ["groups in", "groups out (after γ/β)"]
        handles += [Line2D([], [], color="0.6", linewidth=0.6, linestyle="--")]
        labels += ["0 / 1 (before γ/β)"]
        if any(per_channel({lay.name: lay.kind for lay in run.layers}.get(layer)) for run, layer, _ in groups):
            handles += [Line2D([], [], color="black", marker="_", linestyle="none", markersize=6)]
            labels += ["expected: β / |γ|"]
    if bn:
        handles += [Line2D([], [], marker=".", linestyle="none", color="0.3"), Line2D([], [], color="0.3")]
        labels += ["batch", "running"]
    common.figure_legend(fig, handles, labels, ncols=3)
    what = "channels and groups" if len(runs) == 1 else f"channels and groups of layer {plan[0][1] or '(root)'}"
    common.figure_title(fig, what, runs)
    return fig
