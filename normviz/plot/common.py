"""Drawing helpers shared by renderers, built-in and third-party alike.

A renderer receives runs and a :class:`~matplotlib.figure.Figure`; these helpers
give it the conventions every normviz figure follows:

- :func:`run_looks`: one colour per norm kind (or per label when all runs share
  a kind), with the kind's line style and marker;
- :func:`step_rows` / :func:`parse_steps`: the ``steps`` option, in training
  steps, turned into the recorded rows to read;
- :func:`divergence`: where a run first held a non-finite value, so figures
  stop there and mark it (:func:`mark_nonfinite`);
- :func:`fit_rows`: grow the figure to the number of panel rows, within the
  height the style allows;
- :func:`line`: a series, thinned to a min/max envelope when long.

Nothing here touches pyplot or rcParams.

This module is the one import path renderers use (``from normviz.plot import common``,
then ``common.X``); the helpers live by job in :mod:`normviz.plot.looks` (how runs
are told apart, legend entries), :mod:`normviz.plot.layout` (figure height, legend,
titles, text widths), :mod:`normviz.plot.artists` (what is drawn on a panel and read
back from it) and :mod:`normviz.plot.selection` (which runs, rows and layer to read).
"""

from __future__ import annotations

from normviz.plot.artists import (
    depth_ticks,
    drawn_values,
    line,
    mark_nonfinite,
    no_data,
    positive,
    step_axis,
    wants_log,
)
from normviz.plot.layout import (
    HEADING_RATIO,
    PANEL_ROW_FONTS,
    PAPER_ROW_ASPECT,
    figure_legend,
    figure_title,
    fit_rows,
    heading_row,
    legend_columns,
    panel_row_inches,
    text_width,
    wrap_title,
    wrap_titles_to_panels,
    wrap_words,
)
from normviz.plot.looks import (
    KIND_NAMES,
    NONFINITE_COLOR,
    RunLook,
    kind_name,
    legend_title,
    look_handles,
    nonfinite_handle,
    run_looks,
    shades,
    sort_runs,
)
from normviz.plot.selection import (
    as_runs,
    depth_order,
    divergence,
    focus_layer,
    layer_shades,
    module_channels,
    parse_steps,
    step_rows,
)

__all__ = [
    "HEADING_RATIO",
    "KIND_NAMES",
    "NONFINITE_COLOR",
    "PANEL_ROW_FONTS",
    "PAPER_ROW_ASPECT",
    "RunLook",
    "as_runs",
    "depth_order",
    "depth_ticks",
    "divergence",
    "drawn_values",
    "figure_legend",
    "figure_title",
    "fit_rows",
    "focus_layer",
    "heading_row",
    "kind_name",
    "layer_shades",
    "legend_columns",
    "legend_title",
    "line",
    "look_handles",
    "mark_nonfinite",
    "module_channels",
    "no_data",
    "nonfinite_handle",
    "panel_row_inches",
    "parse_steps",
    "positive",
    "run_looks",
    "shades",
    "sort_runs",
    "step_axis",
    "step_rows",
    "text_width",
    "wants_log",
    "wrap_title",
    "wrap_titles_to_panels",
    "wrap_words",
]

_text_width = text_width  # the name it had before it was public
