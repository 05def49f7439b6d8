"""What renderers draw on a panel, and what they read back from it.

:func:`line` draws a series (thinned to a min/max envelope when long),
:func:`mark_nonfinite` the step where a run became non-finite, :func:`no_data` an
empty panel that says why; :func:`drawn_values`, :func:`positive` and
:func:`wants_log` tell whether a panel's values call for a log axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from normviz import analysis
from normviz.plot.looks import NONFINITE_COLOR

__all__ = [
    "drawn_values",
    "line",
    "mark_nonfinite",
    "no_data",
    "positive",
    "step_axis",
    "wants_log",
]


def mark_nonfinite(ax: Axes, step: float | None, *, label: bool = True) -> None:
    """Mark the step where a run became non-finite with a red vertical line."""
    if step is None:
        return
    ax.axvline(
        step, color=NONFINITE_COLOR, linewidth=0.8, linestyle=(0, (2, 1)), zorder=5,
        label="non-finite" if label else None, gid="nonfinite",
    )


def no_data(ax: Axes, text: str) -> None:
    """An empty panel saying why it is empty."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize="small", color="0.4", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def line(
    ax: Axes,
    x: Any,
    y: Any,
    *,
    max_points: int = 1000,
    color: str,
    envelope_alpha: float = 0.25,
    **kwargs: Any,
) -> Line2D:
    """Plot ``y`` against ``x``; above ``max_points`` points, block means plus a min/max band."""
    env = analysis.envelope(x, y, max_points)
    (artist,) = ax.plot(env.x, env.y, color=color, **kwargs)
    if env.lo is not None and env.hi is not None:
        ax.fill_between(env.x, env.lo, env.hi, color=color, alpha=envelope_alpha, linewidth=0)
    return artist


def positive(values: Any) -> bool:
    """True when every finite value is > 0 (a log axis can show them)."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    return bool(finite.size) and bool(np.all(finite > 0))


def wants_log(values: Any, ratio: float = 30.0) -> bool:
    """True when the finite values are positive and span more than ``ratio``."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if not finite.size or np.any(finite <= 0):
        return False
    return bool(finite.max() / finite.min() > ratio)


def drawn_values(ax: Axes) -> Any:
    """The y values of the data lines of ``ax`` (markers such as :func:`mark_nonfinite` left out)."""
    values = [np.asarray(ln.get_ydata(), dtype=np.float64).ravel() for ln in ax.get_lines()
              if ln.get_gid() != "nonfinite"]
    return np.concatenate(values) if values else np.array([])


def step_axis(ax: Axes) -> None:
    """Label the x axis "training step", with integer ticks."""
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("training step")
    ax.xaxis.set_major_locator(MaxNLocator(nbins="auto", integer=True))


def depth_ticks(ax: Axes, names: Sequence[str], n: int) -> None:
    """At most ``n`` layer names as the x tick labels of a panel drawn against depth."""
    picks = analysis.pick_rows(len(names), n)
    ax.set_xticks(picks, [names[p] or "(root)" for p in picks], rotation=30, ha="right", fontsize="x-small")
