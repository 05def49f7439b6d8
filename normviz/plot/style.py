"""Figure styles: sizes, fonts and line widths for papers, slides and notebooks.

Each style is a matplotlib ``.mplstyle`` file in ``normviz/plot/styles/``,
usable on its own (``matplotlib.style.use(path)``) or through this module::

    with style_context("paper"):
        fig = new_figure("paper", nrows_hint=2)
        axes = fig.subplots(2, 1)
        ...  # draw
        save_all(fig, Path("figs/loss"), "pdf,png")  # normviz.plot.save

Matplotlib reads most rcParams when an artist is *created* and the rest
(fonts embedding, dpi) when the figure is *saved*, so draw and save inside
the same :func:`style_context`. Nothing here changes the global rcParams
outside such a context, and nothing here imports pyplot.
"""

from __future__ import annotations

import functools
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import matplotlib
from matplotlib import style as mpl_style
from matplotlib.figure import Figure

__all__ = [
    "STYLES",
    "STYLE_DIR",
    "figure_size",
    "figure_width",
    "max_height",
    "new_figure",
    "style_context",
    "style_path",
]

#: Names of the built-in styles; ``"paper"`` is the default of ``normviz plot``.
STYLES: tuple[str, ...] = ("paper", "paper-wide", "slides", "notebook")

#: Folder holding the ``<name>.mplstyle`` files.
STYLE_DIR: Path = Path(__file__).resolve().with_name("styles")

# Tallest figure that still fits the medium, in inches: the text height of a
# two-column paper page (about 9 in for ICML/NeurIPS/IEEE) and a 16:9 slide.
# Notebooks scroll, so they have no limit.
_MAX_HEIGHT: dict[str, float | None] = {
    "paper": 9.0,
    "paper-wide": 9.0,
    "slides": 5.625,
    "notebook": None,
}

# Applied on top of every style file. The hash salt makes SVG element ids
# reproducible (matplotlib otherwise salts them with a random uuid4).
_RC_OVERRIDES: dict[str, Any] = {"svg.hashsalt": "normviz"}


def _check_name(name: str) -> str:
    if name not in STYLES:
        raise ValueError(
            f"unknown style {name!r}; valid styles are: {', '.join(STYLES)}"
        )
    return name


def style_path(name: str) -> Path:
    """Path of the ``.mplstyle`` file of style ``name``.

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`STYLES`.
    """
    return STYLE_DIR / f"{_check_name(name)}.mplstyle"


@functools.cache
def _style_figsize(name: str) -> tuple[float, float]:
    # The style file is the one place the sizes are written down; read them
    # back instead of repeating them here.
    rc = matplotlib.rc_params_from_file(
        str(style_path(name)), use_default_template=False
    )
    width, height = rc["figure.figsize"]
    return float(width), float(height)


def style_context(
    name: str, *, after_reset: bool = True
) -> AbstractContextManager[None]:
    """Context manager applying style ``name`` to matplotlib's rcParams.

    The previous rcParams are restored on exit, also on error.

    Parameters
    ----------
    name
        One of :data:`STYLES`.
    after_reset
        If true (default), start from matplotlib's defaults rather than the
        user's matplotlibrc, so a figure looks the same on every machine.

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`STYLES` (raised at the call, before
        anything changes).
    """
    path = style_path(name)
    # style.context wraps rc_context, which snapshots and restores rcParams.
    return mpl_style.context([path, _RC_OVERRIDES], after_reset=after_reset)


def figure_width(name: str) -> float:
    """Width in inches of a figure in style ``name`` (e.g. 3.25 for ``paper``).

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`STYLES`.
    """
    return _style_figsize(name)[0]


def max_height(name: str) -> float | None:
    """Tallest figure in inches that fits the medium of style ``name``; None when it has no limit.

    9 in for the paper styles (the text height of a two-column page), 5.625 in for
    ``slides`` (a 16:9 slide), None for ``notebook`` (notebooks scroll).

    Raises
    ------
    ValueError
        If ``name`` is not one of :data:`STYLES`.
    """
    return _MAX_HEIGHT[_check_name(name)]


def figure_size(
    name: str, *, height_ratio: float | None = None, nrows_hint: int = 1
) -> tuple[float, float]:
    """Figure size ``(width, height)`` in inches for style ``name``.

    Parameters
    ----------
    name
        One of :data:`STYLES`.
    height_ratio
        Height of one row of panels as a fraction of the width. ``None``
        uses the style's own aspect: 0.75 for ``paper``, about 0.37 for
        ``paper-wide`` (a row of panels across the page), 9/16 for
        ``slides``, 0.6 for ``notebook``.
    nrows_hint
        Number of rows of panels the caller will add; the height grows with
        it, up to the medium's limit (9 in for the paper styles, one slide).

    Raises
    ------
    ValueError
        For an unknown style, a non-positive ``height_ratio`` or a
        ``nrows_hint`` below 1.
    """
    width, default_height = _style_figsize(name)
    if height_ratio is None:
        height_ratio = default_height / width
    if not height_ratio > 0:
        raise ValueError(f"height_ratio must be positive, got {height_ratio!r}")
    if int(nrows_hint) != nrows_hint or nrows_hint < 1:
        raise ValueError(f"nrows_hint must be a positive integer, got {nrows_hint!r}")
    height = width * height_ratio * int(nrows_hint)
    limit = max_height(name)
    if limit is not None:
        height = min(height, limit)
    return width, height


def new_figure(
    style: str, *, height_ratio: float | None = None, nrows_hint: int = 1
) -> Figure:
    """Create an empty figure sized for ``style``, without pyplot.

    The figure uses constrained layout and is not registered with pyplot, so
    it is never shown by ``plt.show()`` and never leaks memory in a loop
    (it is freed when the last reference goes). In a notebook, display it
    by returning it from a cell.

    Parameters
    ----------
    style
        One of :data:`STYLES`.
    height_ratio, nrows_hint
        See :func:`figure_size`.

    Returns
    -------
    matplotlib.figure.Figure
        Figure-level settings (dpi, colours, layout padding) come from the
        style. Add and draw the axes inside ``style_context(style)`` so
        they get the style's fonts and line widths too.

    Raises
    ------
    ValueError
        As :func:`figure_size`.
    """
    size = figure_size(style, height_ratio=height_ratio, nrows_hint=nrows_hint)
    with style_context(style):
        return Figure(figsize=size, layout="constrained")
