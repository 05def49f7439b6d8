"""Built-in renderer ``ranks``: how far each rank's BatchNorm batch statistics are from the global batch's.

Registration only: the figure is drawn by :mod:`normviz.plot.renderers.ranks`, imported at
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
    from normviz.plot.renderers.ranks import draw as draw_figure

    return draw_figure(runs, fig, **options)


RENDERER = Renderer(
    name="ranks",
    draw=draw,
    description="multi-rank runs: each rank's BatchNorm batch statistics against the pooled ones; SyncBatchNorm",
    requires=frozenset({"channel_mean", "channel_var", "numel"}),
    options=("layers", "steps", "max_layers"),
)


@hookimpl
def normviz_register_renderers(register: Register[Renderer]) -> None:
    """Register the ``ranks`` renderer."""
    register(RENDERER)
