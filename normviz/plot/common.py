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
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from normviz import analysis
from normviz.errors import MissingDataError, UsageError
from normviz.plot.palette import (
    kind_color,
    kind_linestyle,
    kind_marker,
    kind_sort_key,
    label_colors,
)

__all__ = [
    "HEADING_RATIO",
    "NONFINITE_COLOR",
    "RunLook",
    "as_runs",
    "divergence",
    "drawn_values",
    "figure_legend",
    "figure_title",
    "fit_rows",
    "heading_row",
    "kind_name",
    "legend_title",
    "line",
    "look_handles",
    "mark_nonfinite",
    "no_data",
    "nonfinite_handle",
    "panel_row_inches",
    "parse_steps",
    "run_looks",
    "shades",
    "sort_runs",
    "step_axis",
    "step_rows",
    "text_width",
    "wants_log",
    "wrap_titles_to_panels",
    "wrap_words",
]

#: Colour of non-finite markers (a red outside the Okabe–Ito kind colours).
NONFINITE_COLOR = "#E8000B"

#: Readable names of the built-in kinds, for titles.
KIND_NAMES: dict[str, str] = {
    "batch": "BatchNorm",
    "layer": "LayerNorm",
    "instance": "InstanceNorm",
    "group": "GroupNorm",
    "rms": "RMSNorm",
    "none": "no norm",
    "mixed": "mixed norms",
}


def kind_name(kind: str | None) -> str:
    """``"batch"`` → ``"BatchNorm"``; unknown kinds are returned as given."""
    key = "none" if kind is None else str(kind)
    return KIND_NAMES.get(key, key)


# --------------------------------------------------------------------------- runs


def as_runs(runs: Any) -> list[Any]:
    """A Run, a path, or a sequence of them, as a list of runs (paths are opened)."""
    from normviz.store.reader import Run, open_run

    if isinstance(runs, (Run, str, os.PathLike)) or hasattr(runs, "stat"):
        runs = [runs]
    out = []
    for item in runs:
        out.append(open_run(item) if isinstance(item, (str, os.PathLike)) else item)
    if not out:
        raise UsageError("no run given to draw")
    return out


def sort_runs(runs: Sequence[Any]) -> list[Any]:
    """Runs in display order: by norm kind (batch … none), then label."""
    return sorted(runs, key=lambda r: (kind_sort_key(r.norm_kind), r.label))


@dataclass(frozen=True)
class RunLook:
    """How one run is drawn: colour, line style, marker and legend text."""

    color: str
    linestyle: Any
    marker: str
    label: str
    kind: str


_SAME_KIND_STYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1)), (0, (1, 3)))


def run_looks(runs: Sequence[Any]) -> list[RunLook]:
    """One :class:`RunLook` per run, in the order given.

    Runs of distinct kinds are coloured by kind and named by kind (a run of
    kind ``mixed``, by its label). Runs that all
    share one kind (e.g. Pre-LN vs Post-LN) are coloured and named by label.
    Otherwise runs are coloured by kind, and runs sharing a kind are told apart
    by line style and named ``"kind: label"``.
    """
    kinds = [r.norm_kind for r in runs]
    if len(runs) > 1 and len(set(kinds)) == 1:
        colors = label_colors(r.label for r in runs)
        return [
            RunLook(colors[r.label], kind_linestyle(r.norm_kind), kind_marker(r.norm_kind), r.label, r.norm_kind)
            for r in runs
        ]
    if len(set(kinds)) == len(kinds):
        # "mixed" says nothing about a run: it is named by its label.
        return [
            RunLook(kind_color(r.norm_kind), kind_linestyle(r.norm_kind), kind_marker(r.norm_kind),
                    str(r.label) if r.norm_kind == "mixed" else str(r.norm_kind), str(r.norm_kind))
            for r in runs
        ]
    seen: dict[str, int] = {}
    looks = []
    for r in runs:
        i = seen.get(r.norm_kind, 0)
        seen[r.norm_kind] = i + 1
        looks.append(
            RunLook(
                kind_color(r.norm_kind),
                _SAME_KIND_STYLES[i % len(_SAME_KIND_STYLES)],
                kind_marker(r.norm_kind),
                f"{r.norm_kind}: {r.label}",
                r.norm_kind,
            )
        )
    return looks


# --------------------------------------------------------------------------- steps


def parse_steps(spec: str | slice | None) -> slice | None:
    """Parse a ``--steps`` value ``"START:STOP"`` (training steps, STOP excluded).

    Either side may be empty (``"100:"``, ``":500"``); a single number ``"N"``
    means step N alone. A :class:`slice` or None is returned as given.

    Raises
    ------
    UsageError
        For anything else, e.g. ``"a:b"``, a negative step or STOP ≤ START.
    """
    if spec is None or isinstance(spec, slice):
        return spec
    text = str(spec).strip()
    parts = text.split(":")
    start: int | None
    stop: int | None
    try:
        if len(parts) == 1:
            n = int(parts[0])
            start, stop = n, n + 1
        elif len(parts) == 2:
            start = int(parts[0]) if parts[0].strip() else None
            stop = int(parts[1]) if parts[1].strip() else None
        else:
            raise ValueError
    except ValueError:
        raise UsageError(f"--steps {text!r}: expected START:STOP in training steps, e.g. 0:1000") from None
    if (start is not None and start < 0) or (stop is not None and stop < 0):
        raise UsageError(f"--steps {text!r}: training steps are counted from 0")
    if start is not None and stop is not None and stop <= start:
        raise UsageError(f"--steps {text!r}: STOP must be greater than START")
    return slice(start, stop)


def step_rows(run: Any, steps: str | slice | None) -> slice:
    """The recorded rows of ``run`` within the ``steps`` option (training steps).

    Raises
    ------
    MissingDataError
        When no recorded step lies in the range.
    """
    sl = parse_steps(steps)
    if sl is None:
        rows = slice(0, len(run.steps))
    else:
        rows = analysis.rows_for_steps(run.steps, sl.start, sl.stop)
    if rows.stop <= rows.start:
        where = "" if sl is None else f" between steps {sl.start}:{sl.stop}"
        raise MissingDataError(f"{run.path}: no recorded step{where}")
    return rows


def divergence(run: Any, rows: slice) -> tuple[slice, int | None]:
    """Cut ``rows`` after the first non-finite row; return it and its training step.

    The row where values first became non-finite is kept (it is drawn as far as
    it is finite, and marked); later rows are dropped.
    """
    first = analysis.run_divergence(run, rows)
    if first is None:
        return rows, None
    return slice(rows.start, rows.start + first + 1), int(run.steps[rows.start + first])


# --------------------------------------------------------------------------- figure


def _style_limit(width: float) -> float | None:
    from normviz.plot import style

    for name in style.STYLES:
        if abs(style.figure_width(name) - width) < 1e-6:
            limit = style._MAX_HEIGHT.get(name)
            return limit
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
    import matplotlib
    from matplotlib.font_manager import FontProperties

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
    import matplotlib

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


def shades(color: str, n: int, *, lightest: float = 0.6) -> list[str]:
    """``n`` shades of ``color`` from light (mixed with ``lightest`` white) to full."""
    r, g, b = to_rgb(color)
    if n <= 1:
        return [to_hex((r, g, b))]
    return [to_hex((r * (1 - t) + t, g * (1 - t) + t, b * (1 - t) + t)) for t in np.linspace(lightest, 0.0, n)]


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


def text_width(text: str, size: float) -> float:
    """Width in points of ``text`` at font ``size`` in the active style's font."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextToPath

    if not text:
        return 0.0
    ismath = "$" in text and text.count("$") % 2 == 0 and text.count("$") >= 2
    lines = str(text).split("\n")
    return max(TextToPath().get_text_width_height_descent(line, FontProperties(size=size), ismath=ismath)[0]
               for line in lines)


_text_width = text_width  # the name it had before it was public


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
    import matplotlib

    line_h = matplotlib.rcParams["legend.fontsize"]
    size = line_h if isinstance(line_h, (int, float)) else matplotlib.rcParams["font.size"]
    if isinstance(line_h, str):
        from matplotlib.font_manager import FontProperties

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


def look_handles(looks: Sequence[RunLook]) -> tuple[list[Line2D], list[str]]:
    """Legend handles for runs (one per distinct legend text)."""
    handles, labels = [], []
    for look in looks:
        if look.label in labels:
            continue
        handles.append(Line2D([], [], color=look.color, linestyle=look.linestyle))
        labels.append(look.label)
    return handles, labels


def nonfinite_handle() -> Line2D:
    """The legend handle of :func:`mark_nonfinite`'s line."""
    return Line2D([], [], color=NONFINITE_COLOR, linestyle=(0, (2, 1)), linewidth=0.8)


def legend_title(runs: Sequence[Any]) -> str | None:
    """None when the legend names norm kinds; ``"<Kind> runs"`` when it names labels."""
    kinds = [r.norm_kind for r in runs]
    if len(runs) > 1 and len(set(kinds)) == 1:
        return f"{kind_name(kinds[0])} runs"
    return None


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
    from matplotlib.font_manager import FontProperties

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
    from matplotlib.font_manager import FontProperties

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


def focus_layer(runs: Sequence[Any], layers: str | None = None, *, deepest: bool = False) -> str | None:
    """The layer to show when several runs are compared on one layer.

    Candidates are the norm layers (``kind`` not None) of each run matching the
    ``layers`` glob, or, when no norm layer matches, any matching layer. The
    name found in most runs wins; ties go to the shallowest (or, with
    ``deepest``, the deepest) in model order. None when nothing matches.
    """
    counts: dict[str, int] = {}
    order: dict[str, tuple[int, int]] = {}
    for r, run in enumerate(runs):
        names = [layer.name for layer in run.layers]
        norms = [layer.name for layer in run.layers if layer.kind is not None]
        chosen = analysis.select_names(norms, layers)
        if not chosen:
            chosen = analysis.select_names(names, layers) if layers is not None else []
        for name in chosen:
            counts[name] = counts.get(name, 0) + 1
            order.setdefault(name, (names.index(name), r))
    if not counts:
        return None
    sign = -1 if deepest else 1
    return min(counts, key=lambda n: (-counts[n], sign * order[n][0], order[n][1]))


def module_channels(run: Any, name: str, layer: str, role: str = "output", *, steps: slice | None = None) -> Any:
    """A module tensor (``weight``, ``bias``, ``running_mean``, …) on the channels a site stores.

    Per-channel series of wide layers are thinned to the channels listed by
    ``run.channel_index(layer, role)``; module tensors are thinned the same way
    or stored whole. Either way the result is ``[S, len(channel_index)]``.

    Raises
    ------
    MissingDataError
        When the tensor was not recorded, or its width matches neither.
    """
    values = np.asarray(run.module_stat(name, layer, steps=steps))
    index = np.asarray(run.channel_index(layer, role))
    if values.shape[1] == len(index):
        return values
    if len(index) and values.shape[1] > int(index.max()):
        return values[:, index]
    raise MissingDataError(
        f"{run.path}: {name!r} of layer {layer!r} has {values.shape[1]} values, "
        f"which do not line up with its {len(index)} stored channels"
    )


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
