"""Built-in renderer ``histograms``: activation histograms over training, log counts.

Registration only: the figure is drawn by :mod:`normviz.plot.renderers.histograms`,
imported at the first draw, so registering the renderer imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from normviz.datatypes import Register, Renderer
from normviz.hookspecs import hookimpl

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def draw(runs: Any, fig: Figure, **options: Any) -> Figure:
    """Draw ``runs`` into ``fig``; the options are those of the drawing module's ``draw``."""
    from normviz.plot.renderers.histograms import draw as draw_figure

    return draw_figure(runs, fig, **options)


RENDERER = Renderer(
    name="histograms",
    draw=draw,
    description="activation histograms over training (log counts, fixed bins), before and after each norm layer",
    requires=frozenset({"hist"}),
    options=("layers", "steps", "max_layers", "max_steps"),
)


@hookimpl
def normviz_register_renderers(register: Register[Renderer]) -> None:
    """Register the ``histograms`` renderer."""
    register(RENDERER)
