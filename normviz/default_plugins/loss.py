"""Built-in renderer ``loss``: the recorded scalars over training steps, runs overlaid.

Registration only: the figure is drawn by :mod:`normviz.plot.renderers.loss`, imported at
the first draw, so registering the renderer imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from normviz.datatypes import Register, Renderer
from normviz.hookspecs import hookimpl

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def draw(runs: Any, fig: Figure, **options: Any) -> Figure:
    """Draw ``runs`` into ``fig``; the options are those of the drawing module's ``draw``."""
    from normviz.plot.renderers.loss import draw as draw_figure

    return draw_figure(runs, fig, **options)


RENDERER = Renderer(
    name="loss",
    draw=draw,
    description="training scalars (loss, lr, …) over steps, runs overlaid and coloured by norm kind",
    requires=frozenset(),
    options=("steps", "scalars", "max_points"),
)


@hookimpl
def normviz_register_renderers(register: Register[Renderer]) -> None:
    """Register the ``loss`` renderer."""
    register(RENDERER)
