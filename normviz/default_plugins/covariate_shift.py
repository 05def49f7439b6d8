"""Built-in renderer ``covariate-shift``: how much what enters each layer moves during training.

Registration only: the figure is drawn by :mod:`normviz.plot.renderers.covariate_shift`,
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
    from normviz.plot.renderers.covariate_shift import draw as draw_figure

    return draw_figure(runs, fig, **options)


RENDERER = Renderer(
    name="covariate-shift",
    draw=draw,
    description="drift of each layer's input distribution over training; Ioffe & Szegedy 15/50/85 percentile bands",
    requires=frozenset({"channel_mean", "channel_var", "percentiles"}),
    options=("layers", "steps", "max_layers", "band_layer", "max_points"),
)


@hookimpl
def normviz_register_renderers(register: Register[Renderer]) -> None:
    """Register the ``covariate-shift`` renderer."""
    register(RENDERER)
