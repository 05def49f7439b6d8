"""Figure layout: the height of rows of panels, the legend below them, titles and headings.

Every size here follows the active style (:mod:`normviz.plot.style`): a row of panels is
as high as the style's rows, within the height its medium allows, and never lower than
its text needs; titles and legends are measured in the style's font and wrapped or
shrunk to the figure's width.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties

from normviz.plot.looks import kind_name
from normviz.plot.style import STYLES, figure_width, max_height

__all__ = [
    "HEADING_RATIO",
    "PANEL_ROW_FONTS",
    "PAPER_ROW_ASPECT",
    "figure_legend",
    "figure_title",
    "fit_rows",
    "heading_row",
    "legend_columns",
    "panel_row_inches",
    "text_width",
    "wrap_title",
    "wrap_titles_to_panels",
    "wrap_words",
]


def _style_limit(width: float) -> float | None:
    """The height limit of the style whose figures are ``width`` inches wide (None: no limit)."""
    for name in STYLES:
        if abs(figure_width(name) - width) < 1e-6:
            return max_height(name)
    return None


#: Aspect (height / width) of one row of panels in the ``paper`` style; the
#: ``row_ratio`` of :func:`fit_rows` is relative to it.
PAPER_ROW_ASPECT = 0.75


#: Fewest points a row of panels takes, in font sizes: its title, x tick labels and
#: x label, and a body tall enough for three labelled y ticks (see :func:`fit_rows`).
PANEL_ROW_FONTS = 10.5

# The least height each figure's panels need (inches), set by fit_rows and kept
# when figure_legend adds the legend below them.
_PANEL_FLOOR: weakref.WeakKeyDictionary[Figure, float] = weakref.WeakKeyDictionary()


def panel_row_inches() -> float:
    """Height in inches one row of panels needs for its text in the active style."""
    size = FontProperties(size=matplotlib.rcParams["font.size"]).get_size_in_points()
    return PANEL_ROW_FONTS * size / 72.0


def fit_rows(fig: Figure, nrows: float, *, row_ratio: float | None = None, panel_rows: float | None = None) -> None:
    """Set the figure height for ``nrows`` rows of panels, keeping its width.

    A row is as high as the active style's rows (the aspect of its
    ``figure.figsize``: 0.75 of the width for ``paper``, flatter for the wide
    styles). ``row_ratio`` overrides the height of a row, as a fraction of the
    width in the ``paper`` style; other styles scale it by their own aspect.
    The height is capped at what the style allows (9 in for the paper styles,
    one slide for ``slides``), but never below what ``panel_rows`` rows of panels
    need for their text (:func:`panel_row_inches` each, plus the figure title):
    a figure with more rows than the medium holds grows past it rather than
    printing its labels over each other. ``panel_rows`` defaults to ``nrows``.
    """
    width = fig.get_figwidth()
    w, h = matplotlib.rcParams["figure.figsize"]
    aspect = h / w
    ratio = aspect if row_ratio is None else row_ratio * aspect / PAPER_ROW_ASPECT
    height = width * ratio * max(nrows, 1)
    limit = _style_limit(width)
    if limit is not None:
        height = min(height, limit)
    rows = max(nrows, 1) if panel_rows is None else panel_rows
    floor = rows * panel_row_inches() + 2 * panel_row_inches() / PANEL_ROW_FONTS  # + the figure title
    _PANEL_FLOOR[fig] = floor
    fig.set_size_inches(width, max(height, floor))


def text_width(text: str, size: float) -> float:
    """Width in points of ``text`` at font ``size`` in the active style's font."""
    from matplotlib.textpath import TextToPath

    if not text:
        return 0.0
    ismath = "$" in text and text.count("$") % 2 == 0 and text.count("$") >= 2
    lines = str(text).split("\n")
    return max(TextToPath().get_text_width_height_descent(line, FontProperties(size=size), ismath=ismath)[0]
               for line in lines)


#: Legend layout constants, in font sizes (those :func:`figure_legend` passes).
_HANDLE_LENGTH, _HANDLE_PAD, _COLUMN_SPACING, _FRAME = 2.2, 0.8, 1.0, 2.0


def legend_columns(labels: Sequence[str], width_in: float, size: float, cols: int, *,
                   title: str | None = None) -> int:
    """The most columns, up to ``cols``, whose legend fits in ``width_in`` inches.

    Entries fill the columns top to bottom as matplotlib lays them out; a column
    is as wide as its longest label plus the handle. 0 when even one column is
    too wide (or the title is).
    """
    avail = width_in * 72.0 * 0.98
    widths = [text_width(str(label), size) for label in labels]
    entry = (_HANDLE_LENGTH + _HANDLE_PAD) * size
    if title and text_width(title, size) + _FRAME * size > avail:
        return 0
    for c in range(max(1, min(cols, len(widths))), 0, -1):
        rows = -(-len(widths) // c)
        chunks = [widths[k * rows:(k + 1) * rows] for k in range(c)]
        chunks = [ch for ch in chunks if ch]
        total = sum(entry + max(ch) for ch in chunks) + _COLUMN_SPACING * size * (len(chunks) - 1) + _FRAME * size
        if total <= avail:
            return len(chunks)
    return 0


def figure_legend(fig: Figure, handles: Sequence[Any], labels: Sequence[str], *, title: str | None = None,
                  ncols: int | None = None) -> Any:
    """A legend below the panels, outside them; the figure grows to make room.

    The number of columns follows the entries (``ncols`` when given, twice that
    on wide figures), then shrinks until the legend fits the figure width; when
    even one column is too wide the font shrinks (down to 70 %). Needs
    constrained layout (normviz figures have it).
    """
    if not handles:
        return None
    n = len(labels)
    wide = fig.get_figwidth() > 5.0
    if ncols is not None:
        cols = ncols * (2 if wide and ncols * 2 <= n else 1)
    elif wide:
        cols = min(n, 6)
    else:
        cols = n if n <= 3 else (3 if n in (5, 6, 9) else 4)
    cols = min(cols, n)
    line_h = matplotlib.rcParams["legend.fontsize"]
    size = line_h if isinstance(line_h, (int, float)) else matplotlib.rcParams["font.size"]
    if isinstance(line_h, str):
        size = FontProperties(size=line_h).get_size_in_points()
    width, height = fig.get_size_inches()
    limit = _style_limit(width)

    def extra_for(fit: int, fontsize: float) -> float:
        rows = -(-n // max(fit, 1)) + (1 if title else 0)
        return rows * 1.5 * fontsize / 72 + 0.05

    # Full size when it fits the width (and, on a figure at its style's height
    # limit, takes at most a quarter of it); else a smaller font, more columns.
    for fontsize in (size, size * 0.85, size * 0.7):
        fit = legend_columns(labels, width, fontsize, cols, title=title)
        if fit and (limit is None or height + extra_for(fit, fontsize) <= limit
                    or extra_for(fit, fontsize) <= 0.25 * limit):
            break
    cols = max(fit, 1)
    extra = extra_for(cols, fontsize)
    new_height = height + extra if limit is None else min(limit, height + extra)
    # The panels keep the height their text needs (fit_rows), limit or not.
    new_height = max(new_height, _PANEL_FLOOR.get(fig, 0.0) + extra)
    fig.set_size_inches(width, new_height)
    return fig.legend(list(handles), list(labels), loc="outside lower center", ncols=cols, title=title,
                      handlelength=_HANDLE_LENGTH, handletextpad=_HANDLE_PAD, columnspacing=_COLUMN_SPACING,
                      fontsize=fontsize, title_fontsize=fontsize)


def figure_title(fig: Figure, what: str, runs: Sequence[Any]) -> None:
    """A short figure title: what is shown, for which experiment, and the kind of a single run."""
    exp = runs[0].experiment if all(r.experiment == runs[0].experiment for r in runs) else None
    parts = [what]
    if exp:
        parts.append(str(exp))
    elif len(runs) == 1:
        parts.append(runs[0].label)
    kinds = {r.norm_kind for r in runs}
    if len(kinds) == 1:
        parts.append(kind_name(next(iter(kinds))))
    fig.suptitle(wrap_title(parts, fig.get_figwidth() * 72 * 0.96), fontsize="medium")


def wrap_title(parts: Sequence[str], width_pt: float, size: float | str = "medium") -> str:
    """*parts* joined by " · ", broken into lines (between parts) that fit *width_pt*.

    Layer and experiment names make titles of any length; on a one-column paper
    figure a single line ran off both edges of the page.
    """
    points = FontProperties(size=size).get_size_in_points()
    lines: list[str] = []
    for part in parts:
        if lines and text_width(f"{lines[-1]} · {part}", points) <= width_pt:
            lines[-1] = f"{lines[-1]} · {part}"
        else:
            lines.append(part)
    return "\n".join(lines)


#: Height of a :func:`heading_row` in a gridspec's ``height_ratios``, relative to panel rows near 0.5.
HEADING_RATIO = 0.001


def heading_row(fig: Figure, spec: Any, text: str, *, color: str = "black") -> Axes:
    """A heading over the panels of a row: an empty axes at ``spec`` (a thin gridspec row
    above them, ``HEADING_RATIO`` high) whose left title is ``text``.

    A layer's name then spans its whole row (input and output panels) without widening
    one panel's column or touching the panels' own titles, as a long title of the first
    panel would.
    """
    ax = fig.add_subplot(spec)
    ax.set_axis_off()
    ax.set_title(text, loc="left", fontsize="small", color=color)
    ax.set_gid("heading")
    return ax


def wrap_words(text: str, width_pt: float, size: float | str = "medium") -> str:
    """``text`` broken into lines between words, each at most ``width_pt`` wide at font ``size``."""
    points = FontProperties(size=size).get_size_in_points()
    lines: list[str] = []
    for word in text.split():
        if lines and text_width(f"{lines[-1]} {word}", points) <= width_pt:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return "\n".join(lines)


def wrap_titles_to_panels(fig: Figure, titles: Sequence[tuple[Axes, str, str]], *, fontsize: str = "small",
                          layout: bool = True) -> None:
    """Set the left title of each ``(ax, text, after)``: ``text``, its words wrapped to the width
    from the panel's left edge to the figure's right edge, then ``after`` as it is.

    Call it last: the layout (run here once, unless ``layout`` is False because the
    caller just ran it) decides where each panel starts.
    """
    engine = fig.get_layout_engine()
    if layout and engine is not None:
        engine.execute(fig)
    for ax, text, after in titles:
        width = (1.0 - ax.get_position().x0) * fig.get_figwidth() * 72.0 - 4.0
        ax.set_title(wrap_words(text, width, fontsize) + after, loc="left", fontsize=fontsize)
