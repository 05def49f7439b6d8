"""Built-in renderer ``gradient-flow``: gradients across depth over training.

Registration only: the figure is drawn by :mod:`normviz.plot.renderers.gradient_flow`,
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
    from normviz.plot.renderers.gradient_flow import draw as draw_figure

    return draw_figure(runs, fig, **options)


RENDERER = Renderer(
    name="gradient-flow",
    draw=draw,
    description="gradient norms across depth over training (log heatmap, mean/max |grad| lines), update/weight ratio",
    requires=frozenset({"grad_norm", "grad_abs_mean", "grad_abs_max", "update_ratio"}),
    options=("layers", "steps", "max_layers", "max_steps", "max_points"),
)


@hookimpl
def normviz_register_renderers(register: Register[Renderer]) -> None:
    """Register the ``gradient-flow`` renderer."""
    register(RENDERER)
