"""Renderer ``dyt``: DyT's α and saturated fraction over training, beside the norm output scale.

Three panels sharing the training-step axis:

1. **α**: the scalar each DyT layer multiplies its input by (statistic
   ``dyt_alpha``), one line per DyT layer, lighter for shallower layers.
2. **saturated fraction**: the share of each DyT layer's input values with
   ``|α·x| > 2`` (statistic ``dyt_saturation``): where ``tanh`` is flat and
   passes almost no gradient. DyT behaves like LayerNorm's S-curve only if most
   values stay in the linear part and a few extremes are squashed.
3. **output std**: the std of every norm layer's output (the built-in ``std``
   statistic), for the DyT runs and for every other run given alongside, e.g.
   the same model with LayerNorm, which holds its output scale at about |γ|
   whatever its input does; DyT's output scale follows its input times α.

Runs are coloured by norm kind (one colour per kind, from
:func:`normviz.plot.palette.kind_color`), or by label when they share a kind;
layers within a run are shades of the run's colour. Runs without DyT layers
appear only in the third panel; with no DyT statistic in any run the renderer
raises :class:`~normviz.errors.MissingDataError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from normviz import analysis
from normviz.datatypes import Renderer
from normviz.errors import MissingDataError
from normviz.plot import common
from normviz_dyt.statistics import KIND, SATURATION_THRESHOLD

__all__ = ["RENDERER", "REQUIRED", "draw", "dyt_layers", "norm_layers"]

#: The statistics the renderer cannot draw without.
REQUIRED: tuple[str, ...] = ("dyt_alpha", "dyt_saturation")


def _kind_name(kind: str | None) -> str:
    return "DyT" if kind == KIND else common.kind_name(kind)


def _holds(run: Any, name: str) -> bool:
    return name in run.statistics.get("act", [])


def dyt_layers(run: Any, layers: str | None = None, limit: int | None = None) -> list[str]:
    """The DyT layers of ``run`` matching the ``layers`` glob, thinned to ``limit``."""
    return analysis.select_names([layer.name for layer in run.layers if layer.kind == KIND], layers, limit)


def norm_layers(run: Any, layers: str | None = None, limit: int | None = None) -> list[str]:
    """Every norm layer (or norm slot of kind ``none``) of ``run`` matching ``layers``."""
    return analysis.select_names([layer.name for layer in run.layers if layer.kind is not None], layers, limit)


def _series(run: Any, name: str, layer: str, role: str, rows: slice) -> np.ndarray | None:
    try:
        return np.asarray(run.stat(name, layer, role, steps=rows), dtype=np.float64)
    except MissingDataError:
        return None


def _panel(
    ax: Any,
    runs: Sequence[Any],
    looks: Sequence[Any],
    windows: Sequence[tuple[slice, int | None]],
    pick: Any,
    stat: str,
    role: str,
    max_points: int,
) -> int:
    """One line per (run, layer) that ``pick(run)`` names; returns how many were drawn."""
    drawn = 0
    for run, look, (rows, diverged) in zip(runs, looks, windows):
        if not _holds(run, stat):
            continue
        names = pick(run)
        x = np.asarray(run.steps[rows], dtype=np.float64)
        lines = 0
        for color, layer in zip(common.shades(look.color, len(names)), names):
            y = _series(run, stat, layer, role, rows)
            if y is None:
                continue
            # A lone recorded step is a point: give it the kind's marker so it shows.
            common.line(ax, x, y, max_points=max_points, color=color, linestyle=look.linestyle,
                        marker=look.marker if len(x) == 1 else None, gid=f"{stat}:{run.label}:{layer}")
            lines += 1
        if lines:
            common.mark_nonfinite(ax, diverged, label=False)
        drawn += lines
    return drawn


def draw(
    runs: Any,
    fig: Figure,
    *,
    layers: str | None = None,
    steps: Any = None,
    max_layers: int = 6,
    max_points: int = 1000,
) -> Figure:
    """Draw DyT's α, its saturated fraction and the norm layers' output std into ``fig``.

    Options: ``layers`` (glob over layer names), ``steps`` (training steps
    ``"START:STOP"``), ``max_layers`` (layers per run and panel, evenly spread
    in depth), ``max_points`` (longer series become block means with a
    min/max band).

    Raises
    ------
    MissingDataError
        When no run holds ``dyt_alpha`` or ``dyt_saturation`` (no DyT layer was
        recorded with this plugin installed), or no DyT layer matches ``layers``.
    """
    runs = common.as_runs(runs)
    for name in REQUIRED:
        if not any(_holds(run, name) for run in runs):
            raise MissingDataError(
                f"dyt: no run holds the DyT statistic {name!r} (record a model with normviz_dyt.DyT layers "
                "while normviz-dyt is installed); runs: " + ", ".join(str(run.path) for run in runs)
            )
    if not any(dyt_layers(run, layers) for run in runs if _holds(run, REQUIRED[0])):
        raise MissingDataError(f"dyt: no DyT layer matches {layers!r}")
    looks = common.run_looks(runs)
    windows = [common.divergence(run, common.step_rows(run, steps)) for run in runs]

    common.fit_rows(fig, 1, row_ratio=1.25)
    axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1.0, 1.0, 1.15]})
    ax_alpha, ax_sat, ax_std = axes

    def dyt_pick(run: Any) -> list[str]:
        return dyt_layers(run, layers, max_layers)

    def norm_pick(run: Any) -> list[str]:
        return norm_layers(run, layers, max_layers)

    _panel(ax_alpha, runs, looks, windows, dyt_pick, "dyt_alpha", "output", max_points)
    ax_alpha.set_ylabel("α")
    ax_alpha.set_title("DyT: α, the input scale inside tanh(αx)", loc="left", fontsize="small")

    _panel(ax_sat, runs, looks, windows, dyt_pick, "dyt_saturation", "input", max_points)
    ax_sat.set_ylabel("saturated\nfraction")
    ax_sat.set_title(f"DyT: share of inputs with |αx| > {SATURATION_THRESHOLD:g} (tanh flat)", loc="left",
                     fontsize="small")
    ax_sat.set_ylim(bottom=0.0)

    n_std = _panel(ax_std, runs, looks, windows, norm_pick, "std", "output", max_points)
    if n_std:
        kinds = common.sort_runs(runs)
        names = " vs ".join(dict.fromkeys(_kind_name(run.norm_kind) for run in kinds))
        ax_std.set_title(f"norm layers' output std: {names}", loc="left", fontsize="small")
        ax_std.set_ylabel("output std")
        if common.wants_log(common.drawn_values(ax_std)):
            ax_std.set_yscale("log")
    else:
        common.no_data(ax_std, "output std of the norm layers not recorded")
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
    common.step_axis(ax_std)
    shown = [int(step) for run, (rows, _) in zip(runs, windows) for step in run.steps[rows]]
    if shown and min(shown) == max(shown):
        # One recorded step: a unit-wide axis with that step as its only tick.
        ax_std.set_xlim(shown[0] - 1, shown[0] + 1)
        ax_std.set_xticks([shown[0]])

    handles, labels = common.look_handles(looks)
    if any(diverged is not None for _, diverged in windows):
        handles.append(common.nonfinite_handle())
        labels.append("non-finite")
    several = any(len(norm_layers(run, layers, max_layers)) > 1 for run in runs)
    title = common.legend_title(runs)
    if several:
        title = f"{title}; lighter = shallower layer" if title else "lighter = shallower layer"
    common.figure_legend(fig, handles, labels, title=title)
    common.figure_title(fig, "Dynamic Tanh", runs)
    return fig


RENDERER = Renderer(
    name="dyt",
    draw=draw,
    description="DyT: alpha and the saturated fraction per DyT layer over training, beside the norm layers' output std",
    requires=frozenset(REQUIRED),
    options=("layers", "steps", "max_layers", "max_points"),
)
