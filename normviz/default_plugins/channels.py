"""Built-in renderer ``channels``: what each norm kind actually normalizes.

Registration only: the figure is drawn by :mod:`normviz.plot.renderers.channels`, imported
at the first draw, so registering the renderer imports nothing heavy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from normviz.datatypes import Register, Renderer
from normviz.hookspecs import hookimpl

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def draw(runs: Any, fig: Figure, **options: Any) -> Figure:
    """Draw ``runs`` into ``fig``; the options are those of the drawing module's ``draw``."""
    from normviz.plot.renderers.channels import draw as draw_figure

    return draw_figure(runs, fig, **options)


RENDERER = Renderer(
    name="channels",
    draw=draw,
    description="per-channel and per-group distributions before/after each norm layer; BatchNorm batch vs running",
    requires=frozenset({"channel_mean", "channel_var", "group_mean", "group_scale"}),
    options=("layers", "steps", "max_layers", "at", "max_channels", "max_points"),
)


@hookimpl
def normviz_register_renderers(register: Register[Renderer]) -> None:
    """Register the ``channels`` renderer."""
    register(RENDERER)
