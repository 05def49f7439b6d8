"""Built-in renderer ``outliers``: outlier features (kurtosis of channel RMS per layer).

Registration only: the figure is drawn by :mod:`normviz.plot.renderers.outliers`, imported
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
    from normviz.plot.renderers.outliers import draw as draw_figure

    return draw_figure(runs, fig, **options)


RENDERER = Renderer(
    name="outliers",
    draw=draw,
    description="outlier features (He et al. 2024): kurtosis of channel RMS per layer over training, "
                "the largest per run, and across depth",
    requires=frozenset({"rms_kurtosis"}),
    options=("layers", "role", "steps", "max_layers", "max_points"),
)


@hookimpl
def normviz_register_renderers(register: Register[Renderer]) -> None:
    """Register the ``outliers`` renderer."""
    register(RENDERER)
