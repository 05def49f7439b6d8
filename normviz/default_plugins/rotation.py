"""Built-in renderer ``rotation``: the angular update of weights that feed a norm layer against the
rotational equilibrium their optimizer predicts (Kosson et al. 2024).

Registration only: the figure is drawn by :mod:`normviz.plot.renderers.rotation`, imported
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
    from normviz.plot.renderers.rotation import draw as draw_figure

    return draw_figure(runs, fig, **options)


RENDERER = Renderer(
    name="rotation",
    draw=draw,
    description="rotational equilibrium (Kosson et al. 2024): angle per step of the weights feeding a norm "
                "against the optimizer's prediction, their ratio, the weight norms",
    requires=frozenset({"update_angle"}),
    options=("layers", "steps", "max_layers", "max_steps"),
)


@hookimpl
def normviz_register_renderers(register: Register[Renderer]) -> None:
    """Register the ``rotation`` renderer."""
    register(RENDERER)
