"""Tick labels that fit: thin out the labels of an axis until none prints over its neighbour.

matplotlib picks ticks from the data range, not from the room its labels have:
a short panel in the ``slides`` style gets "−1 0 1" stacked into each other, a
log axis spanning less than a decade labels its minor ticks ("3×10⁻², 4×10⁻², …")
whatever the panel's height, and a renderer's own ticks (channel numbers, layer
names) are chosen before the layout says how wide the panel is. :func:`declutter`
runs after drawing, when the layout is known, and takes labels away (never
moves them): first the minor tick labels of an axis whose labels collide, then
every other major label, until adjacent labels stand :data:`TICK_GAP_PT` apart.
:func:`normviz.plot.api.plot` applies it to every figure, built-in or plugin.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from matplotlib.axis import Axis, XAxis
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, Formatter, LogLocator, MaxNLocator, NullFormatter

__all__ = ["TICK_GAP_PT", "declutter"]

#: Least gap between adjacent tick labels of one axis, in points.
TICK_GAP_PT = 2.0

_ROUNDS = 6


def declutter(fig: Figure, *, gap_pt: float = TICK_GAP_PT) -> None:
    """Remove tick labels of ``fig`` until adjacent labels of every axis are ``gap_pt`` apart.

    One layout of the figure (as a save would make it), then each axis is thinned
    on its own, its ticks recomputed in place: taking labels away only gives the
    next layout more room. Labels rotated by other than 0 or 90 degrees are left
    alone (their renderer chose the rotation to make them fit).
    """
    fig.draw_without_rendering()
    renderer = fig._get_renderer()  # type: ignore[attr-defined]  # the renderer draw_without_rendering used
    gap = gap_pt * fig.dpi / 72.0
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            for _ in range(_ROUNDS):
                if not _thin(axis, renderer, gap):
                    break


def _labels(axis: Axis, renderer: Any, minor: bool) -> list[tuple[float, float, float, Any]]:
    """(start, end, position, tick) along the axis of each drawn label, by position."""
    ticks = axis.get_minor_ticks() if minor else axis.get_major_ticks()
    drawn = set(map(id, axis._update_ticks()))  # type: ignore[attr-defined]  # the ticks a draw shows
    out = []
    horizontal = isinstance(axis, XAxis)
    for tick in ticks:
        label = tick.label1
        if id(tick) not in drawn or not label.get_visible() or not label.get_text().strip():
            continue
        if label.get_rotation() % 90:
            return []
        box = label.get_window_extent(renderer)
        lo, hi = (box.x0, box.x1) if horizontal else (box.y0, box.y1)
        out.append((lo, hi, (lo + hi) / 2, tick))
    return sorted(out, key=lambda item: item[2])


class _Only(Formatter):
    """A formatter that labels only the given tick values, as ``inner`` would, and blanks the rest."""

    def __init__(self, inner: Formatter, values: list[float]) -> None:
        self.inner = inner
        self.values = np.asarray(values, dtype=np.float64)

    def set_locs(self, locs: Any) -> None:
        self.inner.set_locs(locs)

    def set_axis(self, axis: Any) -> None:
        super().set_axis(axis)
        self.inner.set_axis(axis)

    def __call__(self, x: float, pos: int | None = None) -> str:
        if self.values.size and np.isclose(self.values, x, rtol=1e-9, atol=0.0).any():
            return self.inner(x, pos)
        return ""


def _evenly(n: int, k: int) -> list[int]:
    """``k`` of ``n`` indices, evenly spaced, the first and the last among them (k >= 2)."""
    if k <= 1:
        return [0]
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def _crowded(labels: list[tuple[float, float, float, Any]], gap: float) -> bool:
    return any(b[0] - a[1] < gap for a, b in zip(labels, labels[1:]))


def _thin(axis: Axis, renderer: Any, gap: float) -> bool:
    """Take labels away from one crowded axis; whether anything changed."""
    major = _labels(axis, renderer, minor=False)
    minor = _labels(axis, renderer, minor=True)
    both = sorted(major + minor, key=lambda item: item[2])
    if not _crowded(both, gap):
        return False
    if minor:
        if len(major) >= 2:
            axis.set_minor_formatter(NullFormatter())
        else:
            # A log axis spanning less than a decade is labelled at its minor ticks only:
            # keep about half of them (the ends among them) rather than none.
            kept = [tick.get_loc() for i, (*_, tick) in enumerate(minor) if i in _evenly(len(minor), len(minor) // 2)]
            if len(kept) + len(major) < 2 or len(kept) == len(minor):
                return False
            axis.set_minor_formatter(_Only(axis.get_minor_formatter(), kept))
        return True
    if len(major) < 2:
        return False
    locator: Any = axis.get_major_locator()  # matplotlib's own attributes are read below
    keep = max(1, (len(major) + 1) // 2)
    if isinstance(locator, FixedLocator):
        # A renderer's own ticks: about half of them, evenly spaced, the first and last kept.
        picked = [major[i] for i in _evenly(len(major), keep)]
        axis.set_ticks([float(tick.get_loc()) for *_, tick in picked],
                       [tick.label1.get_text() for *_, tick in picked])
        return True
    if isinstance(locator, MaxNLocator):
        nbins = max(1, keep - 1)
        if nbins == getattr(locator, "_nbins", None):  # matplotlib keeps it private
            return False  # as few as it gets
        locator.set_params(nbins=nbins)
        return True
    if isinstance(locator, LogLocator):
        numticks = max(2, keep)
        if numticks == locator.numticks:
            return False
        locator.set_params(numticks=numticks)
        return True
    return False
