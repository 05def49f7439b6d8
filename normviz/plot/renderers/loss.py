"""Built-in renderer ``loss``: the recorded scalars over training steps, runs overlaid.

One panel per scalar (``loss`` first, then the user's own scalars, then the
learning rate when it changes). Runs are coloured by norm kind. A run whose
scalar becomes non-finite is drawn up to that step, which is marked in red.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from normviz import analysis
from normviz.errors import MissingDataError
from normviz.plot import common

#: Scalars the recorder adds by itself that are not worth a panel by default.
HIDDEN = ("wall_time",)


def _default_scalars(runs: Sequence[Any]) -> list[str]:
    names: dict[str, None] = {}
    for run in runs:
        for name in run.scalar_names:
            if name not in HIDDEN and not name.startswith("lr/"):  # other parameter groups' lr: on request
                names[name] = None
    ordered = (["loss"] if "loss" in names else []) + sorted(n for n in names if n not in ("loss", "lr"))
    if "lr" in names and any(_varies(run, "lr") for run in runs):
        ordered.append("lr")
    return ordered


def _varies(run: Any, name: str) -> bool:
    if name not in run.scalar_names:
        return False
    values = np.asarray(run.scalar(name), dtype=np.float64)
    values = values[np.isfinite(values)]
    return bool(values.size) and bool(values.max() > values.min())


def draw(
    runs: Any,
    fig: Figure,
    *,
    steps: Any = None,
    scalars: Sequence[str] | str | None = None,
    max_points: int = 1000,
) -> Figure:
    """Draw the scalars of ``runs`` into ``fig`` (one panel per scalar).

    Options: ``steps`` (training steps ``"START:STOP"``), ``scalars`` (names or
    a comma-separated string; default: loss, the user's scalars, lr if it
    changes) and ``max_points`` (longer series become block means with a
    min/max band).
    """
    runs = common.as_runs(runs)
    names = _default_scalars(runs) if scalars is None else (
        [s.strip() for s in scalars.split(",") if s.strip()] if isinstance(scalars, str) else list(scalars)
    )
    if not names:
        raise MissingDataError(
            "loss: no scalar to draw (e.g. 'loss', 'lr') was recorded in "
            + ", ".join(str(r.path) for r in runs)
        )
    for name in names:
        if not any(name in r.scalar_names for r in runs):
            raise MissingDataError(f"loss: no run holds the scalar {name!r}; scalars: {runs[0].scalar_names}")
    window = common.parse_steps(steps)
    looks = common.run_looks(runs)
    common.fit_rows(fig, 1 + 0.55 * (len(names) - 1))
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        drawn = []
        for run, look in zip(runs, looks):
            if name not in run.scalar_names:
                continue
            x = np.asarray(run.scalar_steps, dtype=np.float64)
            y = np.asarray(run.scalar(name), dtype=np.float64)
            if window is not None:
                keep = (x >= (window.start or 0)) & (x < (np.inf if window.stop is None else window.stop))
                x, y = x[keep], y[keep]
            cut = analysis.scalar_divergence(y)
            diverged = None
            if cut is not None:
                # Drawn up to the divergence, which is marked.
                diverged = float(x[cut])
                x, y = x[: cut + 1], y[: cut + 1]
            given = ~np.isnan(y)  # a scalar given at some steps only is NaN elsewhere
            x, y = x[given], y[given]
            common.line(ax, x, y, max_points=max_points, color=look.color, linestyle=look.linestyle,
                        label=look.label, gid=f"{name}:{run.label}")
            common.mark_nonfinite(ax, diverged, label=False)
            drawn.append(y)
        ax.set_ylabel("learning rate" if name == "lr" else name.replace("_", " "))
        values = np.concatenate(drawn) if drawn else np.array([])
        if common.wants_log(values):
            ax.set_yscale("log")
    if not any(common.drawn_values(ax).size for ax in axes):
        stop = "" if window is None or window.stop is None else window.stop
        where = "" if window is None else f" between steps {window.start or 0}:{stop}"
        raise MissingDataError(f"loss: no value of {', '.join(names)} was recorded{where}")
    common.step_axis(axes[-1])
    handles, labels = common.look_handles(looks)
    if any(ax.findobj(match=lambda a: getattr(a, "get_gid", lambda: None)() == "nonfinite") for ax in axes):
        handles.append(common.nonfinite_handle())
        labels.append("non-finite")
    common.figure_legend(fig, handles, labels, title=common.legend_title(runs))
    common.figure_title(fig, "training curves", runs)
    return fig
